"""PGD (Madry et al. 2018) with random start and restarts, run as one batch: the one PGD that
evaluation, flatness and training call (docs/method.md). No host sync per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli.ascent import Variable, ascend
from flatcli.attacks.base import AttackOutcome, BallAttack, ce_per_example, margin


@dataclass(frozen=True)
class PGD(BallAttack):
    """Robust loss of an example: each restart keeps its iterate of largest loss (a point of the
    ball); of those, the restart with the largest wrong-class probability there (`wrong-class`,
    the paper's code's evaluation) or the largest loss (`loss`). Broken if any iterate of any
    restart is misclassified."""

    name: str
    norm: str
    eps: float
    steps: int
    step_size: float
    restarts: int = 1
    random_start: bool = True
    restart_choice: str = "wrong-class"  # registries.RESTART_CHOICES
    estimates_loss: bool = field(default=True, init=False)
    keeps_rows: bool = field(default=True, init=False)  # every step attacks every row
    returns_points: bool = field(default=True, init=False)  # keep_points gives x + delta

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """[restarts, N, ...] random offsets, or None without random start."""
        return super().draw_starts(x, generator) if self.random_start else None

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        starts,
        *,
        keep_points: bool = False,
        final: bool = False,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = ce_per_example,
    ) -> AttackOutcome:
        """Attack the batch x [B, ...] (labels y [B]) from `starts` ([R, B, ...] or None).

        `loss_fn(logits, y) -> [B]` is the objective ascended and reported (cross-entropy by
        default; training passes its own, e.g. TRADES' KL). `loss` is, per example, its value
        at the chosen restart's kept iterate (the largest over its iterates; with `final`, its
        final iterate, the point plain PGD-AT trains on). `keep_points` also returns `points`,
        x + delta where that loss was reached, and `broken_points`, the iterate of the smallest
        margin. `correct` is over every iterate either way.
        """
        r, b = self.restarts, len(y)
        xr = x.repeat(r, *([1] * (x.dim() - 1)))  # [R*B, ...], restart-major
        yr = y.repeat(r)
        delta0 = torch.zeros_like(xr) if starts is None else starts.reshape(xr.shape).to(xr.dtype)
        best = torch.full((r * b,), -torch.inf, device=x.device)
        wrong = torch.zeros(r * b, dtype=torch.bool, device=x.device)
        best_delta = delta0.clone() if keep_points else None
        low_margin = torch.full((r * b,), torch.inf, device=x.device) if keep_points else None
        low_delta = delta0.clone() if keep_points else None
        by_wrong = self.restart_choice == "wrong-class" and r > 1
        wrong_p = torch.full((r * b,), -torch.inf, device=x.device) if by_wrong else None
        current = {}

        def objective(delta):
            current["delta"] = delta
            logits = model(xr + delta)
            return loss_fn(logits, yr).float(), logits

        def keep_worst(loss, logits):
            wrong.logical_or_(logits.argmax(1) != yr)
            better = torch.ones_like(wrong) if final else loss > best
            if keep_points:
                mask = better.view(-1, *([1] * (xr.dim() - 1)))
                torch.where(mask, current["delta"].detach(), best_delta, out=best_delta)
                now = margin(logits.detach(), yr)
                lower = (now < low_margin).view(-1, *([1] * (xr.dim() - 1)))
                torch.where(lower, current["delta"].detach(), low_delta, out=low_delta)
                torch.minimum(low_margin, now, out=low_margin)
            if by_wrong:
                torch.where(better, wrong_class_probability(logits.detach(), yr), wrong_p,
                            out=wrong_p)  # fmt: skip
            if final:
                best.copy_(loss)
            else:
                torch.maximum(best, loss, out=best)  # NaN propagates: a NaN loss is reported

        ascend(
            objective, [Variable(delta0, self.threat, xr, self.step_size)], self.steps, keep_worst
        )
        loss, pick = best.view(r, b).max(0)  # per example: the restart with the largest loss
        if by_wrong:  # ... or with the largest wrong-class probability at its kept iterate
            pick = wrong_p.view(r, b).argmax(0)
            loss = best.view(r, b).gather(0, pick[None])[0]
        points = broken = None
        if keep_points:
            index = torch.arange(b, device=x.device)
            points = (xr + best_delta)[pick * b + index]
            lowest = low_margin.view(r, b).argmin(0)  # per example: the restart of the least margin
            broken = (xr + low_delta)[lowest * b + index]
        return AttackOutcome(
            loss=loss, correct=~wrong.view(r, b).any(0), points=points, broken_points=broken
        )


def wrong_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{k != y} softmax(logits)_k per row (fp32) [B]."""
    p = torch.softmax(logits.float(), 1)
    return p.scatter(1, y[:, None], -1.0).max(1).values
