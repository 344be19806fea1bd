"""`flatcli flatness`: average- and worst-case flatness of the robust loss, and the Hessian."""

from __future__ import annotations

from flatcli.cli import options as o
from flatcli.cli.runner import examples_line, run_command
from flatcli.config.commands import FlatnessConfig

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


@o.command(FlatnessConfig)
def flatness(config: FlatnessConfig, sweep: o.Sweep):
    """Flatness of the robust loss of every checkpoint (docs/method.md); writes OUT/flatness.

    average: mean over --samples random offsets nu with ||nu_l|| = xi ||w_l|| per layer of the
    robust loss re-computed on the perturbed weights, minus the robust loss (nats). worst: the
    largest robust loss over the relative ball by joint ascent on weights and inputs (default: the
    paper's estimator, unclamped), minus the robust loss. hessian: the largest eigenvalue and trace
    of the Hessian (not scale-invariant). Robust errors come with every average/worst row.

    Example: flatcli flatness sample_checkpoints --out out --measure average --xi 0.25,0.5
    --samples 5 --attack pgd10x2 --n-examples 300
    """
    from flatcli.measures import flatness as core

    def describe(config, refs, device, n):
        xis = ", ".join(
            m if m in core.HESSIAN_MEASURES
            else f"{m} xi={','.join(f'{v:g}' for v in core.xis_for(config, m))}"
            for m in config.measures
        )  # fmt: skip
        return (
            f"{n} checkpoint(s), {examples_line(config)}, {xis}, samples={config.samples}, "
            f"attack={config.attack}, device={device}"
        )

    run_command(
        "flatness",
        config,
        sweep,
        summary_columns=SUMMARY,
        describe=describe,
    )
