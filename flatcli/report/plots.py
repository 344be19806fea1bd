"""Figures shared by the report and the landscape command: matplotlib (Agg) with one style, atomic
PNG/SVG saves, run colors, and the landscape table's own figures. Sized for a page 1000 px
wide at `DPI`, so a browser shows them unscaled."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from flatcli import files, tables
from flatcli.errors import UsageError

DPI = 100
PAGE_WIDTH = 9.6  # inches: 960 px at DPI, inside the report page's 1000 px column
FORMATS = ("png", "svg")
LANDSCAPE_PLOTS = "landscape_plots"
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "flatcli",  # stable SVG ids: identical figures give identical files
}
_LOSS_LABELS = {"robust_loss": "robust loss (RCE, nats)", "clean_loss": "clean loss (CE, nats)"}


def two_column_panels(plt, n: int, single_width: float, row_height: float, extra: float = 0.0):
    """A figure of `n` panels, two per row (page width), or one panel `single_width` inches
    wide; unused cells hidden. Returns (fig, axes as a flat array)."""
    ncols = min(2, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(PAGE_WIDTH if ncols == 2 else single_width, row_height * nrows + extra),
        squeeze=False,
        constrained_layout=True,
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed) with flatcli's style applied."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def save(fig, stem: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `fig` to `stem`.<fmt> for each format, each atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(stem).with_suffix(f".{fmt}")
        files.atomic_write(
            path, lambda tmp, f=fmt: fig.savefig(tmp, format=f, dpi=DPI, bbox_inches="tight")
        )
        paths.append(path)
    return paths


def run_colors(runs: Iterable[str]) -> dict[str, str]:
    """A distinct color per run, in order of first appearance (tab10, then tab20's light half)."""
    palette = [f"C{i}" for i in range(10)]
    palette += ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2"]
    return {run: palette[i % len(palette)] for i, run in enumerate(dict.fromkeys(runs))}


def _losses(df) -> list[str]:
    return [c for c in ("robust_loss", "clean_loss") if df[c].notna().any()]


def _epoch_color(plt, epochs: list, epoch):
    """Viridis by the epoch's place among `epochs`; C0 for one epoch or none."""
    import pandas as pd

    if len(epochs) > 1 and pd.notna(epoch):
        return plt.get_cmap("viridis")(epochs.index(epoch) / (len(epochs) - 1))
    return "C0"


def _line_panel(plt, ax, group, loss: str, reduce: str, epochs: list) -> None:
    """One loss along alpha, a line per checkpoint (the `reduce` over directions) and, for a
    mean over several directions, a +-1 std band."""
    import pandas as pd

    for ckpt, curve in group.groupby("checkpoint", sort=False):
        stats = curve.groupby("alpha")[loss].agg([reduce, "std"]).sort_index()
        epoch = curve.epoch.iloc[0]
        color = _epoch_color(plt, epochs, epoch)
        label = f"epoch {int(epoch)}" if pd.notna(epoch) else Path(ckpt).name
        ax.plot(stats.index, stats[reduce], color=color, label=label)
        if reduce == "mean" and curve.direction.nunique() > 1:
            band = stats["std"].fillna(0)
            ax.fill_between(stats.index, stats[reduce] - band, stats[reduce] + band,
                            color=color, alpha=0.15, linewidth=0)


def _line_figure(plt, group, run: str, kind: str, losses: list[str]):
    """1-D: a panel per loss, a line per epoch (viridis; a color bar beyond 12 epochs)."""
    reduce = "max" if kind == "adversarial" else "mean"
    fig, axes = plt.subplots(1, len(losses), figsize=(min(PAGE_WIDTH, 4.8 * len(losses)), 3.6),
                             squeeze=False, constrained_layout=True)
    epochs = sorted(group.epoch.dropna().unique())
    n = group.direction.nunique()
    what = f"{reduce} over {n} {kind} direction{'s' if n > 1 else ''}"
    if reduce == "mean" and n > 1:
        what += " (band: +-1 std)"
    for ax, loss in zip(axes[0], losses, strict=True):
        _line_panel(plt, ax, group, loss, reduce, epochs)
        ax.set_xlabel("alpha (step along the direction)")
        ax.set_ylabel(_LOSS_LABELS[loss])
        ax.set_title(f"{run}: {what}")
        if group.checkpoint.nunique() <= 12:
            ax.legend()
    if len(epochs) > 12:
        sm = plt.cm.ScalarMappable(
            cmap=plt.get_cmap("viridis"), norm=plt.Normalize(min(epochs), max(epochs))
        )
        fig.colorbar(sm, ax=axes[0].tolist(), label="epoch")
    return fig


def _plane_figure(plt, plane, run: str, kind: str, losses: list[str]):
    """2-D, one checkpoint: a filled contour per loss over (alpha, beta), the mean (max for
    adversarial) over planes; a white cross marks the checkpoint."""
    import pandas as pd

    reduce = "max" if kind == "adversarial" else "mean"
    fig, axes = plt.subplots(1, len(losses), figsize=(min(PAGE_WIDTH, 5.2 * len(losses)), 4.2),
                             squeeze=False, constrained_layout=True)
    epoch = plane.epoch.iloc[0]
    where = f"epoch {int(epoch)}" if pd.notna(epoch) else Path(plane.checkpoint.iloc[0]).name
    for ax, loss in zip(axes[0], losses, strict=True):
        grid = plane.groupby(["beta", "alpha"])[loss].agg(reduce).unstack("alpha")
        xs, ys, zs = grid.columns.to_numpy(), grid.index.to_numpy(), grid.to_numpy()
        contour = ax.contourf(xs, ys, zs, levels=20)
        ax.contour(xs, ys, zs, levels=10, colors="k", linewidths=0.4)
        fig.colorbar(contour, ax=ax, label=_LOSS_LABELS[loss])
        ax.plot([0], [0], "w+", markersize=10, markeredgewidth=2)
        ax.set_xlabel("alpha (direction 1)")
        ax.set_ylabel("beta (direction 2)")
        ax.grid(False)
        ax.set_title(f"{run} {where}: {reduce} over {kind} planes")
    return fig


def landscape_figures(rows: Sequence[dict], out, fmt: str = "png") -> list[Path]:
    """Figures of landscape rows under OUT/landscape_plots/ (atomic writes); returns the paths:
    per (run, kind, configuration) one 1-D figure, or one 2-D figure per checkpoint. The mean
    over random/hessian directions, the max over adversarial ones."""
    if fmt == "none" or not rows:
        return []
    if fmt not in FORMATS:
        raise UsageError(f"--plot {fmt!r}: choose png, svg or none")
    from flatcli.checkpoints import safe_name

    plt = pyplot()
    df = tables.to_arrow(list(rows), "landscape").to_pandas()
    directory = Path(out) / LANDSCAPE_PLOTS
    written = []
    for (run, kind, chash), group in df.groupby(["run", "direction_kind", "config_hash"]):
        losses = _losses(group)
        if not losses:
            continue
        tag = safe_name(f"{run}__{kind}")
        if group.beta.isna().all():
            figures = [(f"{tag}__1d", _line_figure(plt, group, run, kind, losses))]
        else:  # one at a time: drawn, saved and closed before the next is drawn
            figures = (
                (f"{tag}__{safe_name(Path(c).stem)}__2d", _plane_figure(plt, p, run, kind, losses))
                for c, p in group.groupby("checkpoint", sort=False)
            )
        for stem, fig in figures:
            written += save(fig, directory / f"{stem}__{chash[:8]}", [fmt])
            plt.close(fig)
    return written
