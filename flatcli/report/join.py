"""The per-(run, epoch) table: the attack's test and train side, the gaps, one column per
flatness measure (at the paper's radius when measured), the landscape's rise, early stopping and
each run's method and regularizers (from run.json)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatcli import tables
from flatcli.errors import UsageError
from flatcli.report.capacity import capacity
from flatcli.report.columns import HESSIAN, MEASURES, SELECTIONS
from flatcli.report.repeats import ATTACK_VALUES, attack_rows, measure_rows
from flatcli.report.settings import MEASURE_NAMES
from flatcli.report.sources import Sources
from flatcli.uncertainty import difference_se

# run.json config fields that describe how a run was regularized, with their "off" value
_REGULARIZERS = {
    "trades_beta": None,
    "mart_beta": None,
    "awp_gamma": None,
    "label_smoothing": 0.0,
    "label_noise": 0.0,
    "weight_clip": None,
    "augment": "none",
    "extra_data": None,
    "entropy_steps": None,
}
_SHORT = {
    "trades_beta": "beta",
    "mart_beta": "beta",
    "awp_gamma": "awp",
    "label_smoothing": "ls",
    "label_noise": "noise",
    "weight_clip": "clip",
    "augment": "aug",
    "extra_data": "extra",
    "entropy_steps": "entropy-sgd",
}
_DEFAULT_WEIGHT_DECAY = 5e-4


def describe_regularizers(config: dict) -> str:
    """The non-default regularization of a run's config, e.g. "ls 0.2, wd 0.001" ("" if none)."""
    parts = []
    for key, off in _REGULARIZERS.items():
        value = config.get(key, off)
        if value is not None and value != off:
            parts.append(f"{_SHORT[key]} {value:g}" if isinstance(value, float) else _SHORT[key])
    wd = config.get("weight_decay")
    if wd is not None and not math.isclose(wd, _DEFAULT_WEIGHT_DECAY):
        parts.append(f"wd {wd:g}")
    return ", ".join(parts)


def _attack_side(attack: pd.DataFrame, split: str, notes: list[str]) -> pd.DataFrame:
    """Per (run, epoch) on one split, over the attack rows of one setting with seed repeats
    averaged (`repeats.attack_rows`): each error and loss the strongest attack's (the largest
    over the attacks), with that attack's standard errors."""
    rows = attack_rows(attack, split, notes)
    if rows.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    side = []
    for (run, epoch), group in rows.groupby(["run", "epoch"], dropna=False, sort=False):
        row = {"run": run, "epoch": epoch, "attacks": ",".join(sorted(set(group.attack)))}
        row |= {"n": group.n_examples.max(), "n_seeds": group.n_seeds.max()}
        for value in ATTACK_VALUES:
            numbers = pd.to_numeric(group[value], errors="coerce")
            top = group.loc[numbers.idxmax()] if numbers.notna().any() else None
            for column in (value, f"{value}_se", f"{value}_seed_se"):
                row[column] = None if top is None else top[column]
        side.append(row)
    side = pd.DataFrame(side)
    keep = ["run", "epoch"]
    renamed = {c: f"{split}_{c}" for c in side.columns if c not in keep}
    return side.rename(columns=renamed)


_IDENTITY = ["checkpoint", "dataset", "arch", "eps", "norm"]


def _identity(sources: Sources) -> pd.DataFrame:
    """checkpoint, dataset, arch, eps, norm per (run, epoch), from whichever table has the row
    (the test split of `attack` first: eps is the evaluation's)."""
    attack = sources.attack
    frames = [
        attack[attack.split == "test"],
        attack,
        sources.flatness[sources.flatness.measure.isin(["average", "worst", "hessian"])],
        sources.landscape,
        sources.train_log,
    ]
    rows = [f[["run", "epoch", *_IDENTITY]] for f in frames if not f.empty]
    if not rows:
        return pd.DataFrame(columns=["run", "epoch", *_IDENTITY])
    return pd.concat(rows).groupby(["run", "epoch"], dropna=False).first().reset_index()


