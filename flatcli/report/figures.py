"""The report's figures (PNG and SVG under REPORT_DIR/report_plots/): training curves as one
panel per run, flatness per epoch with 2-standard-error bars, one scatter per relation the text
states (with tau, p and n in its title), and the landscape's curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flatcli import plots
from flatcli.report.columns import FLATNESS_COLUMNS, SHORT_LABELS, TARGETS
from flatcli.report.findings import fmt, fmt_p, significant
from flatcli.report.join import select

_PER_ROW = 3  # run panels per row of curves.png
_PANEL = (3.2, 2.4)  # inches per small panel


def _axis_label(df: pd.DataFrame, column: str) -> str:
    """A sharpness axis: its name, the radius it was measured at, and how to read it."""
    xi = df.get(f"{column}_xi")
    xi = xi.dropna() if xi is not None else pd.Series(dtype=float)
    at = f", xi = {xi.iloc[0]:g}" if len(xi) and xi.nunique() == 1 else ""
    unit = "nats; " if column.startswith(("flatness", "landscape")) else ""
    return f"{SHORT_LABELS[column]}{at}\n({unit}higher = sharper)"


def _curve_panel(ax, g: pd.DataFrame, column: str) -> None:
    """One run's test (solid) and train (dashed) `column` per epoch, early stopping dotted."""
    # Only measured epochs: a run evaluated every few epochs has train_log rows in between, and
    # a line through their NaNs would draw nothing.
    test, train = (g.dropna(subset=[f"{s}_{column}"]) for s in ("test", "train"))
    ax.plot(test.epoch, test[f"test_{column}"], color="C0", label="test")
    if not train.empty:
        ax.plot(train.epoch, train[f"train_{column}"], "--", color="C1", label="train")
    best = g[g.is_best]
    if not best.empty:
        ax.axvline(best.epoch.iloc[0], color="0.4", linestyle=":", label="early stopping")


def _legend_of_all(fig, axes) -> None:
    """One legend above the figure with every label any panel has, once."""
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)


def _curves(plt, df: pd.DataFrame):
    """Robust loss and error per epoch: a row of run panels per metric (same y range in a row),
    `_PER_ROW` runs per row; None with fewer than 2 epochs or no metric."""
    curves = df.dropna(subset=["epoch"])
    metrics = [
        (c, t)
        for c, t in (("robust_loss", "robust loss (nats)"), ("robust_err", "robust error"))
        if curves[f"test_{c}"].notna().any() or curves[f"train_{c}"].notna().any()
    ]
    runs = list(dict.fromkeys(curves.run))
    if not metrics or curves.epoch.nunique() < 2:
        return None
    ncols = min(_PER_ROW, len(runs))
    chunks = [runs[i : i + ncols] for i in range(0, len(runs), ncols)]
    nrows = len(chunks) * len(metrics)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(min(plots.PAGE_WIDTH, _PANEL[0] * ncols), _PANEL[1] * nrows + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    for m, (column, title) in enumerate(metrics):
        values = curves[[f"test_{column}", f"train_{column}"]].stack()
        low, high = values.min(), values.max()
        pad = 0.05 * (high - low or 1)
        for k, chunk in enumerate(chunks):
            row = axes[k * len(metrics) + m]
            for ax in row[len(chunk) :]:
                ax.set_visible(False)
            for ax, run in zip(row, chunk, strict=False):
                _curve_panel(ax, curves[curves.run == run].sort_values("epoch"), column)
                ax.set_ylim(low - pad, high + pad)
                ax.set_title(str(run))
                ax.set_xlabel("epoch")
            row[0].set_ylabel(title)
    _legend_of_all(fig, axes)
    caption = (
        f"{' and '.join(t.split(' (')[0] for _, t in metrics).capitalize()} per epoch, one panel "
        "per run (same scale in each row): test solid, train dashed, early stopping dotted."
    )
    return fig, caption


def _flatness(plt, df: pd.DataFrame, colors: dict):
    curves = df.dropna(subset=["epoch"])
    measures = [c for c in FLATNESS_COLUMNS if curves[c].notna().sum() >= 2]
    if not measures:
        return None
    fig, axes = plots.two_column_panels(plt, len(measures), 6.0, 3.4, 0.4)
    bars = False
    for ax, column in zip(axes, measures, strict=False):
        for run, g in curves.dropna(subset=[column]).groupby("run", sort=False):
            g = g.sort_values("epoch")
            se = g.get(f"{column}_se")
            error = 2 * se if se is not None and se.notna().any() else None
            bars = bars or error is not None
            bars_ = ax.errorbar(
                g.epoch,
                g[column],
                yerr=error,
                marker=".",
                color=colors[run],
                label=str(run),
                elinewidth=0.8,
                capsize=2,
            )
            for line in bars_[2]:  # light bars: overlapping runs stay readable
                line.set_alpha(0.4)
            best = g[g.is_best]
            if not best.empty:
                ax.plot(best.epoch, best[column], "*", color=colors[run], markersize=12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(_axis_label(curves, column))
        ax.set_title(SHORT_LABELS[column])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6))
    caption = "Flatness per epoch, higher = sharper; star: early stopping."
    if bars:
        caption += " Bars: +-2 standard errors over the random offsets (average case)."
    return fig, caption


