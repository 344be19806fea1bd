"""Repeats and settings: the rows of one checkpoint that differ only in seed are repeats, and
are averaged, with the standard error across seeds; rows that differ in a setting (precision,
examples, attack steps, restarts or step size, xi, estimator, estimator version, ...) are never
merged. Per checkpoint the report uses one setting: the one measured on the most checkpoints
(ties: the newest), falling back to the next for a checkpoint that lacks it; the others are
named in a note."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatcli.report.columns import SETTING_NAMES as _NAMES
from flatcli.report.columns import THREAT, show
from flatcli.uncertainty import combined

KEY = ["run", "epoch"]
VERSION = "estimator_version"  # a setting where the tables carry it


def present(rows: pd.DataFrame, columns: list[str]) -> list[str]:
    """`columns` (and the estimator version) that `rows` has."""
    return [c for c in dict.fromkeys([*columns, VERSION]) if c in rows.columns]


def _label(rows: pd.DataFrame, columns: list[str]) -> pd.Series:
    if not columns:
        return pd.Series("", index=rows.index)
    return rows[columns].map(show).agg(" | ".join, axis=1)


def choose_setting(
    rows: pd.DataFrame, columns: list[str], what: str, notes: list[str], by: tuple = ()
) -> pd.DataFrame:
    """Per checkpoint (and `by`, e.g. the attack), the rows of one setting of `columns`: the
    setting measured on the most checkpoints, ties broken by the newest row; a checkpoint without
    it falls back to its best-ranked one. Each setting left out is named in `notes`."""
    columns = present(rows, columns)
    if rows.empty or not columns:
        return rows
    rows = rows.assign(_setting=_label(rows, columns))
    created = rows.created_at.fillna("") if "created_at" in rows else pd.Series("", rows.index)
    rows = rows.assign(_created=created.astype(str))
    group = [*by, "_setting"]
    grouped = rows.drop_duplicates([*group, *KEY]).groupby(group, dropna=False)
    ranked = grouped.agg(_checkpoints=("run", "size")).join(
        rows.groupby(group, dropna=False).agg(_newest=("_created", "max"))
    )
    ranked = ranked.reset_index().sort_values(["_checkpoints", "_newest"], ascending=False)
    ranked["_rank"] = np.arange(len(ranked))
    rows = rows.merge(ranked[[*group, "_rank"]], on=group, how="left")
    best = rows.groupby([*KEY, *by], dropna=False)._rank.transform("min")
    keep = (rows._rank == best).to_numpy()
    _name_dropped(rows, keep, columns, what, notes, by)
    return rows[keep].drop(columns=["_setting", "_created", "_rank"])


def _name_dropped(rows, keep, columns, what, notes, by) -> None:
    """One note per setting left out on some checkpoint: how it differs from the one used."""
    dropped = rows[~keep]
    if dropped.empty:
        return
    used = rows[keep].sort_values("_rank", kind="stable")
    for _, group in dropped.groupby([*by, "_setting"], dropna=False, sort=False):
        first = group.iloc[0]
        others = used
        for c in by:
            others = others[others[c].map(show) == show(first[c])]
        chosen = others.iloc[0] if not others.empty else first
        differ = [c for c in columns if show(first[c]) != show(chosen[c])]
        where = _where(group)
        name = f"{show(first[by[0]])}: " if by else ""
        parts = ", ".join(
            f"{_NAMES.get(c, c)} {show(first[c])} (used: {show(chosen[c])})" for c in differ
        )
        notes.append(
            f"{what}: {name}also measured with {parts} on {where}; not merged with the setting "
            "used (measured on the most checkpoints)."
        )


def _where(group: pd.DataFrame) -> str:
    checkpoints = group[KEY].drop_duplicates()
    runs = sorted(set(checkpoints.run.astype(str)))
    n = len(checkpoints)
    shown = ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")
    return f"{n} checkpoint{'s' if n > 1 else ''} ({shown})"


def average_seeds(
    rows: pd.DataFrame, by: list[str], values: dict[str, str | None]
) -> pd.DataFrame:
    """One row per `by`: each of `values` (column -> its SE column, or None) averaged over the
    seeds (the newest row of each seed), with `<value>_seed_se` (std across seeds / sqrt(k), for
    k >= 2 seeds), the SE over examples as the root mean square of the repeats' `<se column>`,
    combined in quadrature with the across-seed SE into `<value>_se`, and `n_seeds`. Other
    columns come from the newest row."""
    if rows.empty:
        return rows
    seeds = rows.seed.fillna(-1) if "seed" in rows else pd.Series(-1, index=rows.index)
    rows = rows.assign(_seed=seeds)
    if "created_at" in rows:
        rows = rows.sort_values("created_at", na_position="first", kind="stable")
    rows = rows.groupby([*by, "_seed"], dropna=False, sort=False).tail(1)
    out = []
    for _, group in rows.groupby(by, dropna=False, sort=False):
        row = group.iloc[-1].to_dict()
        k = len(group)
        row["n_seeds"] = k
        for value, se in values.items():
            numbers = pd.to_numeric(group[value], errors="coerce").to_numpy(dtype=float)
            finite = numbers[np.isfinite(numbers)]
            row[value] = float(finite.mean()) if len(finite) == len(numbers) and k else math.nan
            seed_se = None
            if k >= 2 and len(finite) == k:
                seed_se = float(finite.std(ddof=1) / math.sqrt(k))
            examples = None
            if se is not None and se in group:
                ses = pd.to_numeric(group[se], errors="coerce").to_numpy(dtype=float)
                if np.isfinite(ses).all():
                    examples = float(np.sqrt(np.mean(ses**2)))
            row[f"{value}_seed_se"] = seed_se
            row[f"{value}_se"] = combined(examples, seed_se)
        out.append(row)
    return pd.DataFrame(out).drop(columns="_seed")


def seeds_line(rows: pd.DataFrame) -> str | None:
    """'seed repeats averaged (k seeds on n checkpoints)' when any checkpoint has several."""
    if rows.empty or "n_seeds" not in rows:
        return None
    many = rows[rows.n_seeds > 1]
    if many.empty:
        return None
    counts = sorted({int(k) for k in many.n_seeds})
    return (
        f"seed repeats averaged ({' or '.join(map(str, counts))} seeds on {len(many)} of "
        f"{len(rows)} checkpoints; ± adds the SE across seeds)"
    )


# What a setting is. An attack row: the evaluation's (threat model, examples, precision), then per
# attack its steps, restarts and step size (a `worst` row: the attacks it is the worst of).
ATTACK_SETTING = [*THREAT, "n_examples", "dtype"]
ATTACK_PARAMS = ["steps", "restarts", "step_size", "worst of"]
ATTACK_VALUES = {
    "clean_err": "clean_err_se",
    "clean_loss": "clean_loss_se",
    "robust_err": "robust_err_se",
    "robust_loss": "robust_loss_se",
}
# A flatness row at the radius the report uses: everything that changes its estimate.
FLATNESS_SETTING = [
    *THREAT, "n_examples", "samples", "iterations", "restarts", "attack", "weight_lr",
    "estimator", "dtype", "conv_scale",
]  # fmt: skip


def _worst_of(rows: pd.DataFrame) -> pd.Series:
    """For `worst` rows, the attacks of the same invocation (run, epoch, config) it is the
    worst of; "" for the others."""
    if "config_hash" not in rows:
        return pd.Series("", index=rows.index)
    named = rows[rows.attack != "worst"]
    family = named.groupby(["run", "epoch", "config_hash"], dropna=False).attack.agg(
        lambda s: ", ".join(sorted(set(s)))
    )
    keys = list(zip(rows.run, rows.epoch, rows.config_hash, strict=True))
    return pd.Series(
        [family.get(k, "") if a == "worst" else "" for k, a in zip(keys, rows.attack, strict=True)],
        index=rows.index,
    )


def attack_rows(attack: pd.DataFrame, split: str, notes: list[str]) -> pd.DataFrame:
    """The attack rows the report uses on `split`: per checkpoint one evaluation setting, per
    attack one setting of its own, seed repeats averaged (`average_seeds`); one row per
    (run, epoch, attack)."""
    rows = attack[attack.split == split]
    if rows.empty:
        return rows
    rows = rows.assign(**{"worst of": _worst_of(rows)})
    what = f"Attack, {split} split"
    rows = choose_setting(rows, ATTACK_SETTING, what, notes)
    rows = choose_setting(rows, ATTACK_PARAMS, what, notes, by=("attack",))
    return average_seeds(rows, [*KEY, "attack"], ATTACK_VALUES)


def measure_rows(rows: pd.DataFrame, what: str, notes: list[str]) -> pd.DataFrame:
    """One flatness measure's rows at one radius: per checkpoint one setting, seed repeats
    averaged; one row per (run, epoch). Rows written before flatness_se existed get the
    average case's offsets share, flatness_std / sqrt(samples)."""
    if rows.empty:
        return rows
    rows = choose_setting(rows, FLATNESS_SETTING, what, notes)
    fallback = rows.flatness_std / np.sqrt(rows.samples.astype(float))
    rows = rows.assign(flatness_se=rows.flatness_se.fillna(fallback))
    return average_seeds(rows, KEY, {"flatness": "flatness_se", "flatness_std": None})
