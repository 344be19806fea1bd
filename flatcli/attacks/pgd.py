"""PGD (Madry et al. 2018) with random start and restarts; restarts run as one batch.

The robust loss of an example is the largest cross-entropy over all iterates of all restarts (each
iterate is a valid point of the ball); an example counts as broken if any of them is misclassified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli.attacks.ascent import Variable, ascend
from flatcli.attacks.base import AttackOutcome, ce_per_example, restart_starts
from flatcli.attacks.threat import make_threat


@dataclass(frozen=True)
class PGD:
    name: str
    norm: str
    eps: float
    steps: int
    step_size: float
    restarts: int = 1
    random_start: bool = True
    estimates_loss: bool = field(default=True, init=False)
    keeps_rows: bool = field(default=True, init=False)  # every step attacks every row

    @property
    def threat(self):
        return make_threat(self.norm, self.eps)

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """[restarts, N, ...] random offsets, or None without random start."""
        if not self.random_start:
            return None
        return restart_starts(self.threat, x, generator, self.restarts)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts) -> AttackOutcome:
        r, b = self.restarts, len(y)
        xr = x.repeat(r, *([1] * (x.dim() - 1)))  # [R*B, ...], restart-major
        yr = y.repeat(r)
        delta0 = torch.zeros_like(xr) if starts is None else starts.reshape(xr.shape).to(xr.dtype)
        best = torch.full((r * b,), -torch.inf, device=x.device)
        wrong = torch.zeros(r * b, dtype=torch.bool, device=x.device)

        def objective(delta):
            logits = model(xr + delta)
            return ce_per_example(logits, yr), logits

        def keep_worst(loss, logits):
            torch.maximum(best, loss, out=best)
            wrong.logical_or_(logits.argmax(1) != yr)

        ascend(
            objective, [Variable(delta0, self.threat, xr, self.step_size)], self.steps, keep_worst
        )
        return AttackOutcome(loss=best.view(r, b).amax(0), correct=~wrong.view(r, b).any(0))