def _scatter_pairs(chosen: pd.DataFrame, corr: pd.DataFrame, how: str) -> list[tuple[str, str]]:
    """Flatness (average, worst) against robust error and the gap, and every relation the
    findings state as significant."""
    across = corr[corr.scope != "within run"]
    primary = [c for c in ("flatness_average", "flatness_worst") if chosen[c].notna().any()]
    pairs = [
        (m, t)
        for m in primary
        for t in ("test_robust_err", "rce_gap")
        if ((across.measure == m) & (across.target == t) & across.kendall.notna()).any()
    ]
    for r in significant(corr, how).itertuples():
        if (r.measure, r.target) not in pairs:
            pairs.append((r.measure, r.target))
    return pairs


def _scatter(plt, df: pd.DataFrame, corr: pd.DataFrame, how: str, colors: dict):
    chosen = select(df, how)
    pairs = _scatter_pairs(chosen, corr, how)
    if not pairs:
        return None
    fig, axes = plots.two_column_panels(plt, len(pairs), 5.0, 3.6)
    across = corr[corr.scope != "within run"]
    for ax, (measure, target) in zip(axes, pairs, strict=False):
        points = chosen.dropna(subset=[measure, target])
        for run, g in points.groupby("run", sort=False):
            ax.scatter(g[measure], g[target], color=colors[run], s=36, label=str(run))
        if how != "all":  # one point per run: name it, inside the axes
            span = points[measure].max() - points[measure].min()
            for r in points.itertuples():
                right = span > 0 and r._asdict()[measure] > points[measure].min() + 0.6 * span
                ax.annotate(
                    str(r.run),
                    (getattr(r, measure), getattr(r, target)),
                    xytext=(-5 if right else 5, 4),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    fontsize=9,
                    annotation_clip=True,
                )
        ax.margins(0.12)
        row = across[(across.measure == measure) & (across.target == target)].iloc[0]
        stats_ = f"Kendall tau {fmt(row.kendall, 2)}, "
        if how == "all":
            stats_ += f"n = {row.n} (pooled epochs: no p)"
        else:
            stats_ += f"p = {fmt_p(row.kendall_p)} (Holm {fmt_p(row.kendall_p_holm)}), n = {row.n}"
        ax.set_title(f"{TARGETS[target]}\n{stats_}")
        ax.set_xlabel(_axis_label(chosen, measure))
        ax.set_ylabel(TARGETS[target])
    if how == "all":
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6))
    at = "every checkpoint" if how == "all" else f"the {how} epoch of each run"
    caption = (
        f"Robust error and the robust generalization gap against flatness at {at}; every "
        "relation the findings state is drawn. Titles: Kendall tau, its p and Holm-adjusted p, n."
    )
    return fig, caption


def _landscape(plt, landscape: pd.DataFrame, colors: dict):
    lines = landscape[landscape.beta.isna() & landscape.robust_loss.notna()]
    if lines.empty:
        return None
    kinds = list(dict.fromkeys(lines.direction_kind))
    fig, axes = plots.two_column_panels(plt, len(kinds), 5.5, 3.6)
    for ax, kind in zip(axes, kinds, strict=False):
        reduce = "max" if kind == "adversarial" else "mean"
        mine = lines[lines.direction_kind == kind]
        for (run, ckpt), g in mine.groupby(["run", "checkpoint"], sort=False):
            curve = g.groupby("alpha").robust_loss.agg(reduce)
            epoch = g.epoch.iloc[0]
            tag = f"{run} epoch {epoch}" if pd.notna(epoch) else f"{run} {Path(ckpt).name}"
            ax.plot(curve.index, curve.values, color=colors.get(run, "C0"), label=tag)
        ax.set_xlabel("alpha (step along the direction)")
        ax.set_ylabel("robust loss (nats)")
        ax.set_title(f"{reduce} over {mine.direction.nunique()} {kind} direction(s)")
        ax.legend()
    return fig, "Robust loss along weight directions (landscape table; alpha 0 = checkpoint)."


def write_figures(
    df: pd.DataFrame, landscape: pd.DataFrame, directory: Path, how: str, corr: pd.DataFrame
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw and write the figures; returns ({name: png path}, {name: caption}) of those drawn."""
    plt = plots.pyplot()
    colors = plots.run_colors(df.run)
    drawn: dict[str, Path] = {}
    captions: dict[str, str] = {}
    makers = {
        "curves": lambda: _curves(plt, df),
        "flatness": lambda: _flatness(plt, df, colors),
        "scatter": lambda: _scatter(plt, df, corr, how, colors),
        "landscape": lambda: _landscape(plt, landscape, colors),
    }
    for name, make in makers.items():
        made = make()
        if made is None:
            continue
        fig, captions[name] = made
        drawn[name] = plots.save(fig, directory / name)[0]
        plt.close(fig)
    return drawn, captions
