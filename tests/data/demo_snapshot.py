"""Copy what `flatcli report` reads of a `make demo` output into a small committed snapshot.

    python tests/data/demo_snapshot.py demo_out tests/data/demo

The snapshot holds each measured table as one Parquet file (attack, flatness, landscape) and each
run's run.json and train_log, not the checkpoints. `tests/test_readme.py` writes a report from it
and checks that every demo finding the README quotes is what that report says; rerun this script
(and update the README's quotes) whenever `make demo` changes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from flatcli import tables

MEASURED = ("attack", "flatness", "landscape")


def snapshot(demo_out: Path, dest: Path) -> None:
    """Replace `dest` with the demo's tables (one file each) and its runs' logs."""
    if dest.exists():
        shutil.rmtree(dest)
    for table in MEASURED:
        frame = tables.read_table(demo_out, table)
        sort = [c for c in ("run", "epoch", "split", "attack", "measure", "direction", "alpha")
                if c in frame.columns]
        frame = frame.sort_values(sort, kind="stable").reset_index(drop=True)
        tables.write_table(dest, table, frame.to_dict("records"))
    for run_json in sorted((demo_out / "runs").glob("*/run.json")):
        run = dest / "runs" / run_json.parent.name
        run.mkdir(parents=True)
        shutil.copy2(run_json, run / "run.json")
        log = tables.read_table(run_json.parent, "train_log")
        tables.write_table(run, "train_log", log.to_dict("records"))


if __name__ == "__main__":
    snapshot(Path(sys.argv[1]), Path(sys.argv[2]))
