"""The report: one wide row per (run, epoch), correlations of flatness with robust generalization,
figures, and the findings in plain sentences (PAPER.md's "Findings to reproduce").

Inputs are the tables the other commands write (`attack`, `flatness`, `landscape` under each OUT,
`train_log` and `run.json` in each run directory) and any of them may be missing: the report
then says what is missing and the command that computes it.

- **per epoch** (`per_epoch`): test and train clean/robust error and loss from `attack` (robust
  error: the strongest attack, i.e. the largest error; robust loss: the largest estimate among
  the attacks that estimate it, PAPER.md's "known traps"), the robust generalization gap (test
  minus train), held-out robust error and lr from `train_log`, one column per flatness measure
  (at the paper's radius when it was measured, else at the radius measured on most checkpoints),
  the rise of the landscape's robust loss, and the run's method and regularizers from run.json.
- **early stopping** (`is_best`): run.json's `best` epoch (the held-out robust error's minimum),
  else the minimum of `heldout_robust_err` in train_log, else of robust error on the held-out
  split in `attack`.
- **correlations** (`correlations`): Kendall tau, Spearman rho and Pearson r with p-values
  (scipy.stats) between each flatness measure and each robust-generalization target, across runs
  (one row per run at the selected epoch: last | best; or every row with `all`) and across epochs
  within each run. Fewer than 3 pairs give no correlation (null), never a made-up one.
- **files** (`write`): `REPORT_DIR/report/report.parquet` and
  `REPORT_DIR/correlations/correlations.parquet` (schemas in tables.py), figures in
  `REPORT_DIR/report_plots/` (PNG and SVG, matplotlib Agg), `report.md` and, optionally, a
  self-contained `report.html` with the figures embedded. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flatcli import files, tables
from flatcli.config import AVERAGE_XI, WORST_XI
from flatcli.errors import UsageError

SELECTIONS = ("last", "best", "all")
PLOTS = "report_plots"

# flatness measure -> (report column, the paper's radius or None)
MEASURES = {
    "average": ("flatness_average", AVERAGE_XI),
    "worst": ("flatness_worst", WORST_XI),
    "clean-average": ("flatness_clean_average", AVERAGE_XI),
    "clean-worst": ("flatness_clean_worst", WORST_XI),
}
HESSIAN = {"lambda_max": "lambda_max", "hessian_trace": "hessian_trace"}
FLATNESS_COLUMNS = [c for c, _ in MEASURES.values()] + list(HESSIAN.values())
FLATNESS_LABELS = {
    "flatness_average": "average-case flatness",
    "flatness_worst": "worst-case flatness",
    "flatness_clean_average": "average-case flatness of the clean loss",
    "flatness_clean_worst": "worst-case flatness of the clean loss",
    "lambda_max": "Hessian lambda_max",
    "hessian_trace": "Hessian trace",
    "landscape_random_rise": "random-direction landscape rise",
    "landscape_adversarial_rise": "adversarial-direction landscape rise",
}
SHARPNESS_COLUMNS = FLATNESS_COLUMNS + ["landscape_random_rise", "landscape_adversarial_rise"]
TARGETS = {
    "test_robust_err": "test robust error",
    "test_robust_loss": "test robust loss",
    "rce_gap": "robust loss gap (test - train)",
    "rerr_gap": "robust error gap (test - train)",
}
SUMMARY = [
    "run",
    "method",
    "regularizers",
    "epoch",
    "test_robust_err",
    "test_robust_loss",
    "rce_gap",
    "flatness_average",
    "flatness_worst",
]
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


# ---------------------------------------------------------------------------------------------
# Sources


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


def load_sources(outs: Sequence[Path], run_dirs: Sequence[Path] = ()) -> Sources:
    """Read the tables under each OUT and the runs' train_log/run.json.

    Run directories are the `--runs` given, those under each OUT that hold a run.json, and the
    directories of the checkpoints named in the tables. A run is named as in the tables (the
    `run` column); a run directory seen only here is named by its directory.
    """
    for out in outs:
        if not Path(out).is_dir():
            raise UsageError(f"{out}: no such directory")
    for run_dir in run_dirs:
        if not Path(run_dir).is_dir():
            raise UsageError(f"--runs {run_dir}: no such directory")
    skipped: list[tuple[Path, str]] = []
    read = {
        t: [_read(Path(o), t, skipped) for o in outs] for t in ("attack", "flatness", "landscape")
    }
    frames = {t: _concat(read[t], t) for t in read}
    names: dict[Path, str] = {}
    for df in frames.values():
        for run, checkpoint in df[["run", "checkpoint"]].drop_duplicates().itertuples(index=False):
            names.setdefault(Path(checkpoint).parent.resolve(), run)
    candidates = [Path(r) for r in run_dirs]
    for out in outs:
        candidates += [p.parent for p in sorted(Path(out).glob("**/run.json"))]
    candidates += [Path(p) for p in names]
    runs: dict[str, dict] = {}
    dirs: dict[str, Path] = {}
    logs = [_read(Path(o), "train_log", skipped) for o in outs]
    for run_dir in candidates:
        resolved = run_dir.resolve()
        name = names.get(resolved, run_dir.name)
        if name in dirs or not resolved.is_dir():
            continue
        info = _run_json(resolved, skipped)
        if not info and not (resolved / "train_log").is_dir():
            continue
        dirs[name], runs[name] = resolved, info
        log = _read(resolved, "train_log", skipped)
        if not log.empty:
            logs.append(log.assign(run=name))
    return Sources(
        attack=frames["attack"],
        flatness=frames["flatness"],
        landscape=frames["landscape"],
        train_log=_concat(logs, "train_log"),
        runs=runs,
        run_dirs=dirs,
        skipped=skipped,
    )


# ---------------------------------------------------------------------------------------------
# The per-epoch table


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


def _attack_side(attack: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per (run, epoch) on one split: errors as the strongest attack's, loss as the largest."""
    rows = attack[attack.split == split]
    if rows.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    grouped = rows.groupby(["run", "epoch"], dropna=False)
    side = grouped.agg(
        attacks=("attack", lambda s: ",".join(sorted(set(s)))),
        n=("n_examples", "max"),
        clean_err=("clean_err", "max"),
        clean_loss=("clean_loss", "max"),
        robust_err=("robust_err", "max"),
        robust_loss=("robust_loss", "max"),
    ).reset_index()
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


