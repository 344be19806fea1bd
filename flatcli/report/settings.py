"""How each table was measured: the settings the report states first, the differences between
checkpoints a comparison must not hide, and a differing threat model (dataset, eps, norm), which
refuses the comparison across runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flatcli.report.columns import MEASURES, SETTING_NAMES, THREAT, show
from flatcli.report.repeats import attack_rows, measure_rows, seeds_line

ATTACK = [*THREAT, "n_examples", "dtype", "attacks"]
FLATNESS = [
    *THREAT, "n_examples", "xi", "samples", "iterations", "restarts", "attack", "weight_lr",
    "estimator", "dtype",
]  # fmt: skip
STRONGEST = (
    "robust error and loss per checkpoint are the strongest attack's (the largest over these "
    "attacks, all of one setting)"
)
LANDSCAPE = [*THREAT, "n_examples", "direction_kind", "directions", "normalization", "scale"]
_NAMES = SETTING_NAMES
MEASURE_NAMES = {
    "average": "Average-case flatness",
    "worst": "Worst-case flatness",
    "clean-average": "Average-case flatness of the clean loss",
    "clean-worst": "Worst-case flatness of the clean loss",
    "hessian": "Hessian",
}


@dataclass
class Settings:
    """What `settings_of` found: lines to state, differences to name, and a refusal."""

    lines: list[str] = field(default_factory=list)  # "Test split: attacks ..., eps ..."
    differences: list[str] = field(default_factory=list)  # one sentence per differing setting
    refused: str | None = None  # why runs cannot be compared (a differing threat model)


def _where(rows: pd.DataFrame, every: pd.DataFrame) -> str:
    """The runs (and, for part of a run, its epochs) these checkpoint rows cover."""
    out = []
    for run, group in rows.groupby("run", sort=True):
        if len(group) == (every.run == run).sum():
            out.append(str(run))
        else:
            epochs = sorted(int(e) for e in group.epoch.dropna())
            shown = ", ".join(map(str, epochs[:4])) + (", ..." if len(epochs) > 4 else "")
            out.append(f"{run} epoch{'s' if len(epochs) > 1 else ''} {shown}")
    return "; ".join(out[:6]) + (f"; and {len(out) - 6} more" if len(out) > 6 else "")


def differences(what: str, per_checkpoint: pd.DataFrame, columns: list[str]) -> list[str]:
    """One sentence per column whose value differs between checkpoints, naming who has which."""
    out = []
    for column in columns:
        if column not in per_checkpoint:
            continue
        values = per_checkpoint[column].map(show)
        if values.nunique() <= 1:
            continue
        parts = [
            f"{value} ({_where(per_checkpoint[values == value], per_checkpoint)})"
            for value in sorted(values.unique())
        ]
        out.append(f"{what}: {_NAMES.get(column, column)} differs: {'; '.join(parts)}.")
    return out


def _line(what: str, per_checkpoint: pd.DataFrame, columns: list[str]) -> str:
    parts = []
    for column in columns:
        values = sorted(per_checkpoint[column].map(show).unique())
        if values != ["n/a"]:
            parts.append(f"{_NAMES.get(column, column)} {' | '.join(values)}")
    return f"{what}: {', '.join(parts)}."


def _described(row) -> str:
    if row.attack == "worst":
        return f"worst (per example, of {row['worst of']})"
    return f"{row.attack} ({show(row.steps)} steps x {show(row.restarts)} restarts)"


def _attack_checkpoints(attack: pd.DataFrame, split: str) -> pd.DataFrame:
    """One row per checkpoint: the setting of the attack rows the report uses on `split`."""
    rows = attack_rows(attack, split, [])
    if rows.empty:
        return rows
    described = rows.assign(attacks=rows.apply(_described, axis=1))
    return (
        described.groupby(["run", "epoch"], dropna=False)
        .agg(
            {
                **{k: "first" for k in THREAT + ["n_examples", "dtype"]},
                "attacks": lambda s: ", ".join(sorted(set(s))),
                "n_seeds": "max",
            }
        )
        .reset_index()
    )


def _per_checkpoint(attack: pd.DataFrame, flatness: pd.DataFrame, xis: dict[str, float]):
    """(what, one row per checkpoint with its settings, the columns that describe them) for the
    attack on each split, then each flatness measure at the radius the report uses."""
    for split in ("test", "train", "heldout"):
        per = _attack_checkpoints(attack, split)
        if not per.empty:
            yield f"Attack, {split} split", per, ATTACK
    for measure, xi in xis.items():
        rows = flatness[flatness.measure == measure]
        if xi is not None:
            rows = rows[np.isclose(rows.xi, xi)]
        if not rows.empty:
            what = MEASURE_NAMES.get(measure, measure)
            if measure == "hessian":
                per = rows.sort_values("created_at").groupby(["run", "epoch"], dropna=False).last()
                yield what, per.reset_index(), FLATNESS
            else:
                yield what, measure_rows(rows, what, []), FLATNESS


def _landscape_checkpoints(landscape: pd.DataFrame) -> pd.DataFrame:
    """One row per (checkpoint, direction kind) with its settings and number of directions."""
    return (
        landscape.groupby(["run", "epoch", "direction_kind"], dropna=False)
        .agg(
            {
                **{k: "first" for k in THREAT + ["n_examples", "normalization", "scale"]},
                "direction": "nunique",
            }
        )
        .reset_index()
        .rename(columns={"direction": "directions"})
    )


def settings_of(
    attack: pd.DataFrame, flatness: pd.DataFrame, landscape: pd.DataFrame, xis: dict[str, float]
) -> Settings:
    """The settings behind the report's columns: the attack per split, each flatness measure at
    the radius the report uses (`xis`: measure -> xi), the landscape."""
    result = Settings()
    threat = []
    for what, per, columns in _per_checkpoint(attack, flatness, xis):
        line = _line(what, per, columns)
        extra = [STRONGEST] if what.startswith("Attack") else []
        extra += [s for s in [seeds_line(per)] if s]
        result.lines.append(line[:-1] + "; " + "; ".join(extra) + "." if extra else line)
        result.differences += differences(what, per, columns)
        threat += differences(what, per, THREAT)
    if not landscape.empty:
        result.lines.append(_line("Landscape", _landscape_checkpoints(landscape), LANDSCAPE))
    if threat:
        result.refused = (
            "the runs were not measured under one threat model ("
            + " ".join(threat)
            + "); no correlation across runs is computed"
        )
    return result


def flatness_xis(flatness: pd.DataFrame, chosen) -> dict[str, float | None]:
    """measure -> the radius the report uses for it (`chosen(rows, paper_xi)`), or None."""
    out = {}
    for measure, (_, paper_xi) in MEASURES.items():
        xi = chosen(flatness[flatness.measure == measure], paper_xi)
        if xi is not None:
            out[measure] = xi
    if (flatness.measure == "hessian").any():
        out["hessian"] = None
    return out
