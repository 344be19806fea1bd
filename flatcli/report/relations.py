"""The report's figures of relations: flatness against the robust generalization gap over every
checkpoint of every run (the paper's main figure, early-stopped and last epochs marked), and one
scatter per relation across runs that the text states, with a legend of runs (no labels to
collide) and 2-standard-error bars where the tables carry standard errors."""

from __future__ import annotations

import pandas as pd

from flatcli.report import plots
from flatcli.report.columns import SHARPNESS_COLUMNS, SHORT_LABELS, TARGETS
from flatcli.report.findings import fmt, fmt_p, significant
from flatcli.report.join import select

_UNITS = {
    "test_robust_err": "test robust error (%)",
    "test_robust_loss": "test robust loss (nats)",
    "rce_gap": "robust loss gap, test - train (nats)",
    "rerr_gap": "robust error gap, test - train (percentage points)",
}


def axis_label(df: pd.DataFrame, column: str) -> str:
    """A sharpness axis: its name, the radius it was measured at, and how to read it."""
    xi = df.get(f"{column}_xi")
    xi = xi.dropna() if xi is not None else pd.Series(dtype=float)
    at = f", xi = {xi.iloc[0]:g}" if len(xi) and xi.nunique() == 1 else ""
    unit = "nats; " if column.startswith(("flatness", "landscape")) else ""
    return f"{SHORT_LABELS[column]}{at}\n({unit}higher = sharper)"


def _bars(g: pd.DataFrame, column: str):
    """2 standard errors of `column` per row when the table has `column_se`, else None."""
    se = g.get(f"{column}_se")
    return 2 * se.to_numpy(dtype=float) if se is not None and se.notna().any() else None


def _legend(fig, axes) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    markers = ("early stopping", "last epoch")  # after the runs
    order = sorted(range(len(labels)), key=lambda i: labels[i] in markers)
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    if labels:
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6),
                   frameon=False)  # fmt: skip


def flatness_gap(plt, df: pd.DataFrame, colors: dict):
    """Flatness (x) against the robust loss gap (y) at every checkpoint, a line per run in
    epoch order; star: early stopping, square: the last epoch."""
    measures = [c for c in ("flatness_average", "flatness_worst")
                if df.dropna(subset=[c, "rce_gap"]).shape[0] >= 2]  # fmt: skip
    if not measures:
        return None
    fig, axes = plots.two_column_panels(plt, len(measures), 6.0, 4.0, 0.5)
    axes = list(axes)[: len(measures)]
    bars = False
    for ax, column in zip(axes, measures, strict=False):
        points = df.dropna(subset=[column, "rce_gap"]).sort_values(["run", "epoch"])
        for run, g in points.groupby("run", sort=False):
            xerr, yerr = _bars(g, column), _bars(g, "rce_gap")
            bars = bars or xerr is not None or yerr is not None
            made = ax.errorbar(g[column], g.rce_gap, xerr=xerr, yerr=yerr, color=colors[run],
                               marker=".", linewidth=0.8, elinewidth=0.6,
                               label=str(run))  # fmt: skip
            for line in made[2]:
                line.set_alpha(0.35)
            for mask, marker, size in ((g.is_best, "*", 13), (g.is_last, "s", 7)):
                picked = g[mask.fillna(False).astype(bool)]
                if not picked.empty:
                    ax.plot(picked[column], picked.rce_gap, marker, color=colors[run],
                            markersize=size, markeredgecolor="k", markeredgewidth=0.6)  # fmt: skip
        ax.plot([], [], "*", color="0.5", markeredgecolor="k", markersize=11,
                label="early stopping")  # fmt: skip
        ax.plot([], [], "s", color="0.5", markeredgecolor="k", markersize=6, label="last epoch")
        ax.set_xlabel(axis_label(df, column))
        ax.set_ylabel(_UNITS["rce_gap"])
        ax.set_title(f"{SHORT_LABELS[column]} and the robust generalization gap")
    _legend(fig, axes)
    caption = (
        "Flatness against the robust generalization gap (test minus train robust loss) at every "
        "measured checkpoint of every run, each run's epochs joined in order; star: the "
        "early-stopped epoch, square: the last epoch. The paper's claim: sharper minima go "
        "with a larger gap (points up and to the right)."
    )
    if bars:
        caption += " Bars: +-2 standard errors."
    return fig, caption


def scatter_pairs(chosen: pd.DataFrame, corr: pd.DataFrame, how: str) -> list[tuple[str, str]]:
    """Every (measure, target) the findings state: each sharpness measure against robust error
    and the gap, and every other relation found significant."""
    across = corr[corr.scope != "within run"]
    measures = [c for c in SHARPNESS_COLUMNS if c in chosen and chosen[c].notna().any()]
    pairs = [
        (m, t)
        for m in measures
        for t in ("test_robust_err", "rce_gap")
        if ((across.measure == m) & (across.target == t) & across.kendall.notna()).any()
    ]
    for r in significant(corr, how).itertuples():
        if (r.measure, r.target) not in pairs:
            pairs.append((r.measure, r.target))
    return pairs


def scatter(plt, df: pd.DataFrame, corr: pd.DataFrame, how: str, colors: dict):
    """One panel per stated relation: a point per run (or checkpoint with `all`), the runs
    named in one legend above, 2-SE bars where the tables have standard errors."""
    chosen = select(df, how)
    pairs = scatter_pairs(chosen, corr, how)
    if not pairs:
        return None
    fig, axes = plots.two_column_panels(plt, len(pairs), 5.0, 3.6, 0.5)
    axes = list(axes)[: len(pairs)]
    across = corr[corr.scope != "within run"]
    for ax, (measure, target) in zip(axes, pairs, strict=False):
        points = chosen.dropna(subset=[measure, target])
        scale = 100.0 if target.endswith("_err") else 1.0  # errors in %, as in the table
        for run, g in points.groupby("run", sort=False):
            yerr = _bars(g, target)
            yerr = None if yerr is None else scale * yerr
            ax.errorbar(g[measure], scale * g[target], xerr=_bars(g, measure), yerr=yerr,
                        fmt="o", color=colors[run], markersize=6, elinewidth=0.8, capsize=2,
                        label=str(run))  # fmt: skip
        ax.margins(0.12)
        row = across[(across.measure == measure) & (across.target == target)].iloc[0]
        stats_ = f"Kendall tau {fmt(row.kendall, 2)}, "
        if how == "all":
            stats_ += f"n = {row.n} (pooled epochs: no p)"
        else:
            stats_ += f"p = {fmt_p(row.kendall_p)} (Holm {fmt_p(row.kendall_p_holm)}), n = {row.n}"
        ax.set_title(f"{TARGETS[target]}\n{stats_}")
        ax.set_xlabel(axis_label(chosen, measure))
        ax.set_ylabel(_UNITS[target])
    _legend(fig, axes)
    at = "every checkpoint" if how == "all" else f"the {how} epoch of each run"
    caption = (
        f"Robust error and the robust generalization gap against each sharpness measure at {at}"
        ": every relation the findings state, stated or not significant. Titles: Kendall tau, "
        "its p and Holm-adjusted p, n."
    )
    return fig, caption
