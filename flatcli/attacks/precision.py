"""The precision an attack searches in (fp32 | tf32 | bf16); what it reports is always fp32,
re-evaluated at its worst point per example. Weights stay fp32 (docs/method.md, issue 11).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flatcli.attacks.base import AttackOutcome, ce_per_example
from flatcli.errors import UsageError

PRECISIONS = ("fp32", "tf32", "bf16")
DTYPE_COLUMN = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16"}  # the `dtype` column


def with_precision(attack, precision: str):
    """`attack` itself for fp32, else one that searches in `precision` and reports fp32.

    Only attacks that can return the points behind their loss (PGD) can be re-evaluated; others
    are refused with a one-line error rather than silently run in fp32.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return attack
    if not getattr(attack, "returns_points", False):
        raise UsageError(
            f"--precision {precision}: attack {attack.name!r} cannot return its points for the "
            "fp32 re-evaluation; use a pgd preset or apgd-ce, or --precision fp32"
        )
    return LowPrecisionSearch(attack, precision)


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` runs bf16 autocast natively (CPUs do; GPUs from Ampere on)."""
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def usable(config, device: torch.device, field: str = "precision"):
    """(config, None) where `device` runs `config.<field>` (precision, or training's amp), else
    (a GPU without bf16) the config in fp32, so that config_hash, run.json and the dtype column
    say what was computed, and the one line that says so."""
    if getattr(config, field, None) != "bf16" or bf16_supported(device):
        return config, None
    note = f"--{field} bf16: {device} has no native bf16; computing in fp32 instead"
    return dataclasses.replace(config, **{field: "fp32" if field == "precision" else "none"}), note


@contextlib.contextmanager
def search_context(device: torch.device, precision: str):
    """Autocast (bf16) or TF32 switches (tf32, CUDA only) around an attack's search."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass(frozen=True)
class LowPrecisionSearch:
    """`attack` searching in `precision`; loss and correctness re-evaluated in fp32 at its worst
    point per example (so an example counts as broken only if fp32 misclassifies that point).
    Everything else (name, steps, restarts, starts) is the wrapped attack's: the same random
    starts as its fp32 run."""

    attack: Any
    precision: str

    def __getattr__(self, name: str):
        return getattr(self.attack, name)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts, **options
    ) -> AttackOutcome:
        options["keep_points"] = True
        with search_context(x.device, self.precision):
            found = self.attack(model, x, y, starts, **options)
        with torch.no_grad(), search_context(x.device, "fp32"):
            logits = model(found.points).float()
        return AttackOutcome(
            loss=ce_per_example(logits, y), correct=logits.argmax(1) == y, points=found.points
        )
