"""The page's first screen: a title naming the study, two or three sentences of findings (each
with its number, its uncertainty where the tables carry one, and its test, "no finding" said as
plainly), and one table row per run (errors in %, +- one standard error where an `X_se` column
sits next to `X`, width and parameter count, sorted by robust error)."""

from __future__ import annotations

import math

import pandas as pd

from flatcli.report.columns import (
    ALPHA,
    FLATNESS_LABELS,
    SHARPNESS_COLUMNS,
    TARGETS,
    is_missing,
)
from flatcli.report.findings import compare, compared, fmt, overfitting_record, p_is
from flatcli.report.join import select
from flatcli.report.stats import correlation

PM = "±"


def _se(row, column: str):
    """The standard error of `column` in `row` when the table has one (`column_se`)."""
    value = row.get(f"{column}_se") if hasattr(row, "get") else None
    return None if is_missing(value) else float(value)


def number(row, column: str, digits: int = 3, scale: float = 1.0) -> str:
    """`row[column]` with `digits` decimals, `+- se` when the table carries `column_se`."""
    value = row.get(column) if hasattr(row, "get") else None
    if is_missing(value) or not math.isfinite(float(value)):
        return ""
    text = f"{scale * float(value):.{digits}f}"
    se = _se(row, column)
    return text if se is None else f"{text} {PM} {scale * se:.{digits}f}"


def percent(row, column: str) -> str:
    """An error (a fraction) in % with one decimal, +- its standard error when known."""
    return number(row, column, 1, 100.0)


def _params(n) -> str:
    if is_missing(n):
        return ""
    n = int(n)
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1000 else str(n)


