"""What every input-space attack returns, its ball and random starts, and how starts travel
with the examples: drawn once per work unit for the whole set, then sliced per batch, so results
do not depend on batch size, shard or resume point (docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from flatcli.attacks.threat import make_threat


@dataclass
class AttackOutcome:
    """Per-example result of one attack on a batch.

    loss:    float [B], the largest cross-entropy found in the ball (a lower bound of the robust
             loss); NaN where the attack does not estimate it (targeted DLR, AutoAttack).
    correct: bool [B], True where no point tried was misclassified.
    points:  the adversarial inputs behind `loss` (PGD with `keep_points=True`), else None.
    broken_points: with `keep_points`, per example the point tried with the smallest margin
             (true logit minus the largest other): a misclassified one wherever any was, for
             the fp32 re-check of `correct` after a low-precision search.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    points: torch.Tensor | None = None  # x + delta [B, ...] behind `loss`, when asked for
    broken_points: torch.Tensor | None = None  # x + delta [B, ...] of the smallest margin


class Attack(Protocol):
    name: str
    steps: int
    restarts: int
    estimates_loss: bool
    keeps_rows: bool  # calls the model on whole (repeated) copies of its rows, never a subset

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> Any:
        """Random starts for every example of `x` [N, ...] (tensor [R, N, ...], list or None)."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts: Any
    ) -> AttackOutcome:
        """Attack the batch (`starts` already sliced to it and on x's device)."""


class BallAttack:
    """What PGD and APGD share: the input ball (`norm`, `eps`) and `restarts` random starts
    per example in it (mixed into their frozen dataclasses, which hold the fields)."""

    norm: str
    eps: float
    restarts: int

    @property
    def threat(self):
        return make_threat(self.norm, self.eps)

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """[restarts, N, ...] random offsets in the ball for every example of x [N, ...]."""
        return restart_starts(self.threat, x, generator, self.restarts)


def restart_starts(
    threat, x: torch.Tensor, generator: torch.Generator, restarts: int
) -> torch.Tensor:
    """[restarts, N, ...] random starts in `threat`'s ball for every example of x [N, ...], drawn
    restart after restart from `generator` (the draw order every attack shares)."""
    return torch.stack([threat.random_start(x, generator) for _ in range(restarts)])


def slice_starts(starts: Any, index: slice | torch.Tensor, device: torch.device) -> Any:
    """The starts of examples `index` (dim 1 of each tensor), moved to `device`."""
    if starts is None:
        return None
    if isinstance(starts, (list, tuple)):
        return [slice_starts(s, index, device) for s in starts]
    return starts[:, index].to(device, non_blocking=True)


def padded_index(index: torch.Tensor, size: int) -> torch.Tensor:
    """`index` [k] (k >= 1) cycled to `size` entries: the first k are `index`, the rest repeat
    it. Gathering a padded subset keeps a batch's shape static under `torch.compile` (no
    recompile per subset size); rows are independent, so callers keep the first k results."""
    return index[torch.arange(size, device=index.device) % len(index)]


def tile_starts(starts: Any, copies: int) -> Any:
    """Starts for each example repeated `copies` times in a row (dim 1), for interleaved rows."""
    if starts is None:
        return None
    if isinstance(starts, (list, tuple)):
        return [tile_starts(s, copies) for s in starts]
    return starts.repeat_interleave(copies, 1)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other one, fp32 [B]: negative where misclassified."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -torch.inf)
    return true - others.max(1).values


def ce_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example in fp32 (nats) [B]."""
    return nn.functional.cross_entropy(logits.float(), y, reduction="none")
