"""`flatcli landscape`: robust and clean loss along weight directions, 1-D and 2-D."""

from __future__ import annotations

from typing import Annotated

import typer

from flatcli.cli import options as o
from flatcli.cli.runner import examples_line, run_command
from flatcli.config.commands import LandscapeConfig
from flatcli.config.fields import OUTPUT

SUMMARY = [
    "run",
    "epoch",
    "direction_kind",
    "direction",
    "alpha",
    "beta",
    "clean_loss",
    "clean_err",
    "robust_loss",
    "robust_err",
]
Kind = o.menu(LandscapeConfig, "directions")
NormalizationName = o.menu(LandscapeConfig, "normalization")
Plot = Annotated[
    str,
    typer.Option("--plot", help="Figures under OUT/landscape_plots/: png | svg | none.",
                 metavar="png|svg|none", rich_help_panel=OUTPUT),
]  # fmt: skip


@o.command(LandscapeConfig)
def landscape(config: LandscapeConfig, sweep: o.Sweep, plot: Plot = "png"):
    """Robust and clean loss along weight directions (docs/method.md's landscapes); writes
    OUT/landscape and figures in OUT/landscape_plots.

    Every grid point w + alpha d (1-D) or w + alpha d1 + beta d2 (2-D) re-runs the attack on the
    moved weights (alpha = 0 is `flatcli attack`'s robust loss). Directions are rescaled per
    layer relative to the weights (--normalization) to the length --scale. One work unit per
    (checkpoint, direction): a rerun computes only missing directions. Losses in nats, errors as
    fractions.

    Example: flatcli landscape runs/at --out out --directions random --n-directions 5 --steps 21
    --attack pgd10x2
    """
    from flatcli.errors import UsageError
    from flatcli.measures import landscape as core
    from flatcli.report import plots

    if plot not in core.PLOT_FORMATS:
        raise UsageError(f"--plot {plot!r}: choose png, svg or none")

    def write_figures(rows, progress):
        figures = plots.landscape_figures(rows, sweep.out, plot)
        if figures:
            progress.log(f"figures: {', '.join(str(p) for p in figures)}")

    run_command(
        core.TABLE,
        config,
        sweep,
        summary_columns=SUMMARY,
        describe=lambda config, refs, device, n: (
            f"{n} unit(s) of {len(refs)} checkpoint(s) x {config.n_directions} "
            f"{config.directions} direction(s), {config.dims}-D, {config.steps**config.dims} "
            f"points each over [{config.range[0]:g}, {config.range[1]:g}], scale="
            f"{core.scale_for(config):g} ({config.normalization}), {examples_line(config)}, "
            f"loss={config.loss}, attack={config.attack}, device={device}"
        ),
        progress_label="grid points",
        after=write_figures,
    )
