"""The report's figures (PNG and SVG under REPORT_DIR/report_plots/): robust loss per epoch, one
panel per run; flatness against the share of training with 2-standard-error bars; flatness
against the gap over every checkpoint and one scatter per relation the text states
(report.relations); the landscape's curves at full width."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flatcli.report import plots, relations
from flatcli.report.columns import FLATNESS_COLUMNS, SHORT_LABELS

_PER_ROW = 3  # run panels per row of curves.png
_PANEL = (3.2, 2.4)  # inches per small panel


def _curve_panel(ax, g: pd.DataFrame) -> None:
    """One run's test (solid) and train (dashed) robust loss per epoch on its own y-scale, the
    test minimum circled and the early-stopped epoch dotted."""
    # Only measured epochs: a run evaluated every few epochs has train_log rows in between, and
    # a line through their NaNs would draw nothing.
    test, train = (g.dropna(subset=[f"{s}_robust_loss"]) for s in ("test", "train"))
    ax.plot(test.epoch, test.test_robust_loss, color="C0", marker=".", label="test")
    if not train.empty:
        ax.plot(train.epoch, train.train_robust_loss, "--", color="C1", label="train")
    if not test.empty:
        low = test.loc[test.test_robust_loss.idxmin()]
        ax.plot([low.epoch], [low.test_robust_loss], "o", mfc="none", mec="C3", ms=9,
                label="test minimum")  # fmt: skip
    best = g[g.is_best]
    if not best.empty:
        ax.axvline(best.epoch.iloc[0], color="0.3", linestyle=":", label="early stopping")


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
    """Robust loss per epoch, one panel per run with its own y-scale (a rise of a few percent
    stays visible), `_PER_ROW` runs per row; None with fewer than 2 epochs or no robust loss."""
    curves = df.dropna(subset=["epoch"])
    has_loss = curves.test_robust_loss.notna().any() or curves.train_robust_loss.notna().any()
    runs = list(dict.fromkeys(curves.run))
    if not has_loss or curves.epoch.nunique() < 2:
        return None
    ncols = min(_PER_ROW, len(runs))
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(min(plots.PAGE_WIDTH, _PANEL[0] * ncols), _PANEL[1] * nrows + 0.4),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    for k, (ax, run) in enumerate(zip(axes.flat, runs, strict=False)):
        _curve_panel(ax, curves[curves.run == run].sort_values("epoch"))
        ax.set_title(str(run))
        if k % ncols == 0:
            ax.set_ylabel("robust loss (nats)")
        if k >= len(runs) - ncols:
            ax.set_xlabel("epoch")
    _legend_of_all(fig, axes)
    caption = (
        "Robust loss (cross-entropy on adversarial examples, nats) per epoch, one panel per run "
        "with its own y-scale: test solid, train dashed, the test minimum circled, early "
        "stopping (lowest held-out robust error) dotted. A test curve rising after its minimum "
        "while the train curve falls is robust overfitting."
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
            share = 100 * g.epoch / curves[curves.run == run].epoch.max()
            se = g.get(f"{column}_se")
            error = 2 * se if se is not None and se.notna().any() else None
            bars = bars or error is not None
            bars_ = ax.errorbar(
                share,
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
            best = g.is_best.to_numpy()
            if best.any():
                ax.plot(share[best], g[column][best], "*", color=colors[run], markersize=12,
                        markeredgecolor="k", markeredgewidth=0.5)  # fmt: skip
        ax.set_xlabel("% of training (epoch / the run's last epoch)")
        ax.set_ylabel(relations.axis_label(curves, column))
        ax.set_title(SHORT_LABELS[column])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 6))
    caption = (
        "Flatness per epoch against the share of each run's training, so runs of different "
        "length align; higher = sharper (the robust loss rises more when the weights move by "
        "xi relative to each layer); star: early stopping."
    )
    if bars:
        caption += " Bars: +-2 standard errors over the random offsets (average case)."
    return fig, caption


def _scale_text(rows: pd.DataFrame) -> str:
    """How long the directions are, from the landscape table's `scale` column."""
    scales = sorted(rows.scale.dropna().unique()) if "scale" in rows else []
    if not scales:
        return "alpha (step along each direction)"
    norm = ", ".join(sorted(rows.normalization.dropna().astype(str).unique())) or "layer"
    shown = ", ".join(f"{v:g}" for v in scales)
    return f"alpha (direction of relative length {shown} per layer, {norm} normalization)"


def _landscape(plt, landscape: pd.DataFrame, colors: dict):
    """Robust loss along each kind of weight direction, full page width: the mean over random
    directions with a +-1 standard deviation band, the max over adversarial ones."""
    lines = landscape[landscape.beta.isna() & landscape.robust_loss.notna()]
    if lines.empty:
        return None
    kinds = list(dict.fromkeys(lines.direction_kind))
    fig, axes = plt.subplots(len(kinds), 1, figsize=(plots.PAGE_WIDTH, 3.8 * len(kinds) + 0.5),
                             squeeze=False, constrained_layout=True)  # fmt: skip
    for ax, kind in zip(axes.flat, kinds, strict=False):
        reduce = "max" if kind == "adversarial" else "mean"
        mine = lines[lines.direction_kind == kind]
        for (run, ckpt), g in mine.groupby(["run", "checkpoint"], sort=False):
            stats = g.groupby("alpha").robust_loss.agg([reduce, "std"]).sort_index()
            epoch = g.epoch.iloc[0]
            tag = f"{run}, epoch {epoch}" if pd.notna(epoch) else f"{run} {Path(ckpt).name}"
            color = colors.get(run, "C0")
            ax.plot(stats.index, stats[reduce], color=color, label=tag)
            if reduce == "mean" and g.direction.nunique() > 1:
                band = stats["std"].fillna(0)
                ax.fill_between(stats.index, stats[reduce] - band, stats[reduce] + band,
                                color=color, alpha=0.15, linewidth=0)  # fmt: skip
        ax.set_xlabel(_scale_text(mine))
        ax.set_ylabel("robust loss (nats)")
        ax.set_title(f"{reduce} over {mine.direction.nunique()} {kind} direction(s)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    caption = (
        "Robust loss along weight directions (landscape table; alpha 0 = the checkpoint): the "
        "mean over random directions with a band of +-1 standard deviation over directions, "
        "the max over adversarial ones. A flatter minimum rises less."
    )
    return fig, caption


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
        "flatness_gap": lambda: relations.flatness_gap(plt, df, colors),
        "scatter": lambda: relations.scatter(plt, df, corr, how, colors),
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
