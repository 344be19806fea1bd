"""The README tour runs as written, on sample_checkpoints, and does what it says."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flatcli.cli import main

ROOT = Path(__file__).resolve().parent.parent


def tour_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    tour = text.split("## Tour", 1)[1].split("\n## ", 1)[0]
    first_block = re.search(r"```bash\n(.*?)```", tour, re.S).group(1)
    return [line for line in first_block.splitlines() if line and not line.startswith("#")]


def tour_quotes() -> list[str]:
    """The lines the README quotes from the tour's report (`> ` lines of the Tour section)."""
    tour = (ROOT / "README.md").read_text().split("## Tour", 1)[1].split("\n## ", 1)[0]
    return [line[2:].strip() for line in tour.splitlines() if line.startswith("> ")]


def test_the_tour_runs_on_sample_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_checkpoints").symlink_to(ROOT / "sample_checkpoints")
    commands = tour_commands()
    assert len(commands) >= 6 and all(c.split()[0] in ("flatcli", "python") for c in commands)
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "python":
            done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
            assert done.returncode == 0, (command, done.stderr)
            continue
        with pytest.raises(SystemExit) as exit_info:
            main(argv[1:] + ["--quiet"])
        assert exit_info.value.code == 0, (command, capsys.readouterr().err)
    attack = pd.read_parquet("out/attack")
    assert set(attack.run) == {"at", "at-ls", "trades"} and set(attack.split) == {"test", "train"}
    assert attack.epoch.nunique() == 25
    assert {"pgd20x10", "aa-lite", "worst"} <= set(attack.attack)
    flatness = pd.read_parquet("out/flatness")
    assert {"average", "worst"} <= set(flatness.measure)
    assert len(pd.read_parquet("out/landscape")) == 3 * 7
    assert list(Path("out/landscape_plots").glob("*.png"))
    report = pd.read_parquet("out/report")
    assert len(report) == 75 and report.rce_gap.notna().all()
    assert report.flatness_average.notna().sum() == 25
    report_md = " ".join(Path("out/report.md").read_text().split())
    assert "## Robust overfitting" in report_md
    quotes = tour_quotes()
    assert len(quotes) >= 3
    for quote in quotes:  # the README's figures are what a fresh report of these runs says
        assert quote in report_md, quote
    assert "data:image/png;base64," in Path("out/report.html").read_text()
    assert sorted(p.name for p in Path("runs/mine").glob("epoch_*.safetensors")) == [
        "epoch_0001.safetensors",
        "epoch_0002.safetensors",
        "epoch_0003.safetensors",
    ]


def test_readme_names_every_table_column():
    from flatcli import tables

    text = " ".join((ROOT / "README.md").read_text().split())
    for name, schema in tables.SCHEMAS.items():
        assert f"`{name}`" in text, name
        for column in schema.names:
            assert column in text, (name, column)


def demo_quotes() -> list[str]:
    """The lines the README quotes from `make demo`'s report (`> ` lines of the Set up section)."""
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [line[2:].strip() for line in setup.splitlines() if line.startswith("> ")]


def test_the_readme_demo_quotes_are_what_the_demo_tables_report(tmp_path, capsys):
    """The demo's findings in the README are what `flatcli report` says of the demo's tables
    (a committed copy of a fresh `make demo`'s tables and run logs, `tests/data/demo`, written by
    `make demo-snapshot`: rerun it and update the quotes whenever the demo changes)."""
    out = tmp_path / "demo_out"
    shutil.copytree(ROOT / "tests" / "data" / "demo", out)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out), "--quiet"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    report_md = " ".join((out / "report.md").read_text().split())
    quotes = demo_quotes()
    assert len(quotes) >= 3
    for quote in quotes:
        assert quote in report_md, quote