def _chosen_xi(rows: pd.DataFrame, paper_xi: float) -> float | None:
    """The paper's radius when measured, else the radius measured on most checkpoints."""
    if rows.empty:
        return None
    xis = rows.xi.dropna()
    if np.isclose(xis, paper_xi).any():
        return float(xis[np.isclose(xis, paper_xi)].iloc[0])
    counts = rows.groupby("xi").checkpoint.nunique()
    return float(counts[counts == counts.max()].index.min())


def _flatness_side(flatness: pd.DataFrame) -> pd.DataFrame:
    """One column per measure (test split preferred; latest row per checkpoint)."""
    if flatness.empty:
        return pd.DataFrame(columns=["run", "epoch"])
    split = "test" if (flatness.split == "test").any() else flatness.split.iloc[0]
    rows = flatness[flatness.split == split].sort_values("created_at")
    side = None
    for measure, (column, paper_xi) in MEASURES.items():
        mine = rows[rows.measure == measure]
        xi = _chosen_xi(mine, paper_xi)
        if xi is None:
            continue
        mine = mine[np.isclose(mine.xi, xi)].groupby(["run", "epoch"], dropna=False).last()
        part = pd.DataFrame(
            {
                column: mine.flatness,
                f"{column}_std": mine.flatness_std,
                f"{column}_xi": xi,
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


def per_epoch(sources: Sources) -> pd.DataFrame:
    """The wide per-(run, epoch) table with the `report` schema's columns."""
    keys = ["run", "epoch"]
    parts = [
        _attack_side(sources.attack, "test"),
        _attack_side(sources.attack, "train"),
        _flatness_side(sources.flatness),
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
    identity = _identity(sources).astype({"epoch": "Int64"})
    df = df.drop(columns=_IDENTITY).merge(identity, on=keys, how="left")
    best = _best_epochs(sources)
    configs = {run: info.get("config", {}) for run, info in sources.runs.items()}
    df["method"] = df.run.map(lambda r: configs.get(r, {}).get("method"))
    df["regularizers"] = df.run.map(lambda r: describe_regularizers(configs.get(r, {})))
    df.loc[~df.run.isin(list(configs)), "regularizers"] = None
    for key in ("label_smoothing", "weight_decay", "awp_gamma", "trades_beta"):
        df[key] = df.run.map(lambda r, k=key: configs.get(r, {}).get(k))
    dirs = {run: str(path) for run, path in sources.run_dirs.items()}
    df["run_dir"] = df.run.map(lambda r: dirs.get(r))
    df["best_epoch"] = df.run.map(best).astype("Int64")
    df["is_best"] = df.epoch.notna() & (df.epoch == df.best_epoch).fillna(False)
    last = df.groupby("run").epoch.transform("max")
    df["is_last"] = (df.epoch == last).fillna(False).astype(bool)
    df = df.sort_values(keys).reset_index(drop=True)
    return df[tables.columns("report")]


def select(df: pd.DataFrame, how: str) -> pd.DataFrame:
    """One row per run at its last or early-stopping epoch, or every row (`all`)."""
    if how not in SELECTIONS:
        raise UsageError(f"--select {how!r}: choose last, best or all")
    if how == "all":
        return df
    chosen = df[df.is_last] if how == "last" else df[df.is_best]
    return chosen.drop_duplicates("run")


# ---------------------------------------------------------------------------------------------
# Correlations


def correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    """Kendall tau, Spearman rho, Pearson r with two-sided p-values (scipy.stats) over the pairs
    where both are finite; null statistics below 3 pairs or for constant inputs."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(ok.sum())}
    names = {"kendall": stats.kendalltau, "spearman": stats.spearmanr, "pearson": stats.pearsonr}
    for name, fn in names.items():
        value = p = None
        if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fn(x, y)
            value, p = float(result[0]), float(result[1])
        out[name], out[f"{name}_p"] = value, p
    return out


def correlations(df: pd.DataFrame, how: str) -> pd.DataFrame:
    """Every (sharpness column present) x (target present): across runs at `how`, and across
    epochs within each run."""
    measures = [c for c in SHARPNESS_COLUMNS if df[c].notna().any()]
    targets = [c for c in TARGETS if df[c].notna().any()]
    rows = []
    chosen = select(df, how)
    for measure in measures:
        for target in targets:
            base = {"measure": measure, "target": target}
            scope = "across runs" if how != "all" else "all checkpoints"
            stats_ = correlation(chosen[measure], chosen[target])
            rows.append({"scope": scope, "run": None, "select": how, **base, **stats_})
            for run, group in df.groupby("run"):
                stats_ = correlation(group[measure], group[target])
                rows.append({"scope": "within run", "run": run, "select": "all", **base, **stats_})
    return tables.to_arrow(rows, "correlations").to_pandas()


# ---------------------------------------------------------------------------------------------
# Findings


def _fmt(value, digits: int = 3) -> str:
    if _missing(value) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _pct(value) -> str:
    return "n/a" if _missing(value) else f"{100 * value:.1f} %"


def _p(p) -> str:
    return "n/a" if _missing(p) else f"{p:.2g}"


def overfitting_finding(run: str, group: pd.DataFrame) -> str | None:
    """Finding 1 for one run: the path of test and train robust loss and the gap."""
    g = group.dropna(subset=["test_robust_loss"]).sort_values("epoch")
    if len(g) < 2 or g.epoch.isna().all():
        return None
    first, last = g.iloc[0], g.iloc[-1]
    low = g.loc[g.test_robust_loss.idxmin()]
    rise = last.test_robust_loss - low.test_robust_loss
    text = (
        f"Run `{run}`: test robust loss went from {_fmt(first.test_robust_loss)} (epoch "
        f"{first.epoch}) to its minimum {_fmt(low.test_robust_loss)} at epoch {low.epoch} "
    )
    if low.epoch < last.epoch and rise > 0:
        relative = rise / low.test_robust_loss
        verdict = "robust overfitting" if relative >= 0.05 else "a small rise (under 5 %)"
        text += (
            f"and rose to {_fmt(last.test_robust_loss)} by the last epoch {last.epoch} "
            f"(+{_fmt(rise, 2)} nats, +{100 * relative:.1f} %): {verdict}."
        )
    else:
        text += "and did not rise afterwards: no robust overfitting in the test robust loss."
    train = g.dropna(subset=["train_robust_loss"])
    if len(train) >= 2:
        t0, t1 = train.iloc[0], train.iloc[-1]
        text += (
            f" Train robust loss went from {_fmt(t0.train_robust_loss)} to "
            f"{_fmt(t1.train_robust_loss)}; the gap (test - train) from {_fmt(t0.rce_gap)} at "
            f"epoch {t0.epoch} to {_fmt(t1.rce_gap)} at epoch {t1.epoch}."
        )
    best = group[group.is_best]
    if not best.empty and not pd.isna(best.test_robust_err.iloc[0]):
        b = best.iloc[0]
        text += (
            f" Early stopping (held-out robust error) picks epoch {b.epoch}: test robust error "
            f"{_pct(b.test_robust_err)} there vs {_pct(last.test_robust_err)} at the last epoch."
        )
    return text


def _trend(stats_: dict) -> str:
    tau, p = stats_["kendall"], stats_["kendall_p"]
    if tau is None or p >= 0.05:
        return "no significant trend over the epochs"
    return "it grew over training" if tau > 0 else "it fell over training"


def flatness_finding(run: str, group: pd.DataFrame, column: str) -> str | None:
    """Finding 2 for one run and measure: flatness over epochs, and at early stopping."""
    g = group.dropna(subset=[column]).sort_values("epoch")
    if len(g) < 2:
        return None
    first, last = g.iloc[0], g.iloc[-1]
    trend = correlation(g.epoch.astype(float), g[column])
    label = FLATNESS_LABELS[column]
    xi = g.get(f"{column}_xi")
    where = f" (xi = {xi.iloc[0]:g})" if xi is not None and pd.notna(xi.iloc[0]) else ""
    text = (
        f"Run `{run}`: {label}{where} went from {_fmt(first[column])} at epoch {first.epoch} to "
        f"{_fmt(last[column])} at epoch {last.epoch}: {_trend(trend)} (Kendall tau with the "
        f"epoch {_fmt(trend['kendall'], 2)}, p = {_p(trend['kendall_p'])}, n = {trend['n']})."
    )
    gap = correlation(g[column], g.rce_gap)
    if gap["kendall"] is not None:
        text += (
            f" Across its epochs, {label} and the robust loss gap have Kendall tau "
            f"{_fmt(gap['kendall'], 2)} (p = {_p(gap['kendall_p'])})."
        )
    best = g[g.is_best]
    if not best.empty and best.epoch.iloc[0] != last.epoch:
        b = best.iloc[0]
        flatter = "flatter" if b[column] < last[column] else "not flatter"
        text += (
            f" The early-stopped epoch {b.epoch} is {flatter} ({_fmt(b[column])} vs "
            f"{_fmt(last[column])} at the last epoch)."
        )
    return text


def across_runs_finding(corr: pd.DataFrame, chosen: pd.DataFrame, how: str) -> list[str]:
    """Finding 3: across runs, flatter minima with lower robust error / smaller gap?"""
    out = []
    scope = corr[corr.scope != "within run"]
    at = "every checkpoint" if how == "all" else f"the {how} epoch of each run"
    for measure in [m for m in SHARPNESS_COLUMNS if m in set(scope.measure)]:
        rows = scope[scope.measure == measure]
        if rows.kendall.isna().all():
            out.append(
                f"Across runs ({at}): {FLATNESS_LABELS[measure]} has no correlation with "
                f"robustness: it needs 3 pairs that vary, there are {rows.n.max()}."
            )
            continue
        for target in ("test_robust_err", "rce_gap"):
            row = rows[rows.target == target]
            if row.empty or pd.isna(row.kendall.iloc[0]):
                continue
            r = row.iloc[0]
            what = f"{FLATNESS_LABELS[measure]} and {TARGETS[target]}"
            noun = "robust error" if target == "test_robust_err" else "gap"
            significant = r.kendall_p < 0.05
            verb = "had" if significant else "tended to have"
            if r.kendall > 0:
                sign = f"flatter runs {verb} a lower {noun}"
            elif r.kendall < 0:
                sign = f"flatter runs {verb} a higher {noun}"
            else:
                sign = f"no rank relation between flatness and {noun}"
            strength = "significant" if significant else "not significant"
            out.append(
                f"Across {r.n} {'checkpoints' if how == 'all' else 'runs'} ({at}): Kendall tau "
                f"between {what} is {_fmt(r.kendall, 2)} (p = {_p(r.kendall_p)}, {strength}; "
                f"Spearman {_fmt(r.spearman, 2)}, Pearson {_fmt(r.pearson, 2)}): {sign}."
            )
    return out


def findings(df: pd.DataFrame, corr: pd.DataFrame, how: str) -> dict[str, list[str]]:
    """The paper's three findings as measured here, sentence by sentence."""
    overfit, flat = [], []
    for run, group in df.groupby("run"):
        sentence = overfitting_finding(run, group)
        if sentence:
            overfit.append(sentence)
        for column in FLATNESS_COLUMNS:
            if group[column].notna().sum() >= 2:
                flat.append(flatness_finding(run, group, column))
    return {
        "Robust overfitting": overfit,
        "Flatness over training": [s for s in flat if s],
        "Flatness and robustness across runs": across_runs_finding(corr, select(df, how), how),
    }


# ---------------------------------------------------------------------------------------------
# Figures


def _save(fig, directory: Path, name: str) -> list[Path]:
    paths = []
    for fmt in ("png", "svg"):
        path = directory / f"{name}.{fmt}"
        files.atomic_write(
            path, lambda tmp, f=fmt: fig.savefig(tmp, format=f, dpi=110, bbox_inches="tight")
        )
        paths.append(path)
    return paths


def _label(df: pd.DataFrame, run: str) -> str:
    rows = df[df.run == run]
    method = rows.method.dropna()
    regs = rows.regularizers.dropna()
    extra = ", ".join(
        s for s in (method.iloc[0] if len(method) else "", regs.iloc[0] if len(regs) else "") if s
    )
    return f"{run} ({extra})" if extra and extra != run else run


def write_figures(df: pd.DataFrame, landscape: pd.DataFrame, directory: Path, how: str) -> dict:
    """The report's figures (PNG and SVG); returns {name: png path} of those drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    drawn = {}
    runs = list(dict.fromkeys(df.run))
    colors = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    curves = df.dropna(subset=["epoch"])
    panels = [
        (c, t)
        for c, t in (("robust_loss", "robust loss (nats)"), ("robust_err", "robust error"))
        if curves[f"test_{c}"].notna().any() or curves[f"train_{c}"].notna().any()
    ]
    if panels and curves.epoch.nunique() > 1:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (column, title) in zip(axes[0], panels, strict=True):
            for run, g in curves.groupby("run", sort=False):
                g = g.sort_values("epoch")
                label = _label(df, run)
                ax.plot(g.epoch, g[f"test_{column}"], color=colors[run], label=f"{label} test")
                if g[f"train_{column}"].notna().any():
                    ax.plot(g.epoch, g[f"train_{column}"], "--", color=colors[run], alpha=0.7)
                best = g[g.is_best]
                if not best.empty:
                    ax.axvline(best.epoch.iloc[0], color=colors[run], linestyle=":", alpha=0.6)
            ax.set_xlabel("epoch")
            ax.set_ylabel(title)
            ax.set_title(
                f"{title}: test (solid), train (dashed), early stopping (dotted)", fontsize=9
            )
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        drawn["curves"] = _save(fig, directory, "curves")[0]
        plt.close(fig)
    measures = [c for c in FLATNESS_COLUMNS if curves[c].notna().sum() >= 2]
    if measures:
        fig, axes = plt.subplots(1, len(measures), figsize=(5.5 * len(measures), 4), squeeze=False)
        for ax, column in zip(axes[0], measures, strict=True):
            for run, g in curves.dropna(subset=[column]).groupby("run", sort=False):
                g = g.sort_values("epoch")
                ax.plot(g.epoch, g[column], marker=".", color=colors[run], label=_label(df, run))
                std = g[f"{column}_std"] if f"{column}_std" in g else None
                if std is not None and std.notna().any():
                    ax.fill_between(
                        g.epoch.astype(float),
                        g[column] - std.fillna(0),
                        g[column] + std.fillna(0),
                        color=colors[run],
                        alpha=0.12,
                        linewidth=0,
                    )
                best = g[g.is_best]
                if not best.empty:
                    ax.plot(best.epoch, best[column], "*", color=colors[run], markersize=12)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{FLATNESS_LABELS[column]} (nats)")
            ax.set_title(f"{FLATNESS_LABELS[column]} (star: early stopping)", fontsize=9)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        drawn["flatness"] = _save(fig, directory, "flatness")[0]
        plt.close(fig)
    chosen = select(df, how)
    pairs = [c for c in SHARPNESS_COLUMNS if chosen[c].notna().any()]
    if pairs and chosen.test_robust_err.notna().any():
        fig, axes = plt.subplots(
            1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False, constrained_layout=True
        )
        for ax, column in zip(axes[0], pairs, strict=True):
            points = chosen.dropna(subset=[column, "test_robust_err"])
            for _, r in points.iterrows():
                ax.scatter(r[column], r.test_robust_err, color=colors[r.run], s=40)
                if how != "all":  # one point per run: name it
                    ax.annotate(
                        _label(df, r.run),
                        (r[column], r.test_robust_err),
                        fontsize=7,
                        xytext=(4, 3),
                        textcoords="offset points",
                    )
            ax.xaxis.set_major_locator(MaxNLocator(5))
            tau = correlation(points[column], points.test_robust_err)["kendall"]
            ax.set_xlabel(f"{FLATNESS_LABELS[column]} (nats)")
            ax.set_ylabel("test robust error")
            ax.set_title(
                f"robust error vs {FLATNESS_LABELS[column]}\n({how} epoch, n = {len(points)}, "
                f"Kendall tau {_fmt(tau, 2)})",
                fontsize=9,
            )
            ax.grid(alpha=0.3)
        drawn["scatter"] = _save(fig, directory, "scatter")[0]
        plt.close(fig)
    lines = landscape[landscape.beta.isna() & landscape.robust_loss.notna()]
    if not lines.empty:
        kinds = list(dict.fromkeys(lines.direction_kind))
        fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds, strict=True):
            reduce = "max" if kind == "adversarial" else "mean"
            for (run, ckpt), g in lines[lines.direction_kind == kind].groupby(
                ["run", "checkpoint"], sort=False
            ):
                curve = g.groupby("alpha").robust_loss.agg(reduce)
                epoch = g.epoch.iloc[0]
                tag = f"{run} epoch {epoch}" if pd.notna(epoch) else f"{run} {Path(ckpt).name}"
                ax.plot(curve.index, curve.values, color=colors.get(run, "C0"), label=tag)
            ax.set_xlabel("alpha (step along the direction)")
            ax.set_ylabel("robust loss (nats)")
            ax.set_title(f"landscape: {reduce} over {kind} directions", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        drawn["landscape"] = _save(fig, directory, "landscape")[0]
        plt.close(fig)
    return drawn


# ---------------------------------------------------------------------------------------------
# report.md and report.html


_RUN_COLUMNS = [
    ("run", "run"),
    ("method", "method"),
    ("regularizers", "regularizers"),
    ("best_epoch", "early-stop epoch"),
    ("last_epoch", "last epoch"),
    ("best_err", "test RErr (early stop)"),
    ("last_err", "test RErr (last)"),
    ("best_loss", "test RCE (early stop)"),
    ("last_loss", "test RCE (last)"),
    ("last_gap", "RCE gap (last)"),
]


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: early-stopping and last epoch side by side, flatness at both."""
    rows = []
    for run, group in df.groupby("run", sort=False):
        last = group[group.is_last].iloc[0] if group.is_last.any() else group.iloc[-1]
        best = group[group.is_best].iloc[0] if group.is_best.any() else None
        row = {
            "run": run,
            "method": last.method,
            "regularizers": last.regularizers,
            "best_epoch": None if best is None else best.epoch,
            "last_epoch": last.epoch,
            "best_err": None if best is None else best.test_robust_err,
            "last_err": last.test_robust_err,
            "best_loss": None if best is None else best.test_robust_loss,
            "last_loss": last.test_robust_loss,
            "last_gap": last.rce_gap,
        }
        for column in FLATNESS_COLUMNS:
            if df[column].notna().any():
                row[f"{column} (early stop)"] = None if best is None else best[column]
                row[f"{column} (last)"] = last[column]
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.rename(columns=dict(_RUN_COLUMNS))


def _cell(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _correlation_view(corr: pd.DataFrame, within: bool = False) -> pd.DataFrame:
    """The across-runs rows, or the within-run rows against the robust loss gap."""
    columns = ["measure", "target", "n", "kendall", "kendall_p", "spearman", "spearman_p"]
    columns += ["pearson", "pearson_p"]
    if within:
        rows = corr[(corr.scope == "within run") & (corr.target == "rce_gap")]
        view = rows[["run", *columns]]
    else:
        view = corr[corr.scope != "within run"][columns]
    return view.rename(
        columns={"kendall": "Kendall tau", "spearman": "Spearman rho", "pearson": "Pearson r"}
    )


_CAPTIONS = {
    "curves": "Robust loss and robust error per epoch (test solid, train dashed, early stopping "
    "dotted).",
    "flatness": "Flatness per epoch (band: +-1 std over the random offsets; star: early stopping).",
    "scatter": "Test robust error against flatness, one point per run (the paper's headline plot).",
    "landscape": "Robust loss along weight directions (landscape table).",
}


@dataclass
class Report:
    """What `build` computed and wrote."""

    table: pd.DataFrame  # per (run, epoch), `report` schema
    correlations: pd.DataFrame  # `correlations` schema
    runs: pd.DataFrame  # one row per run
    findings: dict[str, list[str]]
    missing: list[str]
    figures: dict[str, Path]
    written: list[Path]


def _document(report: Report, how: str, outs: Sequence[Path]) -> list[tuple[str, object]]:
    """The report as blocks (kind, content), rendered to Markdown and HTML alike."""
    blocks: list[tuple[str, object]] = [
        ("h1", "flatcli report"),
        (
            "p",
            f"Inputs: {', '.join(str(o) for o in outs)}. {report.table.run.nunique()} run(s), "
            f"{len(report.table)} checkpoint(s). Losses in nats, errors as fractions; robust "
            "error is the strongest attack's, robust loss the largest estimate (PGD).",
        ),
    ]
    if report.missing:
        blocks += [("h2", "Missing inputs"), ("ul", report.missing)]
    for title, sentences in report.findings.items():
        blocks.append(("h2", title))
        blocks.append(("ul", sentences or ["Not enough data for this finding (see above)."]))
    blocks += [("h2", "Runs"), ("table", report.runs)]
    if not report.correlations.empty:
        title = f"Correlations ({'every checkpoint' if how == 'all' else f'{how} epoch per run'})"
        blocks += [("h2", title), ("table", _correlation_view(report.correlations))]
        within = _correlation_view(report.correlations, within=True)
        if not within.empty:
            blocks += [("h2", "Correlations across the epochs of each run"), ("table", within)]
    if report.figures:
        blocks.append(("h2", "Figures"))
        for name, path in report.figures.items():
            blocks.append(("figure", (path, _CAPTIONS[name])))
    return blocks


def render_markdown(blocks, directory: Path) -> str:
    lines = []
    for kind, content in blocks:
        if kind == "h1":
            lines.append(f"# {content}\n")
        elif kind == "h2":
            lines.append(f"\n## {content}\n")
        elif kind == "p":
            lines.append(f"{content}\n")
        elif kind == "ul":
            lines += [f"- {s}" for s in content]
        elif kind == "table":
            lines.append(_markdown_table(content))
        elif kind == "figure":
            path, caption = content
            lines.append(f"![{caption}]({path.relative_to(directory).as_posix()})\n\n{caption}\n")
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    "th{background:#f3f3f3}img{max-width:100%}figcaption{font-size:13px;color:#444}"
)


def render_html(blocks) -> str:
    """A self-contained page: inline CSS, figures as base64 PNG data URIs, no external links."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>flatcli report</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body>")
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "ul":
            items = "".join(f"<li>{html.escape(s)}</li>" for s in content)
            parts.append(f"<ul>{items}</ul>")
        elif kind == "table":
            parts.append(_html_table(content))
        elif kind == "figure":
            path, caption = content
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "".join(parts)


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (None for missing), ready for `tables.to_arrow` or JSON."""
    return [{k: _plain(v) for k, v in r.items()} for r in df.astype(object).to_dict("records")]


def _plain(value):
    if _missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _missing(value) -> bool:
    """None, pd.NA or NaN: a value the tables do not have."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def build(
    outs: Sequence[Path],
    run_dirs: Sequence[Path] = (),
    how: str = "last",
    report_dir: Path | None = None,
    html_page: bool = False,
) -> Report:
    """Read, join, correlate, draw and write the report under `report_dir` (default: OUT[0])."""
    if how not in SELECTIONS:
        raise UsageError(f"--select {how!r}: choose last, best or all")
    if not outs:
        raise UsageError("give at least one OUT directory (where attack/flatness wrote tables)")
    sources = load_sources([Path(o) for o in outs], [Path(r) for r in run_dirs])
    table = per_epoch(sources)
    if table.empty:
        raise UsageError(
            f"no attack, flatness, landscape or train_log tables under {', '.join(map(str, outs))}"
            "; run `flatcli attack RUNS --out OUT` first"
        )
    directory = Path(report_dir) if report_dir is not None else Path(outs[0])
    corr = correlations(table, how)
    figures = write_figures(table, sources.landscape, directory / PLOTS, how)
    report = Report(
        table=table,
        correlations=corr,
        runs=run_table(table),
        findings=findings(table, corr, how),
        missing=sources.missing(),
        figures=figures,
        written=[],
    )
    written = [
        tables.write_table(directory, "report", records(table)),
        tables.write_table(directory, "correlations", records(corr)),
    ]
    blocks = _document(report, how, outs)
    written.append(
        files.atomic_write_text(directory / "report.md", render_markdown(blocks, directory))
    )
    if html_page:
        written.append(files.atomic_write_text(directory / "report.html", render_html(blocks)))
    figure_files = [p.with_suffix(s) for p in figures.values() for s in (".png", ".svg")]
    report.written = written + figure_files
    return report
