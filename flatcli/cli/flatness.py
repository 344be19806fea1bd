"""`flatcli flatness`: average- and worst-case flatness of the robust loss, and the Hessian."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from flatcli.attacks.presets import PRESETS
from flatcli.cli import options as o
from flatcli.cli.runner import run_command

SUMMARY = [
    "run",
    "epoch",
    "measure",
    "xi",
    "n_examples",
    "eps",
    "robust_loss",
    "perturbed_robust_loss",
    "flatness",
    "flatness_std",
    "lambda_max",
    "hessian_trace",
    "wall_time_s",
]
MEASURE_NAMES = ("average", "worst", "clean-average", "clean-worst", "hessian", "clean-hessian")


class WeightNorm(str, Enum):
    l2 = "l2"
    linf = "linf"


Measures = Annotated[
    list[str] | None,
    typer.Option(
        "--measure",
        "-m",
        help="Repeatable or comma-separated: " + ", ".join(MEASURE_NAMES) + ". "
        "Default: average,worst. clean-*: the same with eps = 0.",
        show_default=False,
    ),
]
Xi = Annotated[
    list[str] | None,
    typer.Option(
        "--xi",
        help="Relative radius of the weight ball (||nu_l|| <= xi ||w_l|| per layer); repeatable "
        "or comma-separated, one row per value. Default: 0.5 (average), 0.00075 (worst).",
        show_default=False,
    ),
]
Samples = Annotated[
    int,
    typer.Option(help="Random offsets per xi (average); Hutchinson probes (hessian)."),
]
Attack = Annotated[
    str,
    typer.Option(
        help="Attack behind the robust loss, re-run on every perturbed model (average): "
        + ", ".join(p for p in PRESETS if p.startswith("pgd") or p == "apgd-ce")
        + ", or pgd<S>x<R>."
    ),
]
Iterations = Annotated[
    int, typer.Option(help="Steps of the joint worst-case ascent; Lanczos steps (hessian).")
]
Restarts = Annotated[int, typer.Option(help="Random restarts of the worst-case ascent.")]
WeightLr = Annotated[
    float,
    typer.Option(
        "--weight-lr",
        help="Worst case: normalized weight step, relative to ||w_l|| (code 0.01, text 0.001).",
    ),
]
WeightNormOpt = Annotated[
    WeightNorm,
    typer.Option(
        "--weight-norm", help="Weight ball: l2 (per layer, PAPER.md) or linf (per element)."
    ),
]
WeightBatch = Annotated[
    int,
    typer.Option(
        "--weight-batch",
        help="Worst case: examples sharing one adversarial weight offset (part of the measure).",
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
    samples: Samples = 10,
    attack: Attack = "pgd20x10",
    iterations: Iterations = 20,
    restarts: Restarts = 10,
    weight_lr: WeightLr = 0.01,
    weight_norm: WeightNormOpt = WeightNorm.l2,
    weight_batch: WeightBatch = 128,
    dataset: o.Dataset = None,
    split: o.SplitOpt = o.Split.test,
    n_examples: o.NExamples = None,
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
    """Flatness of the robust loss of every checkpoint (PAPER.md); writes OUT/flatness.

    average: mean over --samples random offsets nu with ||nu_l|| = xi ||w_l|| per layer of the
    robust loss re-computed on the perturbed weights, minus the robust loss (nats). worst: the
    largest robust loss over the relative ball, by joint ascent on weights and inputs per batch,
    minus the robust loss. hessian: the largest eigenvalue and trace of the Hessian of the robust
    loss at fixed adversarial examples (not scale-invariant). One row per measure and xi.

    Example: flatcli flatness sample_checkpoints --out out --measure average --xi 0.25,0.5
    --samples 5 --attack pgd10x2 --n-examples 300
    """
    from flatcli import checkpoints, flatness
    from flatcli.config import FlatnessConfig

    measures = tuple(m for text in (measure or ["average,worst"]) for m in o.csv_list(text))
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
        step_size=o.parse_eps(step_size, "--step-size"),
        seed=seed,
        arch=arch,
        normalize=normalize,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        batch_size=batch_size,
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
