"""The report's inputs: the attack/flatness/landscape tables under each OUT, and each run's
train_log and run.json, with run names kept apart when two OUTs hold different runs of one name."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flatcli import tables
from flatcli.errors import UsageError

MEASURED = ("attack", "flatness", "landscape")


@dataclass
class Sources:
    """Every input table (empty DataFrames with the schema when missing) and the runs found."""

    attack: pd.DataFrame
    flatness: pd.DataFrame
    landscape: pd.DataFrame
    train_log: pd.DataFrame
    runs: dict[str, dict] = field(default_factory=dict)  # run name -> run.json (or {})
    run_dirs: dict[str, Path] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files, why
    notes: list[str] = field(default_factory=list)  # how run names were made distinct

    def missing(self) -> list[str]:
        """Plain sentences naming each missing input and the command that makes it, and every
        file skipped as unreadable."""
        notes = [f"Skipped {path}: unreadable ({why})." for path, why in self.skipped]
        if self.attack.empty:
            notes.append(
                "No attack table: run `flatcli attack RUNS --out OUT` (test split) and "
                "`flatcli attack RUNS --out OUT --split train` for robust error, robust loss and "
                "the generalization gap."
            )
        elif "train" not in set(self.attack.split):
            notes.append(
                "No train-split attack rows: run `flatcli attack RUNS --out OUT --split train` "
                "for the robust generalization gap."
            )
        if self.flatness.empty:
            notes.append(
                "No flatness table: run `flatcli flatness RUNS --out OUT --measure average,worst`."
            )
        if self.landscape.empty:
            notes.append("No landscape table: run `flatcli landscape CHECKPOINT --out OUT`.")
        if self.train_log.empty:
            notes.append(
                "No train_log: early stopping needs the held-out robust error that "
                "`flatcli train` logs (pass its run directories with --runs)."
            )
        return notes


def _read(out: Path, table: str, skipped: list) -> pd.DataFrame:
    if not (out / table).is_dir():
        return pd.DataFrame()
    return tables.read_table(out, table, unreadable=skipped)


def _concat(frames: Sequence[pd.DataFrame], table: str) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return tables.schema(table).empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True).drop_duplicates(
        subset=[c for c in frames[0].columns if c not in ("per_sample",)]
    )


def _run_json(run_dir: Path, skipped: list) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        skipped.append((path, str(err)))
        return {}
    if not isinstance(info, dict):
        skipped.append((path, "not a JSON object"))
        return {}
    return info


def _run_homes(frames: dict[str, pd.DataFrame]) -> dict[str, set[Path]]:
    """run name -> the directories its checkpoints live in, over one OUT's tables."""
    homes: dict[str, set[Path]] = {}
    for df in frames.values():
        if df.empty:
            continue
        for run, checkpoint in df[["run", "checkpoint"]].drop_duplicates().itertuples(index=False):
            homes.setdefault(run, set()).add(Path(checkpoint).parent.resolve())
    return homes


def prefixes(outs: Sequence[Path], homes: list[dict], labels: Sequence[str] | None):
    """One run-name prefix per OUT ("" for none) and a note saying why, if any.

    With `labels` every OUT's runs become `label/run`. Without, a run name that two OUTs use
    for checkpoints in different directories is a collision: every OUT then gets its directory
    name as label (a run measured into several OUTs from the same files is one run, not two).
    """
    if labels is not None:
        labels = [s.strip() for s in labels]
        if len(labels) != len(outs):
            raise UsageError(
                f"--label: {len(labels)} label(s) for {len(outs)} OUT directorie(s); give one each"
            )
        if any(not s or "/" in s for s in labels) or len(set(labels)) != len(labels):
            raise UsageError(
                f"--label {','.join(labels)}: labels must be distinct, non-empty, without '/'"
            )
        return [f"{s}/" for s in labels], None
    seen: dict[str, set[Path]] = {}
    clashes = set()
    for mine in homes:
        for run, dirs in mine.items():
            if run in seen and not (seen[run] & dirs):
                clashes.add(run)
            seen.setdefault(run, set()).update(dirs)
    if not clashes:
        return [""] * len(outs), None
    names = [Path(o).resolve().name or "out" for o in outs]
    if len(set(names)) != len(names):
        names = [f"{n}{i + 1}" for i, n in enumerate(names)]
    note = (
        f"Run name(s) {', '.join(sorted(clashes))} appear in several OUT directories with "
        f"different checkpoints: runs are prefixed by OUT ({', '.join(n + '/' for n in names)}); "
        "pass --label to choose the labels."
    )
    return [f"{n}/" for n in names], note


