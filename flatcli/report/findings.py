"""The paper's findings as measured here, in sentences that claim only what the numbers
support: a relation across runs only at a Holm-adjusted p < ALPHA, no p-value for the epochs of
one run, and "flatter" only beyond 2 standard errors."""

from __future__ import annotations

import math

import pandas as pd

from flatcli.report.columns import (
    ALPHA,
    FLATNESS_COLUMNS,
    FLATNESS_LABELS,
    SHARPNESS_COLUMNS,
    TARGETS,
    is_missing,
)
from flatcli.report.join import select
from flatcli.report.stats import correlation

ACROSS = "Flatness and robustness across runs"


def fmt(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits; n/a when missing or not finite."""
    if is_missing(value) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def pct(value) -> str:
    """A fraction as a percentage with one decimal (0.123 -> 12.3 %); n/a when missing."""
    return "n/a" if is_missing(value) else f"{100 * value:.1f} %"


def fmt_p(p) -> str:
    """A p-value as read: 2 significant digits, `< 0.001` below that, never 0."""
    if is_missing(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def overfitting_finding(run: str, group: pd.DataFrame) -> str | None:
    """Finding 1 for one run: the path of test and train robust loss and the gap."""
    g = group.dropna(subset=["test_robust_loss"]).sort_values("epoch")
    if len(g) < 2 or g.epoch.isna().all():
        return None
    first, last = g.iloc[0], g.iloc[-1]
    low = g.loc[g.test_robust_loss.idxmin()]
    rise = last.test_robust_loss - low.test_robust_loss
    text = (
        f"Run `{run}`: test robust loss went from {fmt(first.test_robust_loss)} (epoch "
        f"{first.epoch}) to its minimum {fmt(low.test_robust_loss)} at epoch {low.epoch} "
    )
    if low.epoch < last.epoch and rise > 0:
        relative = rise / low.test_robust_loss
        verdict = "robust overfitting" if relative >= 0.05 else "a small rise (under 5 %)"
        text += (
            f"and rose to {fmt(last.test_robust_loss)} by the last epoch {last.epoch} "
            f"(+{fmt(rise, 2)} nats, +{100 * relative:.1f} %): {verdict}."
        )
    else:
        text += "and did not rise afterwards: no robust overfitting in the test robust loss."
    train = g.dropna(subset=["train_robust_loss"])
    if len(train) >= 2:
        t0, t1 = train.iloc[0], train.iloc[-1]
        text += (
            f" Train robust loss went from {fmt(t0.train_robust_loss)} to "
            f"{fmt(t1.train_robust_loss)}; the gap (test - train) from {fmt(t0.rce_gap)} at "
            f"epoch {t0.epoch} to {fmt(t1.rce_gap)} at epoch {t1.epoch}."
        )
    best = group[group.is_best]
    if not best.empty and not pd.isna(best.test_robust_err.iloc[0]):
        b = best.iloc[0]
        text += (
            f" Early stopping (held-out robust error) picks epoch {b.epoch}: test robust error "
            f"{pct(b.test_robust_err)} there vs {pct(last.test_robust_err)} at the last epoch."
        )
    return text


def compare(value, se, other, other_se) -> str | None:
    """ "flatter", "sharper" or "no difference beyond noise" for `value` against `other`: a
    verdict only beyond 2 standard errors of the difference; None without standard errors."""
    if any(is_missing(v) for v in (value, se, other, other_se)):
        return None
    bound = 2 * math.hypot(se, other_se)
    if value < other - bound:
        return "flatter"
    if value > other + bound:
        return "sharper"
    return "no difference beyond noise"


def flatness_finding(run: str, group: pd.DataFrame, column: str) -> str | None:
    """Finding 2 for one run and measure: flatness over epochs (coefficient only: the epochs of
    one run are not independent), and the early-stopped epoch against the last."""
    g = group.dropna(subset=[column]).sort_values("epoch")
    if len(g) < 2:
        return None
    first, last = g.iloc[0], g.iloc[-1]
    label = FLATNESS_LABELS[column]
    xi = g.get(f"{column}_xi")
    where = f" (xi = {xi.iloc[0]:g})" if xi is not None and pd.notna(xi.iloc[0]) else ""
    text = (
        f"Run `{run}`: {label}{where} went from {fmt(first[column])} at epoch {first.epoch} to "
        f"{fmt(last[column])} at epoch {last.epoch}"
    )
    trend = correlation(g.epoch.astype(float), g[column], p_values=False)
    if trend["kendall"] is not None:
        text += f" (Kendall tau with the epoch {fmt(trend['kendall'], 2)}, n = {trend['n']})"
    text += "."
    gap = correlation(g[column], g.rce_gap, p_values=False)
    if gap["kendall"] is not None:
        text += (
            f" Across its epochs, {label} and the robust loss gap have Kendall tau "
            f"{fmt(gap['kendall'], 2)} (n = {gap['n']})."
        )
    best = g[g.is_best]
    if not best.empty and best.epoch.iloc[0] != last.epoch:
        text += _early_stop_sentence(best.iloc[0], last, column)
    return text


def _early_stop_sentence(b, last, column: str) -> str:
    """The early-stopped row `b` against the last epoch's: flatter or sharper only beyond 2
    standard errors of the difference, no verdict without standard errors."""
    se = f"{column}_se"
    verdict = compare(b[column], b.get(se), last[column], last.get(se))
    values = f"{fmt(b[column])} vs {fmt(last[column])} at the last epoch"
    if verdict is None:
        return (
            f" Early-stopped epoch {b.epoch}: {values}; no standard error for this measure, "
            "so no verdict."
        )
    if verdict == "no difference beyond noise":
        bound = 2 * math.hypot(b[se], last[se])
        return (
            f" Early-stopped epoch {b.epoch}: {values}: no difference beyond noise (2 "
            f"standard errors of the difference: {fmt(bound, 2)})."
        )
    return f" The early-stopped epoch {b.epoch} is {verdict} ({values}, beyond 2 SE)."


def compared(how: str) -> tuple[str, str]:
    """(which checkpoints, what a pair is) under `--select how`."""
    if how == "all":
        return "every checkpoint pooled", "checkpoints"
    return f"the {how} epoch of each run", "runs"


def _relation(r, what: str, target: str, how: str) -> str:
    """The sentence for one across-run correlation row `r` between `what` (measure and target)."""
    at, unit = compared(how)
    if how == "all":
        return (
            f"Across {r.n} {unit} ({at}): Kendall tau between {what} is {fmt(r.kendall, 2)} "
            "(coefficient only: epochs of one run are not independent, so no p-value)."
        )
    adjusted = r.kendall_p_holm
    tested = (
        f"p = {fmt_p(r.kendall_p)}, Holm-adjusted p = {fmt_p(adjusted)} over {int(r.tests)} tests"
    )
    if is_missing(adjusted) or adjusted >= ALPHA or r.kendall == 0:
        return (
            f"Across {r.n} {unit} ({at}): no evidence of a relation between {what} "
            f"(Kendall tau {fmt(r.kendall, 2)}, {tested}, n = {r.n})."
        )
    noun = {"test_robust_err": "robust error", "rce_gap": "gap"}.get(target, TARGETS[target])
    side = "lower" if r.kendall > 0 else "higher"  # flatness: higher = sharper
    return (
        f"Across {r.n} {unit} ({at}): Kendall tau between {what} is "
        f"{fmt(r.kendall, 2)} ({tested}; Spearman {fmt(r.spearman, 2)}, Pearson "
        f"{fmt(r.pearson, 2)}): flatter runs had a {side} {noun}."
    )


def across_runs_finding(
    corr: pd.DataFrame, chosen: pd.DataFrame, how: str, refused: str | None = None
) -> list[str]:
    """Finding 3: across runs, flatter minima with lower robust error / smaller gap? Stated only
    at a Holm-adjusted p < ALPHA; pooled epochs (`all`) get the coefficient only. Robust error
    and the gap are always answered; other targets only when significant."""
    if refused:
        return [f"Not compared across runs: {refused}."]
    out = []
    scope = corr[corr.scope != "within run"]
    for measure in [m for m in SHARPNESS_COLUMNS if chosen[m].notna().any()]:
        label = FLATNESS_LABELS[measure]
        rows = scope[(scope.measure == measure) & scope.kendall.notna()]
        if rows.empty:
            at, unit = compared(how)
            out.append(
                f"Across {unit} ({at}): {label} is not correlated with robustness: that needs "
                f"3 pairs that vary, there are {int(chosen[measure].notna().sum())}."
            )
            continue
        for target in TARGETS:
            row = rows[rows.target == target]
            if row.empty:
                continue
            r = row.iloc[0]
            stated = target in ("test_robust_err", "rce_gap")
            if stated or (how != "all" and r.kendall_p_holm < ALPHA):
                out.append(_relation(r, f"{label} and {TARGETS[target]}", target, how))
    return out


def significant(corr: pd.DataFrame, how: str) -> pd.DataFrame:
    """The across-run rows whose Kendall tau the findings state as a relation."""
    if how == "all" or corr.empty:
        return corr.iloc[0:0]
    rows = corr[(corr.scope == "across runs") & corr.kendall_p_holm.notna()]
    return rows[(rows.kendall_p_holm < ALPHA) & (rows.kendall != 0)]


def per_run(df: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """run -> {"Robust overfitting": [...], "Flatness over training": [...]}."""
    out = {}
    for run, group in df.groupby("run", sort=False):
        overfit = overfitting_finding(run, group)
        flat = [
            flatness_finding(run, group, c) for c in FLATNESS_COLUMNS if group[c].notna().sum() >= 2
        ]
        out[run] = {
            "Robust overfitting": [overfit] if overfit else [],
            "Flatness over training": [s for s in flat if s],
        }
    return out


def findings(
    df: pd.DataFrame, corr: pd.DataFrame, how: str, refused: str | None = None
) -> dict[str, list[str]]:
    """The paper's three findings as measured here, sentence by sentence."""
    runs = per_run(df)
    return {
        "Robust overfitting": [s for r in runs.values() for s in r["Robust overfitting"]],
        "Flatness over training": [s for r in runs.values() for s in r["Flatness over training"]],
        ACROSS: across_runs_finding(corr, select(df, how), how, refused),
    }


def statistics_note(corr: pd.DataFrame, how: str) -> str:
    """What the report's tests are, stated once."""
    tests = corr[corr.scope == "across runs"].tests.dropna()
    family = f"the {int(tests.iloc[0])} measure-target pairs tested" if len(tests) else "the pairs"
    pooled = " With --select all the epochs are pooled: coefficients only." if how == "all" else ""
    return (
        "Statistics: two-sided p-values (scipy.stats) across runs, one checkpoint per run; a "
        f"relation is stated only when its Holm-adjusted p < {ALPHA:g}, adjusting over {family} "
        "(each coefficient separately). The epochs of one run, and epochs pooled over runs, are "
        "not independent samples (each epoch starts from the last), so they get coefficients "
        "without p-values." + pooled + " Early stopping is called flatter or sharper than the "
        "last epoch only when they differ by more than 2 standard errors (flatness_std / "
        "sqrt(samples))."
    )