def chosen_xi(rows: pd.DataFrame, paper_xi: float) -> float | None:
    """The paper's radius when measured, else the radius measured on most checkpoints."""
    if rows.empty:
        return None
    xis = rows.xi.dropna()
    if np.isclose(xis, paper_xi).any():
        return float(xis[np.isclose(xis, paper_xi)].iloc[0])
    counts = rows.groupby("xi").checkpoint.nunique()
    return float(counts[counts == counts.max()].index.min())


def flatness_rows(flatness: pd.DataFrame) -> pd.DataFrame:
    """The flatness rows the report uses: the test split's (else the first one's), oldest first."""
    if flatness.empty:
        return flatness
    split = "test" if (flatness.split == "test").any() else flatness.split.iloc[0]
    return flatness[flatness.split == split].sort_values("created_at")


def _flatness_side(flatness: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """One column per measure (test split preferred; latest row per checkpoint)."""
    rows = flatness_rows(flatness)
    if rows.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    side = None
    for measure, (column, paper_xi) in MEASURES.items():
        mine = rows[rows.measure == measure]
        xi = chosen_xi(mine, paper_xi)
        if xi is None:
            continue
        mine = measure_rows(mine[np.isclose(mine.xi, xi)], MEASURE_NAMES[measure], notes)
        mine = mine.set_index(["run", "epoch"])
        part = pd.DataFrame(
            {
                column: mine.flatness,
                f"{column}_std": mine.flatness_std,
                f"{column}_se": mine.flatness_se,  # flatcli.uncertainty, with the seeds' share
                f"{column}_xi": xi,
                f"{column}_seed_se": mine.flatness_seed_se,
                f"{column}_n_seeds": mine.n_seeds,
            }
        ).reset_index()
        side = part if side is None else side.merge(part, on=["run", "epoch"], how="outer")
    hessian = rows[rows.measure == "hessian"].groupby(["run", "epoch"], dropna=False).last()
    if not hessian.empty:
        part = hessian[list(HESSIAN)].reset_index()
        side = part if side is None else side.merge(part, on=["run", "epoch"], how="outer")
    return side if side is not None else pd.DataFrame(columns=["run", "epoch"])


def _landscape_side(landscape: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and kind (random, adversarial; 1-D): the mean over directions of the
    robust loss at the ends of the range minus at alpha = 0 (nats)."""
    rows = landscape[landscape.beta.isna() & landscape.robust_loss.notna()]
    out = pd.DataFrame(columns=["run", "epoch"])
    for kind in ("random", "adversarial"):
        mine = rows[rows.direction_kind == kind]
        if mine.empty:
            continue
        per = []
        for (run, epoch), group in mine.groupby(["run", "epoch"], dropna=False):
            group = group[group.config_hash == group.config_hash.iloc[-1]]
            lo, hi = group.alpha.min(), group.alpha.max()
            at_zero = group[group.alpha == 0].robust_loss.mean()
            ends = group[group.alpha.isin([lo, hi])].robust_loss.mean()
            per.append({"run": run, "epoch": epoch, f"landscape_{kind}_rise": ends - at_zero})
        part = pd.DataFrame(per)
        out = part if out.empty else out.merge(part, on=["run", "epoch"], how="outer")
    return out


def _best_epochs(sources: Sources) -> dict[str, int]:
    """Early stopping per run: run.json best, else min held-out robust error (train_log, then
    the attack table's held-out split)."""
    best = {}
    for run, info in sources.runs.items():
        epoch = (info.get("best") or {}).get("epoch")
        if epoch is not None:
            best[run] = int(epoch)
    log = sources.train_log.dropna(subset=["heldout_robust_err"])
    for run, group in log.groupby("run"):
        best.setdefault(run, int(group.loc[group.heldout_robust_err.idxmin(), "epoch"]))
    held = sources.attack[(sources.attack.split == "heldout") & sources.attack.epoch.notna()]
    for run, group in held.groupby("run"):
        per_epoch = group.groupby("epoch").robust_err.max()
        best.setdefault(run, int(per_epoch.idxmin()))
    return best


def _run_columns(df: pd.DataFrame, sources: Sources) -> pd.DataFrame:
    """`df` with each run's method, regularizers and directory (run.json), its width and
    parameter count (report.capacity), and early stopping
    (best_epoch, is_best) and is_last per row."""
    configs = {run: info.get("config", {}) for run, info in sources.runs.items()}
    df["method"] = df.run.map(lambda r: configs.get(r, {}).get("method"))
    df["regularizers"] = df.run.map(lambda r: describe_regularizers(configs.get(r, {})))
    df.loc[~df.run.isin(list(configs)), "regularizers"] = None
    for key in ("label_smoothing", "weight_decay", "awp_gamma", "trades_beta"):
        df[key] = df.run.map(lambda r, k=key: configs.get(r, {}).get(k))
    dirs = {run: str(path) for run, path in sources.run_dirs.items()}
    df["run_dir"] = df.run.map(lambda r: dirs.get(r))
    sizes = capacity(df, configs).set_index("run")
    df["width"] = df.run.map(sizes.width).astype("Int64")
    df["n_params"] = df.run.map(sizes.n_params).astype("Int64")
    df["best_epoch"] = df.run.map(_best_epochs(sources)).astype("Int64")
    df["is_best"] = df.epoch.notna() & (df.epoch == df.best_epoch).fillna(False)
    last = df.groupby("run").epoch.transform("max")
    df["is_last"] = (df.epoch == last).fillna(False).astype(bool)
    return df


def per_epoch(sources: Sources, notes: list[str] | None = None) -> pd.DataFrame:
    """The wide per-(run, epoch) table with the `report` schema's columns; a checkpoint measured
    twice with different settings is named in `notes`."""
    keys = ["run", "epoch"]
    notes = [] if notes is None else notes
    parts = [
        _attack_side(sources.attack, "test", notes),
        _attack_side(sources.attack, "train", notes),
        _flatness_side(sources.flatness, notes),
        _landscape_side(sources.landscape),
    ]
    log = sources.train_log
    if not log.empty:
        parts.append(
            log.sort_values("created_at")
            .groupby(keys, dropna=False)
            .last()
            .reset_index()[keys + ["lr", "train_loss", "heldout_robust_err", "heldout_robust_loss"]]
        )
    df = pd.DataFrame(columns=keys)
    for part in parts:
        if part.empty:
            continue
        part = part.astype({"epoch": "Int64"})
        df = part if df.empty else df.merge(part, on=keys, how="outer")
    if df.empty:
        return tables.schema("report").empty_table().to_pandas()
    for column in tables.columns("report"):
        if column not in df.columns:
            df[column] = None
    df["rce_gap"] = df.test_robust_loss - df.train_robust_loss
    df["rerr_gap"] = df.test_robust_err - df.train_robust_err
    for gap, value in (("rce_gap", "robust_loss"), ("rerr_gap", "robust_err")):
        df[f"{gap}_se"] = [  # test and train examples are independent samples
            difference_se(a, b)
            for a, b in zip(df[f"test_{value}_se"], df[f"train_{value}_se"], strict=True)
        ]
    identity = _identity(sources).astype({"epoch": "Int64"})
    df = _run_columns(df.drop(columns=_IDENTITY).merge(identity, on=keys, how="left"), sources)
    return df.sort_values(keys).reset_index(drop=True)[tables.columns("report")]


def select(df: pd.DataFrame, how: str) -> pd.DataFrame:
    """One row per run at its last or early-stopping epoch, or every row (`all`)."""
    if how not in SELECTIONS:
        raise UsageError(f"--select {how!r}: choose last, best or all")
    if how == "all":
        return df
    chosen = df[df.is_last] if how == "last" else df[df.is_best]
    return chosen.drop_duplicates("run")