def _require_dirs(outs: Sequence[Path], run_dirs: Sequence[Path]) -> None:
    for out in outs:
        if not Path(out).is_dir():
            raise UsageError(f"{out}: no such directory")
    for run_dir in run_dirs:
        if not Path(run_dir).is_dir():
            raise UsageError(f"--runs {run_dir}: no such directory")


def _names_by_dir(frames: dict[str, pd.DataFrame]) -> dict[Path, str]:
    """checkpoint directory -> the run name the tables give it (the first seen)."""
    names: dict[Path, str] = {}
    for df in frames.values():
        for run, checkpoint in df[["run", "checkpoint"]].drop_duplicates().itertuples(index=False):
            names.setdefault(Path(checkpoint).parent.resolve(), run)
    return names


def _runs(candidates: list[tuple[Path, str]], names: dict[Path, str], skipped: list):
    """({run: run.json}, {run: directory}, [train_log frames]) of the candidate directories
    (directory, prefix) that hold a run.json or a train_log; the first of a name wins."""
    runs: dict[str, dict] = {}
    dirs: dict[str, Path] = {}
    logs = []
    for run_dir, pre in candidates:
        resolved = run_dir.resolve()
        name = names.get(resolved, pre + run_dir.name)
        if name in dirs or not resolved.is_dir():
            continue
        info = _run_json(resolved, skipped)
        if not info and not (resolved / "train_log").is_dir():
            continue
        dirs[name], runs[name] = resolved, info
        log = _read(resolved, "train_log", skipped)
        if not log.empty:
            logs.append(log.assign(run=name))
    return runs, dirs, logs


def load_sources(
    outs: Sequence[Path], run_dirs: Sequence[Path] = (), labels: Sequence[str] | None = None
) -> Sources:
    """Read the tables under each OUT and the runs' train_log/run.json.

    Run directories are the `--runs` given, those under each OUT that hold a run.json, and the
    directories of the checkpoints named in the tables. A run is named as in the tables (the
    `run` column, prefixed by its OUT's label when there is one); a run directory seen only
    here is named by its directory.
    """
    _require_dirs(outs, run_dirs)
    skipped: list[tuple[Path, str]] = []
    per_out = [{t: _read(Path(o), t, skipped) for t in (*MEASURED, "train_log")} for o in outs]
    homes = [_run_homes({t: f[t] for t in MEASURED}) for f in per_out]
    prefix, note = prefixes(outs, homes, labels)
    for frames, pre in zip(per_out, prefix, strict=True):
        for table, df in frames.items():
            if pre and not df.empty:
                frames[table] = df.assign(run=pre + df.run.astype(str))
    frames = {t: _concat([f[t] for f in per_out], t) for t in MEASURED}
    names = _names_by_dir(frames)
    candidates = [(Path(r), "") for r in run_dirs]
    for out, pre in zip(outs, prefix, strict=True):
        candidates += [(p.parent, pre) for p in sorted(Path(out).glob("**/run.json"))]
    candidates += [(p, "") for p in names]
    runs, dirs, logs = _runs(candidates, names, skipped)
    return Sources(
        attack=frames["attack"],
        flatness=frames["flatness"],
        landscape=frames["landscape"],
        train_log=_concat([f["train_log"] for f in per_out] + logs, "train_log"),
        runs=runs,
        run_dirs=dirs,
        skipped=skipped,
        notes=[note] if note else [],
    )


def only_runs(sources: Sources, run_dirs: Sequence[Path]) -> Sources:
    """`sources` restricted to the runs of `run_dirs` (a run directory's own name, or the name
    the tables give the checkpoints in it); a directory with no run in them is refused."""
    frames = {t: getattr(sources, t) for t in (*MEASURED, "train_log")}
    keep: set[str] = set()
    for run_dir in run_dirs:
        home = Path(run_dir).resolve()
        hits = {name for name, path in sources.run_dirs.items() if path == home}
        for df in frames.values():
            if not df.empty and "checkpoint" in df:
                pairs = df[["run", "checkpoint"]].dropna().drop_duplicates()
                pairs = pairs.itertuples(index=False)
                hits |= {r for r, c in pairs if Path(c).parent.resolve() == home}
        if not hits:
            raise UsageError(
                f"--runs {run_dir}: no attack, flatness, landscape or train_log rows of this run"
            )
        keep |= hits
    for table, df in frames.items():
        setattr(sources, table, df[df.run.isin(sorted(keep))].reset_index(drop=True))
    sources.runs = {k: v for k, v in sources.runs.items() if k in keep}
    sources.run_dirs = {k: v for k, v in sources.run_dirs.items() if k in keep}
    return sources