def title(df: pd.DataFrame) -> str:
    """What was studied: runs, architecture, data and threat model."""
    runs = df.run.nunique()
    arch = ", ".join(sorted(df.arch.dropna().astype(str).unique())) or "unknown architecture"
    data = ", ".join(sorted(df.dataset.dropna().astype(str).unique())) or "unknown data"
    eps = sorted(df.eps.dropna().unique())
    norm = ", ".join(sorted(df.norm.dropna().astype(str).unique()))
    threat = f" ({norm} eps {', '.join(f'{e:.4g}' for e in eps)})" if eps else ""
    return (
        f"Robust overfitting and flatness: {runs} run{'s' if runs != 1 else ''} of {arch} "
        f"on {data}{threat}"
    )


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run, sorted by test robust error at the last epoch (most robust first):
    size, early stopping, errors in %, losses, the gap and flatness at the last epoch."""
    rows = []
    for run, group in df.groupby("run", sort=False):
        group = group.sort_values("epoch")
        last = group[group.is_last].iloc[0] if group.is_last.any() else group.iloc[-1]
        best = group[group.is_best].iloc[0] if group.is_best.any() else None
        row = {
            "run": run,
            "method": last.get("method") or "",
            "regularizers": last.get("regularizers") or "",
            "width": "" if is_missing(last.get("width")) else str(int(last.width)),
            "params": _params(last.get("n_params")),
            "epochs": "" if is_missing(last.epoch) else str(int(last.epoch)),
            "early stop": "" if best is None else str(int(best.epoch)),
            "test RErr % (early stop)": "" if best is None else percent(best, "test_robust_err"),
            "test RErr % (last)": percent(last, "test_robust_err"),
            "test RCE (last)": number(last, "test_robust_loss"),
            "RCE gap (last)": number(last, "rce_gap"),
            "_sort": last.get("test_robust_err"),
        }
        for column, label in (("flatness_average", "avg"), ("flatness_worst", "worst")):
            if column in df and df[column].notna().any():
                row[f"{label} flatness (last)"] = number(last, column)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("_sort", na_position="last", kind="stable").drop(columns="_sort")
    empty = [c for c in table.columns if c != "run" and (table[c] == "").all()]
    return table.drop(columns=empty).reset_index(drop=True)


TABLE_NOTE = (
    "Sorted by test robust error at the last epoch. RErr: robust error in %, the strongest "
    "attack's; RCE: robust loss in nats, the largest estimate (PGD); gap: test minus train "
    "robust loss; early stop: the epoch with the lowest held-out robust error; flatness: how "
    f"much the robust loss rises when the weights move (nats, higher = sharper). {PM}: one "
    "standard error, where the tables carry one."
)


def _rises(df: pd.DataFrame) -> dict:
    """run -> (min row, last row, relative rise, its Finding record) of the test robust loss."""
    out = {}
    for run, group in df.groupby("run", sort=False):
        g = group.dropna(subset=["test_robust_loss"]).sort_values("epoch")
        record = overfitting_record(run, group)
        if len(g) < 2 or record is None:
            continue
        low, last = g.loc[g.test_robust_loss.idxmin()], g.iloc[-1]
        rel = (last.test_robust_loss - low.test_robust_loss) / low.test_robust_loss
        out[run] = (low, last, rel, record)
    return out


def overfitting_sentence(df: pd.DataFrame) -> str | None:
    """Robust overfitting (the test robust loss rising after its minimum beyond noise) in which
    runs, each with its test."""
    rises = _rises(df)
    if not rises:
        return None
    found = [run for run, (*_, record) in rises.items() if record.beyond_noise]
    if not found:
        run, (low, last, rel, record) = max(rises.items(), key=lambda kv: kv[1][2])
        untested = all(r.beyond_noise is None for *_, r in rises.values())
        why = ("no standard errors of the robust loss, so no test" if untested else
               "a one-sided z-test of the last epoch against the minimum, Bonferroni over the "
               "earlier epochs")
        if rel <= 0:
            return (
                f"No robust overfitting: in each of the {len(rises)} runs the test robust loss "
                "was lowest at the last epoch."
            )
        largest = f"largest rise: `{run}`, {100 * rel:+.1f} %"
        return (
            f"No robust overfitting beyond noise: in none of the {len(rises)} runs did the last "
            f"epoch's test robust loss lie above the minimum beyond noise ({why}; {largest})."
        )
    parts = []
    for run in found[:3]:
        low, last, rel, record = rises[run]
        text = (
            f"`{run}`'s test robust loss rose from its minimum {number(low, 'test_robust_loss')} "
            f"at epoch {int(low.epoch)} to {number(last, 'test_robust_loss')} at epoch "
            f"{int(last.epoch)} ({100 * rel:+.1f} %)"
        )
        group = df[df.run == run].dropna(subset=["train_robust_loss"]).sort_values("epoch")
        if len(group) >= 2 and group.train_robust_loss.iloc[-1] < group.train_robust_loss.iloc[0]:
            text += (
                f" while its train robust loss fell ({fmt(group.train_robust_loss.iloc[0])} to "
                f"{fmt(group.train_robust_loss.iloc[-1])})"
            )
        parts.append(f"{text} ({record.test})")
    others = len(rises) - len(found)
    rest = f" The other {others} run(s) show no rise beyond noise." if others else ""
    lead = f"Robust overfitting in {len(found)} of {len(rises)} runs: "
    return lead + "; ".join(parts) + "." + rest


def flatness_sentence(df: pd.DataFrame) -> str | None:
    """Average-case flatness over training and at early stopping vs the last epoch."""
    column = "flatness_average" if df.flatness_average.notna().sum() >= 2 else "flatness_worst"
    runs = [(run, g.dropna(subset=[column]).sort_values("epoch"))
            for run, g in df.groupby("run", sort=False)]  # fmt: skip
    runs = [(run, g) for run, g in runs if len(g) >= 2]
    if not runs:
        return None
    taus = [
        correlation(g.epoch.astype(float), g[column], p_values=False)["kendall"] for _, g in runs
    ]
    taus = [t for t in taus if t is not None]
    xi = df[f"{column}_xi"].dropna()
    where = ""
    if len(xi):
        where = f" at radius xi = {xi.iloc[0]:g} (relative to each layer's weight norm)"
    label = FLATNESS_LABELS[column]
    text = f"{label.capitalize()}{where}"
    if taus:
        grew = sum(t > 0 for t in taus)
        spread = f"{min(taus):.2f}" + (f" to {max(taus):.2f}" if max(taus) > min(taus) else "")
        text += (
            f" grew with the epoch in {grew} of {len(taus)} runs (Kendall tau {spread}; "
            "coefficients only: the epochs of a run are not independent)"
        )
    verdicts = []
    for _, g in runs:
        best, last = g[g.is_best], g.iloc[-1]
        if best.empty or best.epoch.iloc[0] == last.epoch:
            continue
        b = best.iloc[0]
        verdicts.append(compare(b[column], _se(b, column), last[column], _se(last, column)))
    if verdicts and all(v is not None for v in verdicts):
        flatter = sum(v == "flatter" for v in verdicts)
        text += (
            f"; the early-stopped epoch was flatter than the last beyond 2 standard errors in "
            f"{flatter} of {len(verdicts)} runs"
        )
    elif verdicts:
        text += "; no standard error, so early stopping is not compared"
    return text + "."


def across_sentence(df: pd.DataFrame, corr: pd.DataFrame, how: str, refused: str | None):
    """The strongest relation between sharpness and robust error or the gap across runs, with
    its test (Holm-adjusted), or that none survives; and whether model sizes differ."""
    if refused:
        return f"Not compared across runs: {refused}."
    rows = corr[(corr.scope != "within run") & corr.kendall.notna()]
    primary = rows.target.isin(["test_robust_err", "rce_gap"])
    rows = rows[rows.measure.isin(SHARPNESS_COLUMNS) & primary]
    at, unit = compared(how)
    n = select(df, how).run.nunique() if how != "all" else len(df)
    if rows.empty:
        return (
            f"Across {unit} ({at}): flatness is not correlated with robust error or the gap: "
            f"that needs 3 {unit} with both measured, and fewer have them."
        )
    what = lambda r: f"{FLATNESS_LABELS[r.measure]} and the {TARGETS[r.target]}"  # noqa: E731
    if how == "all":
        r = rows.loc[rows.kendall.abs().idxmax()]
        text = (
            f"Across all {r.n} checkpoints pooled, the largest Kendall tau is {fmt(r.kendall, 2)} "
            f"between {what(r)} (coefficient only: pooled epochs are not independent)."
        )
    else:
        holm = rows.kendall_p_holm.astype(float)
        hits = rows[(holm < ALPHA) & (rows.kendall != 0)]
        tests = int(rows.tests.dropna().iloc[0]) if rows.tests.notna().any() else len(rows)
        if not hits.empty:
            r = hits.loc[hits.kendall_p_holm.astype(float).idxmin()]
            side = "lower" if r.kendall > 0 else "higher"
            text = (
                f"Across the {n} {unit} ({at}), flatter runs had a {side} "
                f"{'robust error' if r.target == 'test_robust_err' else 'gap'}: Kendall tau "
                f"{fmt(r.kendall, 2)} between {what(r)} (p {p_is(r.kendall_p)}, "
                f"Holm-adjusted p {p_is(r.kendall_p_holm)} over {tests} tests)."
            )
        else:
            r = rows.loc[rows.kendall_p.astype(float).idxmin()]
            text = (
                f"Across the {n} {unit} ({at}), no relation between flatness and robust error or "
                f"the gap survives Holm's correction over {tests} tests (strongest: {what(r)}, "
                f"Kendall tau {fmt(r.kendall, 2)}, p {p_is(r.kendall_p)}, Holm-adjusted p "
                f"{p_is(r.kendall_p_holm)})."
            )
    sizes = df.drop_duplicates("run").n_params.dropna()
    if len(sizes) > 1 and sizes.nunique() > 1:
        text += (
            f" The runs' models differ in size ({_params(sizes.min())} to "
            f"{_params(sizes.max())} parameters), which these correlations do not separate "
            "from the training method."
        )
    return text


def sentences(df: pd.DataFrame, corr: pd.DataFrame, how: str, refused: str | None = None):
    """The first screen's findings, two or three sentences."""
    out = [overfitting_sentence(df), flatness_sentence(df)]
    out.append(across_sentence(df, corr, how, refused))
    return [s for s in out if s]

