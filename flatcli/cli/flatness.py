"""`flatcli flatness`: average- and worst-case flatness of the robust loss, and the Hessian."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from flatcli import registries
from flatcli.attacks.presets import PRESETS
from flatcli.cli import options as o
from flatcli.cli.runner import run_command
from flatcli.config import AVERAGE_XI, WORST_XI, FlatnessConfig

SUMMARY = [
    "run",
    "epoch",
    "measure",
    "estimator",
    "xi",
    "n_examples",
    "eps",
    "robust_loss",
    "perturbed_robust_loss",
    "flatness",
    "flatness_std",
    "robust_err",
    "perturbed_robust_err",
    "lambda_max",
    "hessian_trace",
    "wall_time_s",
]
D = FlatnessConfig()  # the one source of defaults
MEASURE_NAMES = tuple(registries.MEASURES)
Estimator = Enum("Estimator", {n: n for n in registries.WORST_ESTIMATORS}, type=str)


class WeightNorm(str, Enum):
    l2 = "l2"
    linf = "linf"


Measures = Annotated[
    list[str] | None,
    typer.Option(
        "--measure",
        "-m",
        help="Repeatable or comma-separated; default: "
        + ",".join(D.measures)
        + ". "
        + registries.describe(registries.MEASURES)
        + ".",
        show_default=False,
        rich_help_panel="Measure",
    ),
]
Xi = Annotated[
    list[str] | None,
    typer.Option(
        "--xi",
        help="Relative radius of the weight ball (||nu_l|| <= xi ||w_l|| per layer); repeatable "
        f"or comma-separated, one row per value. Default: {AVERAGE_XI:g} (average), "
        f"{WORST_XI:g} (worst).",
        show_default=False,
        rich_help_panel="Measure",
    ),
]
Samples = Annotated[
    int,
    typer.Option(
        help="Random offsets per xi (average); Hutchinson probes (hessian).",
        rich_help_panel="Measure",
    ),
]
Attack = Annotated[
    str,
    typer.Option(
        help="Attack behind the robust loss, re-run on every perturbed model (average): "
        + ", ".join(p for p in PRESETS if p.startswith("pgd") or p == "apgd-ce")
        + ", or pgd<S>x<R>.",
        rich_help_panel="Attack",
    ),
]
Iterations = Annotated[
    int,
    typer.Option(
        help="Steps of the joint worst-case ascent; Lanczos steps (hessian).",
        rich_help_panel="Measure",
    ),
]
Restarts = Annotated[
    int,
    typer.Option(
        help="Attempts of the worst-case ascent (paper: the max over attempts).",
        rich_help_panel="Measure",
    ),
]
WeightLr = Annotated[
    float,
    typer.Option(
        "--weight-lr",
        help="Worst case: normalized weight step, relative to ||w_l|| (code 0.01, text 0.001).",
        rich_help_panel="Measure",
    ),
]
WeightNormOpt = Annotated[
    WeightNorm,
    typer.Option(
        "--weight-norm",
        help="Weight ball: l2 (per layer, docs/method.md) or linf (per element; per-batch only).",
        rich_help_panel="Measure",
    ),
]
WeightBatch = Annotated[
    int,
    typer.Option(
        "--weight-batch",
        help="Worst case: examples per weight step (paper) or per offset (per-batch).",
        rich_help_panel="Measure",
    ),
]
WorstEstimator = Annotated[
    Estimator,
    typer.Option(
        "--worst-estimator",
        help=registries.describe(registries.WORST_ESTIMATORS) + ".",
        rich_help_panel="Measure",
    ),
]
WorstReattack = Annotated[
    bool,
    typer.Option(
        "--worst-reattack/--no-worst-reattack",
        help="paper estimator: also re-run --attack at the final nu (column reattack_loss; the "
        "flatness stays the paper's).",
        rich_help_panel="Measure",
    ),
]
ConvScale = Annotated[
    float,
    typer.Option(
        "--conv-scale",
        help="Multiply every conv weight by this before measuring (the paper's x0.5 / x2 "
        "scale-invariance check: flatness stays, lambda_max scales by 1/a^2).",
        rich_help_panel="Inputs",
    ),
]


def _numbers(values: list[str] | None, option: str) -> tuple[float, ...] | None:
    if not values:
        return None
    return tuple(o.parse_eps(v, option) for text in values for v in o.csv_list(text))


def flatness(
    paths: o.Paths,
    out: o.Out,
    measure: Measures = None,
    xi: Xi = None,
    samples: Samples = D.samples,
    attack: Attack = D.attack,
    iterations: Iterations = D.iterations,
    restarts: Restarts = D.restarts,
    weight_lr: WeightLr = D.weight_lr,
    weight_norm: WeightNormOpt = WeightNorm(D.weight_norm),
    weight_batch: WeightBatch = D.weight_batch,
    worst_estimator: WorstEstimator = Estimator(D.worst_estimator),
    worst_reattack: WorstReattack = D.worst_reattack,
    conv_scale: ConvScale = D.conv_scale,
    dataset: o.Dataset = D.dataset,
    split: o.SplitOpt = o.Split(D.split),
    n_examples: o.NExamples = D.n_examples,
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
    """Flatness of the robust loss of every checkpoint (docs/method.md); writes OUT/flatness.

    average: mean over --samples random offsets nu with ||nu_l|| = xi ||w_l|| per layer of the
    robust loss re-computed on the perturbed weights, minus the robust loss (nats). worst: the
    largest robust loss over the relative ball by joint ascent on weights and inputs (default: the
    paper's estimator, unclamped), minus the robust loss. hessian: the largest eigenvalue and trace
    of the Hessian (not scale-invariant). Robust errors come with every average/worst row.

    Example: flatcli flatness sample_checkpoints --out out --measure average --xi 0.25,0.5
    --samples 5 --attack pgd10x2 --n-examples 300
    """
    from flatcli import checkpoints, flatness

    measures = tuple(m for text in (measure or [",".join(D.measures)]) for m in o.csv_list(text))
    config = FlatnessConfig(
        dataset=dataset,
        split=split.value,
        n_examples=n_examples,
        eps=o.parse_eps(eps),
        norm=norm.value,
        measures=measures,
        xi=_numbers(xi, "--xi"),
        samples=samples,
        attack=attack,
        iterations=iterations,
        restarts=restarts,
        weight_lr=weight_lr,
        weight_norm=weight_norm.value,
        weight_batch=weight_batch,
        worst_estimator=worst_estimator.value,
        worst_reattack=worst_reattack,
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
    )
    refs = checkpoints.discover(paths)
    config = flatness.resolve_flatness_config(config, refs)
    xis = ", ".join(
        f"{m} xi={','.join(f'{v:g}' for v in flatness.xis_for(config, m))}"
        if m not in flatness.HESSIAN_MEASURES
        else m
        for m in config.measures
    )
    run_command(
        table="flatness",
        units=refs,
        config=config,
        out=out,
        shard=shard,
        force=force,
        dry_run=dry_run,
        fmt=fmt,
        quiet=quiet,
        summary_columns=SUMMARY,
        describe=lambda device, n: (
            f"{n} checkpoint(s), {config.dataset} {config.split} n={config.n_examples}, "
            f"eps={config.eps:g} ({config.norm}), {xis}, samples={config.samples}, "
            f"attack={config.attack}, device={device}"
        ),
        measure=lambda device, on_batch: flatness.flatness_measure(config, device, on_batch),
    )
