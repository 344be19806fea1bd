"""`flatcli attack`: clean and robust error and robust loss of every checkpoint."""

from __future__ import annotations

from flatcli.cli import options as o
from flatcli.cli.runner import examples_line, run_command
from flatcli.config.commands import AttackConfig

SUMMARY = [
    "run",
    "epoch",
    "attack",
    "n_examples",
    "eps",
    "clean_err",
    "robust_err",
    "robust_loss",
    "wall_time_s",
]


@o.command(AttackConfig)
def attack(config: AttackConfig, sweep: o.Sweep):
    """Clean and robust error and robust loss of every checkpoint; writes OUT/attack.

    Robust loss (nats) is the mean over examples of the largest cross-entropy PGD finds (worst
    restart per example); robust error counts an example broken by any attack. With several attacks
    a `worst` row gives the per-example worst case.

    Example: flatcli attack sample_checkpoints --out out --attacks pgd20x10 --n-examples 200
    """
    run_command(
        "attack",
        config,
        sweep,
        summary_columns=SUMMARY,
        describe=lambda config, refs, device, n: (
            f"{n} checkpoint(s), {examples_line(config)}, attacks={','.join(config.attacks)}, "
            f"device={device}"
        ),
    )
