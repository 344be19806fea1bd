"""`flatcli attack`: clean and robust error and robust loss of every checkpoint."""

from __future__ import annotations

from flatcli.cli import options as o
from flatcli.cli.runner import run_command
from flatcli.config import AttackConfig

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
    from flatcli import checkpoints, evaluation

    refs = checkpoints.discover(sweep.paths)
    config = evaluation.resolve_attack_config(config, refs)
    run_command(
        "attack",
        refs,
        config,
        sweep,
        summary_columns=SUMMARY,
        describe=lambda device, n: (
            f"{n} checkpoint(s), {config.dataset} {config.split} n={config.n_examples}, "
            f"eps={config.eps:g} ({config.norm}), attacks={','.join(config.attacks)}, "
            f"device={device}"
        ),
        measure=lambda device, on_batch: evaluation.attack_measure(config, device, on_batch),
    )
