"""The paper's findings as measured here, in sentences that claim only what the numbers
support: a relation across runs only at a Holm-adjusted p < ALPHA, no p-value for the epochs of
one run, "flatter" only beyond 2 standard errors, "robust overfitting" only when the last epoch's
test robust loss is above the minimum beyond noise (a one-sided z-test). `finding_records`
gives each finding as a record (`Finding`), `findings` the sentences by topic."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

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
from flatcli.uncertainty import difference_se, z_one_sided_p

ACROSS = "Flatness and robustness across runs"
OVERFITTING = "Robust overfitting"
OVER_TRAINING = "Flatness over training"
EARLY_STOPPING = "Early stopping"
TOPICS = (OVERFITTING, OVER_TRAINING, ACROSS)  # the topics `findings` writes sentences for


@dataclass(frozen=True)
class Finding:
    """One finding: its sentence and the number behind its verdict.

    value/se: the compared quantity and its SE (the rise of test robust loss, a flatness or
    robust error difference, Kendall tau with no SE); test: the test as stated; beyond_noise:
    its verdict (None: no test was possible, e.g. without standard errors); p: its p-value
    where it has one (adjusted as `test` says)."""

    topic: str  # OVERFITTING | OVER_TRAINING | ACROSS | EARLY_STOPPING
    run: str | None
    text: str
    value: float | None = None
    se: float | None = None
    test: str | None = None
    beyond_noise: bool | None = None
    measure: str | None = None  # the report column compared
    p: float | None = None

    def record(self) -> dict:
        return asdict(self)


def fmt(value, digits: int = 3) -> str:
    """`value` to `digits` significant digits; n/a when missing or not finite."""
    if is_missing(value) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def pct(value) -> str:
    """A fraction as a percentage with one decimal (0.123 -> 12.3 %); n/a when missing."""
    return "n/a" if is_missing(value) else f"{100 * value:.1f} %"


def p_is(p) -> str:
    """`= 0.03` or `< 0.001`, to follow "p " in a sentence (never "p = < 0.001")."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def fmt_p(p) -> str:
    """A p-value as read: 2 significant digits, `< 0.001` below that, never 0."""
    if is_missing(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def pm(value, se, unit: str = "") -> str:
    """`value ± se` (3 and 2 significant digits), or the value alone without an SE."""
    if is_missing(se):
        return f"{fmt(value)}{unit}"
    return f"{fmt(value)} ± {fmt(se, 2)}{unit}"


def pct_pm(value, se) -> str:
    """An error rate in % with its SE: 0.285, 0.0226 -> 28.5 ± 2.3 %."""
    if is_missing(value):
        return "n/a"
    if is_missing(se):
        return pct(value)
    return f"{100 * value:.1f} ± {100 * se:.1f} %"


def _get(row, column):
    value = row.get(column) if hasattr(row, "get") else None
    return None if is_missing(value) else value


def overfitting_test(last, low, earlier: int) -> dict:
    """Did the last epoch's test robust loss rise beyond noise above the minimum of the
    `earlier` epochs? A one-sided z-test of the difference with the SEs of both (taken as
    independent: the epochs share their test examples, which makes it conservative), with
    Bonferroni's adjustment over the earlier epochs (the minimum was picked among them)."""
    rise = last.test_robust_loss - low.test_robust_loss
    se = difference_se(_get(last, "test_robust_loss_se"), _get(low, "test_robust_loss_se"))
    if se is None or se == 0:
        return {"rise": rise, "se": se, "z": None, "p": None, "beyond": None, "test": None}
    z = rise / se
    p = min(1.0, earlier * z_one_sided_p(z))
    test = (
        f"one-sided z-test of the last epoch against the minimum, z = {z:.2f}, "
        f"Bonferroni-adjusted p {p_is(p)} over {earlier} earlier epoch"
        + ("s" if earlier > 1 else "")
    )
    return {"rise": rise, "se": se, "z": z, "p": p, "beyond": p < ALPHA, "test": test}


def overfitting_record(run: str, group: pd.DataFrame) -> Finding | None:
    """Finding 1 for one run: the path of test and train robust loss and the gap; "robust
    overfitting" only when the last epoch's test robust loss rose beyond noise above the
    minimum of the earlier epochs (`overfitting_test`)."""
    g = group.dropna(subset=["test_robust_loss"]).sort_values("epoch")
    if len(g) < 2 or g.epoch.isna().all():
        return None
    first, last = g.iloc[0], g.iloc[-1]
    low = g.loc[g.test_robust_loss.idxmin()]
    text = (
        f"Run `{run}`: test robust loss went from {fmt(first.test_robust_loss)} (epoch "
        f"{first.epoch}) to its minimum {fmt(low.test_robust_loss)} at epoch {low.epoch} "
    )
    found = {"rise": None, "se": None, "p": None, "beyond": False, "test": None}
    if low.epoch < last.epoch and last.test_robust_loss > low.test_robust_loss:
        earlier = g[g.epoch < last.epoch]
        low = earlier.loc[earlier.test_robust_loss.idxmin()]
        found = overfitting_test(last, low, len(earlier))
        rise = f"+{pm(found['rise'], found['se'])} nats"
        at_last = f"{pm(last.test_robust_loss, _get(last, 'test_robust_loss_se'))}"
        if found["beyond"] is None:
            text += (
                f"and ended at {at_last} at the last epoch {last.epoch} ({rise}); no standard "
                "errors, so no verdict on robust overfitting."
            )
        elif found["beyond"]:
            text += (
                f"and rose to {at_last} by the last epoch {last.epoch} ({rise}, "
                f"+{100 * found['rise'] / low.test_robust_loss:.1f} %): robust overfitting "
                f"({found['test']})."
            )
        else:
            text += (
                f"and ended at {at_last} at the last epoch {last.epoch} ({rise}): no rise "
                f"beyond noise ({found['test']})."
            )
    else:
        text += "and did not rise afterwards: no robust overfitting in the test robust loss."
    train = g.dropna(subset=["train_robust_loss"])
    if len(train) >= 2:
        t0, t1 = train.iloc[0], train.iloc[-1]
        text += (
            f" Train robust loss went from {fmt(t0.train_robust_loss)} to "
            f"{fmt(t1.train_robust_loss)}; the gap (test - train) from {fmt(_get(t0, 'rce_gap'))} "
            f"at epoch {t0.epoch} to {fmt(_get(t1, 'rce_gap'))} at epoch {t1.epoch}."
        )
    best = group[group.is_best] if "is_best" in group else group.iloc[:0]
    if not best.empty and not pd.isna(best.test_robust_err.iloc[0]):
        text += _early_stop_error(best.iloc[0], last)["text"]
    return Finding(
        OVERFITTING, run, text, found["rise"], found["se"], found["test"], found["beyond"],
        "test_robust_loss", found["p"],
    )


def overfitting_finding(run: str, group: pd.DataFrame) -> str | None:
    """`overfitting_record`'s sentence."""
    found = overfitting_record(run, group)
    return None if found is None else found.text


def _early_stop_error(b, last) -> dict:
    """The early-stopped epoch's test robust error against the last epoch's, in % with ±; lower
    or higher only beyond 2 standard errors of the difference (a two-sided z-test at about 5 %)."""
    b_se, l_se = _get(b, "test_robust_err_se"), _get(last, "test_robust_err_se")
    text = (
        f" Early stopping (held-out robust error) picks epoch {b.epoch}: test robust error "
        f"{pct_pm(b.test_robust_err, b_se)} there vs {pct_pm(last.test_robust_err, l_se)} at the "
        "last epoch"
    )
    diff = None if is_missing(last.test_robust_err) else b.test_robust_err - last.test_robust_err
    se = difference_se(b_se, l_se)
    beyond = None
    if diff is not None and se is not None and b.epoch != last.epoch:
        beyond = abs(diff) > 2 * se
        side = "lower" if diff < 0 else "higher"
        verdict = f"{side}, beyond 2 SE" if beyond else "no difference beyond noise"
        text += f" ({100 * diff:+.1f} ± {100 * se:.1f} points: {verdict})"
    return {"text": text + ".", "value": diff, "se": se, "beyond": beyond}


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


def flatness_record(run: str, group: pd.DataFrame, column: str) -> Finding | None:
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
    early = {"value": None, "se": None, "beyond": None, "test": None}
    if not best.empty and best.epoch.iloc[0] != last.epoch:
        early = _early_stop_sentence(best.iloc[0], last, column)
        text += early["text"]
    return Finding(
        OVER_TRAINING, run, text, early["value"], early["se"], early["test"], early["beyond"],
        column,
    )


def flatness_finding(run: str, group: pd.DataFrame, column: str) -> str | None:
    """`flatness_record`'s sentence."""
    found = flatness_record(run, group, column)
    return None if found is None else found.text


def _early_stop_sentence(b, last, column: str) -> dict:
    """The early-stopped row `b` against the last epoch's: flatter or sharper only beyond 2
    standard errors of the difference, no verdict without standard errors."""
    se = f"{column}_se"
    verdict = compare(b[column], _get(b, se), last[column], _get(last, se))
    values = f"{fmt(b[column])} vs {fmt(last[column])} at the last epoch"
    out = {"value": b[column] - last[column], "se": None, "beyond": None, "test": None}
    if verdict is None:
        out["text"] = (
            f" Early-stopped epoch {b.epoch}: {values}; no standard error for this measure, "
            "so no verdict."
        )
        return out
    out["se"] = math.hypot(b[se], last[se])
    out["test"] = "two-sided: beyond 2 standard errors of the difference"
    out["beyond"] = verdict != "no difference beyond noise"
    if not out["beyond"]:
        out["text"] = (
            f" Early-stopped epoch {b.epoch}: {values}: no difference beyond noise (2 "
            f"standard errors of the difference: {fmt(2 * out['se'], 2)})."
        )
        return out
    out["text"] = f" The early-stopped epoch {b.epoch} is {verdict} ({values}, beyond 2 SE)."
    return out


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
        f"p {p_is(r.kendall_p)}, Holm-adjusted p {p_is(adjusted)} over {int(r.tests)} tests"
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


def across_runs_records(
    corr: pd.DataFrame, chosen: pd.DataFrame, how: str, refused: str | None = None
) -> list[Finding]:
    """Finding 3: across runs, flatter minima with lower robust error / smaller gap? Stated only
    at a Holm-adjusted p < ALPHA; pooled epochs (`all`) get the coefficient only. Robust error
    and the gap are always answered; other targets only when significant."""
    if refused:
        return [Finding(ACROSS, None, f"Not compared across runs: {refused}.")]
    out = []
    scope = corr[corr.scope != "within run"]
    for measure in [m for m in SHARPNESS_COLUMNS if chosen[m].notna().any()]:
        label = FLATNESS_LABELS[measure]
        rows = scope[(scope.measure == measure) & scope.kendall.notna()]
        if rows.empty:
            at, unit = compared(how)
            out.append(Finding(ACROSS, None, (
                f"Across {unit} ({at}): {label} is not correlated with robustness: that needs "
                f"3 pairs that vary, there are {int(chosen[measure].notna().sum())}."
            ), measure=measure))  # fmt: skip
            continue
        for target in TARGETS:
            row = rows[rows.target == target]
            if row.empty:
                continue
            r = row.iloc[0]
            stated = target in ("test_robust_err", "rce_gap")
            if stated or (how != "all" and r.kendall_p_holm < ALPHA):
                tested = how != "all" and not is_missing(r.kendall_p_holm)
                beyond = bool(tested and r.kendall_p_holm < ALPHA and r.kendall != 0)
                out.append(Finding(
                    ACROSS, None, _relation(r, f"{label} and {TARGETS[target]}", target, how),
                    r.kendall, None,
                    f"Kendall tau, Holm-adjusted over {int(r.tests)} tests" if tested else None,
                    beyond if tested else None, f"{measure} ~ {target}",
                    r.kendall_p_holm if tested else None,
                ))  # fmt: skip
    return out


def across_runs_finding(
    corr: pd.DataFrame, chosen: pd.DataFrame, how: str, refused: str | None = None
) -> list[str]:
    """`across_runs_records`' sentences."""
    return [f.text for f in across_runs_records(corr, chosen, how, refused)]


def significant(corr: pd.DataFrame, how: str) -> pd.DataFrame:
    """The across-run rows whose Kendall tau the findings state as a relation."""
    if how == "all" or corr.empty:
        return corr.iloc[0:0]
    rows = corr[(corr.scope == "across runs") & corr.kendall_p_holm.notna()]
    return rows[(rows.kendall_p_holm < ALPHA) & (rows.kendall != 0)]


def run_records(df: pd.DataFrame) -> list[Finding]:
    """Findings 1 and 2 for every run, and each run's early stopping in robust error."""
    out = []
    for run, group in df.groupby("run", sort=False):
        overfit = overfitting_record(run, group)
        out += [overfit] if overfit else []
        for c in FLATNESS_COLUMNS:
            if group[c].notna().sum() >= 2:
                found = flatness_record(run, group, c)
                out += [found] if found else []
        best, last = group[group.is_best], group[group.is_last]
        if not best.empty and not last.empty and not pd.isna(best.test_robust_err.iloc[0]):
            early = _early_stop_error(best.iloc[0], last.iloc[0])
            out.append(Finding(
                EARLY_STOPPING, run, early["text"].strip(), early["value"], early["se"],
                None if early["beyond"] is None else "two-sided: beyond 2 SE of the difference",
                early["beyond"], "test_robust_err",
            ))  # fmt: skip
    return out


def finding_records(
    df: pd.DataFrame, corr: pd.DataFrame, how: str, refused: str | None = None
) -> list[Finding]:
    """Every finding as a record: per run (robust overfitting, flatness over training, early
    stopping), then across runs."""
    return run_records(df) + across_runs_records(corr, select(df, how), how, refused)


def per_run(df: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """run -> {"Robust overfitting": [...], "Flatness over training": [...]}."""
    out: dict[str, dict[str, list[str]]] = {}
    for run in df.run.drop_duplicates():
        out[run] = {OVERFITTING: [], OVER_TRAINING: []}
    for found in run_records(df):
        if found.topic in (OVERFITTING, OVER_TRAINING):
            out[found.run][found.topic].append(found.text)
    return out


def findings(
    df: pd.DataFrame, corr: pd.DataFrame, how: str, refused: str | None = None
) -> dict[str, list[str]]:
    """The paper's three findings as measured here, sentence by sentence (`finding_records`' texts
    by topic)."""
    found = finding_records(df, corr, how, refused)
    return {topic: [f.text for f in found if f.topic == topic] for topic in TOPICS}


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
        "last epoch only when they differ by more than 2 standard errors of the difference "
        "(flatness_se: over offsets and examples, or the spread over restarts for the worst "
        "case). Robust overfitting is stated only when a one-sided z-test of the last epoch's "
        "test robust loss against the minimum of the earlier epochs, with both SEs, gives a "
        f"Bonferroni-adjusted p < {ALPHA:g} (adjusted over the earlier epochs). Errors are in % "
        "with ± one standard error."
    )


def with_uncertainty(row: dict) -> dict:
    """A report row for reading: errors in % with ± their SE, losses, gaps and flatness with ±
    theirs, as strings (the machine formats keep the numbers)."""
    out = dict(row)
    for column in ("test_robust_err", "test_clean_err", "train_robust_err", "rerr_gap"):
        if column in out and not is_missing(out[column]):
            out[column] = pct_pm(out[column], out.get(f"{column}_se"))
    for column in ("test_robust_loss", "train_robust_loss", "rce_gap", *FLATNESS_COLUMNS):
        if column in out and not is_missing(out[column]):
            out[column] = pm(out[column], out.get(f"{column}_se"))
    return out
