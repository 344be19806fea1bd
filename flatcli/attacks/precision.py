"""The precision an attack searches in (fp32 | tf32 | bf16); what it reports is always IEEE fp32
(TF32 off), re-evaluated at its worst point and its least-margin point per example. Weights
stay fp32 (docs/method.md).
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
def fp32_numerics(allow_tf32: bool = False):
    """CUDA's TF32 switches for convolutions and matmuls (`cudnn.allow_tf32`,
    `cuda.matmul.allow_tf32`, `float32_matmul_precision`) off (or on) while the block runs,
    restored after. PyTorch's default runs fp32 convolutions in TF32 on CUDA: `--precision fp32`
    means IEEE fp32. The switches exist (and are set) on CPU-only builds too."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
    matmul.allow_tf32 = cudnn.allow_tf32 = allow_tf32
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[2])
        matmul.allow_tf32, cudnn.allow_tf32 = saved[0], saved[1]


def in_fp32(measure):
    """`measure(unit) -> rows` computed under `fp32_numerics()`: whatever the search precision,
    every reported number is IEEE fp32 (a tf32 search turns TF32 on for its own steps only)."""

    def measured(unit):
        with fp32_numerics():
            return measure(unit)

    return measured


@contextlib.contextmanager
def search_context(device: torch.device, precision: str):
    """Autocast (bf16) or TF32 switches (tf32 on, fp32 off) around an attack's search."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
        return
    with fp32_numerics(allow_tf32=precision == "tf32"):
        yield


@dataclass(frozen=True)
class LowPrecisionSearch:
    """`attack` searching in `precision`; reported in fp32: the loss at its worst point per
    example, and robust error as in fp32, any point tried that is misclassified: the attack's
    worst point and its point of least margin (misclassified in the search wherever any was)
    are re-checked in fp32, an example broken if fp32 misclassifies either.
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
            correct = logits.argmax(1) == y
            if found.broken_points is not None:
                correct &= model(found.broken_points).float().argmax(1) == y
        return AttackOutcome(
            loss=ce_per_example(logits, y), correct=correct, points=found.points,
            broken_points=found.broken_points,
        )
