"""`flatcli train`: adversarial training with a checkpoint every epoch, resumable, DDP-ready."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer import Exit

from flatcli.cli import options as o
from flatcli.cli.output import EpochProgress, render
from flatcli.config.commands import TrainConfig
from flatcli.config.fields import OUTPUT

SUMMARY = [
    "epoch",
    "lr",
    "train_loss",
    "train_clean_err",
    "train_robust_err",
    "heldout_clean_err",
    "heldout_robust_err",
    "wall_time_s",
]

Out = Annotated[
    Path,
    typer.Option("--out", "-o", help="Run directory (created; rerun to resume).",
                 rich_help_panel=OUTPUT),
]  # fmt: skip
Force = Annotated[
    bool,
    typer.Option("--force", help="Discard an existing run in --out and start over.",
                 rich_help_panel=OUTPUT),
]  # fmt: skip


@o.command(TrainConfig, sweep=False)
def train(
    config: TrainConfig,
    out: Out,
    fmt: o.FormatOpt = o.Format.table,
    quiet: o.Quiet = False,
    force: Force = False,
):
    """Train a model and save a checkpoint every epoch into OUT; rerun to resume.

    OUT gets run.json (config, versions, best epoch by held-out robust error),
    epoch_NNNN.safetensors (flatcli attack OUT finds every epoch), train_log/*.parquet and
    trainer_state.pt (resume).
    On N GPUs or processes: torchrun --nproc-per-node N -m flatcli train ...

    Example: flatcli train --dataset digits --method at --epochs 60 --out runs/at

    docs/method.md's CIFAR-10 baseline: flatcli train --dataset cifar10 --arch resnet18 --method at
    --epochs 150 --lr 0.05 --milestones 60,90,120 --eps 0.0314 --attack pgd7 --step-size 0.007
    --weight-decay 5e-4 --nesterov --augment crop-flip --out runs/cifar10-at
    """
    from flatcli import runtime
    from flatcli.training import TrainEvent
    from flatcli.training import train as run_training

    runtime.keep_freed_memory()
    progress = EpochProgress(quiet)

    def on_event(event: TrainEvent) -> None:
        if event.kind == "batch":
            progress.step(event.epoch, event.epochs, event.step, event.steps)
        elif event.kind == "epoch":
            progress.log(_epoch_line(event))
        elif event.kind in ("start", "resume", "done", "complete"):
            progress.log(f"train: {event.message}")

    with progress:
        result = run_training(config, out, force=force, on_event=on_event)
    if result.is_main:
        from flatcli import tables

        render(result.rows, tables.columns("train_log"), fmt.value, SUMMARY)
    raise Exit(0)


def _fraction(value) -> str:
    """An error as the table prints it: a fraction (0.123), not a percentage."""
    return "-" if value is None else f"{value:.3f}"


def _epoch_line(event) -> str:
    """One line per epoch, errors as fractions like the table printed at the end."""
    r = event.row or {}
    held = ""
    if r.get("heldout_robust_err") is not None:
        held = (
            f"  heldout clean/robust err {_fraction(r['heldout_clean_err'])}/"
            f"{_fraction(r['heldout_robust_err'])}"
        )
    return (
        f"train: epoch {event.epoch}/{event.epochs}  lr {r.get('lr', 0):.4g}  "
        f"loss {r.get('train_loss', float('nan')):.4f}  train clean/robust err "
        f"{_fraction(r.get('train_clean_err'))}/{_fraction(r.get('train_robust_err'))}{held}  "
        f"{r.get('wall_time_s', 0):.1f}s"
    )
