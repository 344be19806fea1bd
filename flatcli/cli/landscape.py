"""`flatcli landscape`: robust and clean loss along weight directions, 1-D and 2-D."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flatcli import registries
from flatcli.cli import options as o
from flatcli.cli.runner import run_command
from flatcli.config import LandscapeConfig

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

D = LandscapeConfig()  # the one source of defaults
Kind = Enum("Kind", {n: n for n in registries.DIRECTIONS}, type=str)
NormalizationName = Enum("NormalizationName", {n: n for n in registries.NORMALIZATIONS}, type=str)
AdversarialLoss = Enum("AdversarialLoss", {n: n for n in registries.ADVERSARIAL_LOSSES}, type=str)

Directions = Annotated[
    Kind,
    typer.Option(help=registries.describe(registries.DIRECTIONS) + ".", rich_help_panel="Measure"),
]
Dims = Annotated[
    int,
    typer.Option(
        help="1: a line per direction; 2: a steps x steps plane.", rich_help_panel="Measure"
    ),
]
Steps = Annotated[int, typer.Option(help="Grid points per axis (>= 2).", rich_help_panel="Measure")]
Range = Annotated[
    str | None,
    typer.Option(
        "--range",
        help="MIN,MAX of alpha (and beta). Default: -1,1; 0,1 for interpolate.",
        show_default=False,
        rich_help_panel="Measure",
    ),
]
NDirections = Annotated[
    int | None,
    typer.Option(
        "--n-directions",
        help="Directions (planes in 2-D), one work unit each. Default: 10 in 1-D, 1 in 2-D.",
        show_default=False,
        rich_help_panel="Measure",
    ),
]
Normalization = Annotated[
    NormalizationName,
    typer.Option(
        help=registries.describe(registries.NORMALIZATIONS)
        + " (normalization layers are never directions).",
        rich_help_panel="Measure",
    ),
]
Scale = Annotated[
    str | None,
    typer.Option(
        help="Relative length s of the directions. Default: 0.5 random, 0.025 adversarial "
        "(docs/method.md; 0.01 with layer-maxabs, the code), 1 hessian.",
        show_default=False,
        rich_help_panel="Measure",
    ),
]
Loss = Annotated[
    str,
    typer.Option(
        help="robust (re-runs --attack at every point; clean comes free) | clean | both.",
        rich_help_panel="Measure",
    ),
]
Attack = Annotated[
    str,
    typer.Option(
        help="Attack behind the robust loss: a pgd preset, pgd<S>x<R>, or apgd-ce.",
        rich_help_panel="Attack",
    ),
]
To = Annotated[
    Path | None,
    typer.Option(
        "--to",
        help="interpolate: the checkpoint at alpha = 1.",
        show_default=False,
        rich_help_panel="Inputs",
    ),
]
Iterations = Annotated[
    int, typer.Option(help="hessian: subspace-iteration steps.", rich_help_panel="Measure")
]
WeightLr = Annotated[
    float,
    typer.Option(
        "--weight-lr",
        help="adversarial: normalized weight step, relative to ||w_l||.",
        rich_help_panel="Measure",
    ),
]
AdversarialLossOpt = Annotated[
    AdversarialLoss,
    typer.Option(
        "--adversarial-loss",
        help="adversarial: " + registries.describe(registries.ADVERSARIAL_LOSSES) + ".",
        rich_help_panel="Measure",
    ),
]
AdversarialXi = Annotated[
    float,
    typer.Option(
        "--adversarial-xi",
        help="adversarial: radius of the weight attack (relative, per layer; the code's 0.005).",
        rich_help_panel="Measure",
    ),
]
AdversarialIterations = Annotated[
    int,
    typer.Option(
        "--adversarial-iterations",
        help="adversarial: steps of the weight attack (the code's 7).",
        rich_help_panel="Measure",
    ),
]
ConvScale = Annotated[
    float,
    typer.Option(
        "--conv-scale",
        help="Multiply every conv weight by this first (the paper's scale-invariance check).",
        rich_help_panel="Inputs",
    ),
]
PointBatch = Annotated[
    int,
    typer.Option(
        help="Grid points evaluated in one stacked pass (torch.func.vmap; same results up to "
        "float rounding). Needs an attack that attacks every example (pgd*, apgd-ce). "
        "On CPU 1 is fastest (benchmarks/landscape_speed.py).",
        rich_help_panel="Runtime",
    ),
]
Plot = Annotated[
    str,
    typer.Option(
        "--plot",
        help="Figures under OUT/landscape_plots/: png | svg | none.",
        rich_help_panel="Output",
    ),
]
NExamples = Annotated[
    int,
    typer.Option(help="First N examples of the split (paper: 128).", rich_help_panel="Inputs"),
]


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
    directions: Directions = Kind(D.directions),
    dims: Dims = D.dims,
    steps: Steps = D.steps,
    span: Range = None,
    n_directions: NDirections = D.n_directions,
    normalization: Normalization = NormalizationName(D.normalization),
    scale: Scale = None,
    loss: Loss = D.loss,
    attack: Attack = D.attack,
    to: To = None,
    iterations: Iterations = D.iterations,
    weight_lr: WeightLr = D.weight_lr,
    adversarial_loss: AdversarialLossOpt = AdversarialLoss(D.adversarial_loss),
    adversarial_xi: AdversarialXi = D.adversarial_xi,
    adversarial_iterations: AdversarialIterations = D.adversarial_iterations,
    conv_scale: ConvScale = D.conv_scale,
    point_batch: PointBatch = D.point_batch,
    plot: Plot = "png",
    dataset: o.Dataset = D.dataset,
    split: o.SplitOpt = o.Split(D.split),
    n_examples: NExamples = D.n_examples,
    eps: o.Eps = None,
    norm: o.NormOpt = o.Norm(D.norm),
    step_size: o.StepSize = None,
    seed: o.Seed = D.seed,
    arch: o.Arch = D.arch,
    normalize: o.Normalize = D.normalize,
    data_dir: o.DataDir = None,
    device: o.Device = D.device,
    batch_size: o.BatchSize = D.batch_size,
    precision: o.PrecisionOpt = o.Precision(D.precision),
    compile: o.CompileOpt = o.Compile(D.compile),
    fmt: o.FormatOpt = o.Format.table,
    quiet: o.Quiet = False,
    force: o.Force = False,
    dry_run: o.DryRun = False,
    shard: o.ShardOpt = None,
):
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
    from flatcli import checkpoints, plots
    from flatcli import landscape as core
    from flatcli.errors import UsageError

    if plot not in core.PLOT_FORMATS:
        raise UsageError(f"--plot {plot!r}: choose png, svg or none")
    config = LandscapeConfig(
        dataset=dataset,
        split=split.value,
        n_examples=n_examples,
        eps=o.parse_eps(eps),
        norm=norm.value,
        directions=directions.value,
        dims=dims,
        steps=steps,
        range=_range(span),
        n_directions=n_directions,
        normalization=normalization.value,
        scale=o.parse_eps(scale, "--scale"),
        loss=loss,
        attack=attack,
        to=None if to is None else str(to),
        iterations=iterations,
        weight_lr=weight_lr,
        adversarial_loss=adversarial_loss.value,
        adversarial_xi=adversarial_xi,
        adversarial_iterations=adversarial_iterations,
        conv_scale=conv_scale,
        step_size=o.parse_eps(step_size, "--step-size"),
        seed=seed,
        arch=arch,
        normalize=normalize,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        batch_size=batch_size,
        precision=precision.value,
        compile=compile.value,
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
        measure=lambda device, on_batch: core.landscape_measure(
            config, device, lambda done, total: on_batch(done, total, "grid points")
        ),
        after=write_figures,
    )
