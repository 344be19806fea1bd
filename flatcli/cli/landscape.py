"""`flatcli landscape`: robust and clean loss along weight directions, 1-D and 2-D."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flatcli.cli import options as o
from flatcli.cli.runner import run_command

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

Directions = Annotated[
    str,
    typer.Option(
        help="random | adversarial (worst-case ascent) | hessian (top eigenvectors of the robust "
        "loss) | interpolate (straight line to --to)."
    ),
]
Dims = Annotated[int, typer.Option(help="1: a line per direction; 2: a steps x steps plane.")]
Steps = Annotated[int, typer.Option(help="Grid points per axis (>= 2).")]
Range = Annotated[
    str | None,
    typer.Option(
        "--range",
        help="MIN,MAX of alpha (and beta). Default: -1,1; 0,1 for interpolate.",
        show_default=False,
    ),
]
NDirections = Annotated[
    int | None,
    typer.Option(
        "--n-directions",
        help="Directions (planes in 2-D), one work unit each. Default: 10 in 1-D, 1 in 2-D.",
        show_default=False,
    ),
]
Normalization = Annotated[
    str,
    typer.Option(
        help="filter | layer | none: each filter / layer of d scaled to the weights' norm "
        "(normalization layers excluded), or d as a whole."
    ),
]
Scale = Annotated[
    str | None,
    typer.Option(
        help="Relative length of the directions. Default: 0.5 random, 0.025 adversarial, "
        "1 hessian (PAPER.md).",
        show_default=False,
    ),
]
Loss = Annotated[
    str,
    typer.Option(help="robust (re-runs --attack at every point; clean comes free) | clean | both."),
]
Attack = Annotated[
    str, typer.Option(help="Attack behind the robust loss: a pgd preset, pgd<S>x<R>, or apgd-ce.")
]
To = Annotated[
    Path | None,
    typer.Option("--to", help="interpolate: the checkpoint at alpha = 1.", show_default=False),
]
Iterations = Annotated[
    int, typer.Option(help="Ascent steps (adversarial); subspace-iteration steps (hessian).")
]
WeightLr = Annotated[
    float,
    typer.Option("--weight-lr", help="adversarial: normalized weight step, relative to ||w_l||."),
]
PointBatch = Annotated[
    int,
    typer.Option(
        help="Grid points evaluated in one stacked pass (torch.func.vmap; same results up to "
        "float rounding). Needs an attack that attacks every example (pgd*, apgd-ce). "
        "On CPU 1 is fastest (benchmarks/landscape_speed.py).",
    ),
]
Plot = Annotated[
    str, typer.Option("--plot", help="Figures under OUT/landscape_plots/: png | svg | none.")
]
NExamples = Annotated[int, typer.Option(help="First N examples of the split (PAPER.md: 128).")]


def _range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    from flatcli.errors import UsageError

    parts = o.csv_list(text)
    if len(parts) != 2:
        raise UsageError(f"--range {text!r}: expected MIN,MAX (e.g. -1,1)")
    lo, hi = (o.parse_eps(p, "--range") for p in parts)
    return lo, hi


def landscape(
    paths: o.Paths,
    out: o.Out,
    directions: Directions = "random",
    dims: Dims = 1,
    steps: Steps = 51,
    span: Range = None,
    n_directions: NDirections = None,
    normalization: Normalization = "filter",
    scale: Scale = None,
    loss: Loss = "both",
    attack: Attack = "pgd20x10",
    to: To = None,
    iterations: Iterations = 20,
    weight_lr: WeightLr = 0.01,
    point_batch: PointBatch = 1,
    plot: Plot = "png",
    dataset: o.Dataset = None,
    split: o.SplitOpt = o.Split.test,
    n_examples: NExamples = 128,
    eps: o.Eps = None,
    norm: o.NormOpt = o.Norm.linf,
    step_size: o.StepSize = None,
    seed: o.Seed = 0,
    arch: o.Arch = None,
    normalize: o.Normalize = None,
    data_dir: o.DataDir = None,
    device: o.Device = "auto",
    batch_size: o.BatchSize = 512,
    fmt: o.FormatOpt = o.Format.table,
    quiet: o.Quiet = False,
    force: o.Force = False,
    dry_run: o.DryRun = False,
    shard: o.ShardOpt = None,
):
    """Robust and clean loss along weight directions (PAPER.md's landscapes); writes
    OUT/landscape and figures in OUT/landscape_plots.

    Every grid point w + alpha d (1-D) or w + alpha d1 + beta d2 (2-D) re-runs the attack on the
    moved weights (alpha = 0 is `flatcli attack`'s robust loss). Directions are normalized per
    filter or layer to the weights' norm and rescaled to --scale. One work unit per (checkpoint,
    direction): a rerun computes only missing directions. Losses in nats, errors as fractions.

    Example: flatcli landscape runs/at --out out --directions random --n-directions 5 --steps 21
    --attack pgd10x2
    """
    from flatcli import checkpoints, plots
    from flatcli import landscape as core
    from flatcli.config import LandscapeConfig
    from flatcli.errors import UsageError

    if plot not in core.PLOT_FORMATS:
        raise UsageError(f"--plot {plot!r}: choose png, svg or none")
    config = LandscapeConfig(
        dataset=dataset,
        split=split.value,
        n_examples=n_examples,
        eps=o.parse_eps(eps),
        norm=norm.value,
        directions=directions,
        dims=dims,
        steps=steps,
        range=_range(span),
        n_directions=n_directions,
        normalization=normalization,
        scale=o.parse_eps(scale, "--scale"),
        loss=loss,
        attack=attack,
        to=None if to is None else str(to),
        iterations=iterations,
        weight_lr=weight_lr,
        step_size=o.parse_eps(step_size, "--step-size"),
        seed=seed,
        arch=arch,
        normalize=normalize,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        batch_size=batch_size,
        point_batch=point_batch,
    )
    refs = checkpoints.discover(paths)
    config = core.resolve_landscape_config(config, refs)

    def write_figures(rows, progress):
        figures = plots.landscape_figures(rows, out, plot)
        if figures:
            progress.log(f"figures: {', '.join(str(p) for p in figures)}")

    run_command(
        table=core.TABLE,
        units=core.units(refs, config.n_directions),
        config=config,
        out=out,
        shard=shard,
        force=force,
        dry_run=dry_run,
        fmt=fmt,
        quiet=quiet,
        summary_columns=SUMMARY,
        describe=lambda device, n: (
            f"{n} unit(s) of {len(refs)} checkpoint(s) x {config.n_directions} "
            f"{config.directions} direction(s), {config.dims}-D, {config.steps**config.dims} "
            f"points each over [{config.range[0]:g}, {config.range[1]:g}], scale="
            f"{core.scale_for(config):g} ({config.normalization}), {config.dataset} "
            f"{config.split} n={config.n_examples}, eps={config.eps:g} ({config.norm}), "
            f"loss={config.loss}, attack={config.attack}, device={device}"
        ),
        measure=lambda device: core.landscape_measure(config, device),
        after=write_figures,
    )
