"""APGD (Croce & Hein, ICML 2020, Algorithm 1): step-size-free PGD with momentum, and
AutoAttack-style ensembles. Per example (rows of the batch); restarts are extra rows; broken if
the clean point or any iterate is misclassified. No host sync per step (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from flatcli.attacks.base import (
    AttackOutcome,
    BallAttack,
    ce_per_example,
    margin,
    padded_index,
    slice_starts,
)
from flatcli.errors import UsageError
from flatcli.runtime import is_compiled

MOMENTUM = 0.75  # alpha: weight of the new step against the previous update
RHO = 0.75  # condition 1: the loss must have increased in more than rho of the steps

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """Iterations (1-based counts of steps done) after which the step size is checked.

    The paper's p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (fractions
    of N steps) in the official code's integer form: the first after max(int(0.22 N), 1) steps,
    then intervals shrinking by max(int(0.03 N), 1) down to max(int(0.06 N), 1).
    """
    k = max(int(0.22 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    k_decr = max(int(0.03 * steps), 1)
    out, at = [], k
    while at <= steps:
        out.append(at)
        k = max(k - k_decr, k_min)
        at += k
    return out


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), per example [B]."""
    z = logits.float()
    top = z.topk(4, dim=1).values
    zy = z.gather(1, y[:, None]).squeeze(1)
    zt = z.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def _ce(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return ce_per_example(logits, y)


def _dlr_t(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return dlr_targeted(logits, y, target)


def _rowwise(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta0: torch.Tensor,
    threat: Any,
    steps: int,
    loss_fn: LossFn,
    target: torch.Tensor | None = None,
    examples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One APGD run from `delta0` on the rows of `x`; returns (best loss [B], misclassified [B],
    the perturbation of the best loss [B, ...], (the least margin [B], its perturbation)).

    First step z = P(x_0 + eta step(grad)) with eta = 2 eps; then z = P(x_k + eta step(grad)),
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})), alpha = 0.75 (`step`, `P`:
    the threat's verbs). At each of `checkpoints(steps)`, per row, eta halves and the iterate
    restarts from the best point (with its gradient) if (1) the loss increased in at most
    rho = 0.75 of the steps since the last checkpoint, or (2) eta was not halved at the last
    checkpoint and the best loss has not improved since.

    The best loss and the misclassification flag cover the start and every iterate. With
    `examples` (rows are restart-major copies of that many examples), a row stops as soon as
    any row of its example is misclassified (targeted runs that do not estimate the loss): its
    results freeze at the values reached so far. Stopped rows are masked, not removed, so the
    batch keeps its shape and no step waits on the host; the run ends early only when every row
    has stopped, checked at the step-size checkpoints (a bounded number of syncs).
    """
    n = len(y)
    if n == 0:
        empty = torch.full((0,), -torch.inf, device=x.device)
        return empty, y.new_zeros(0, dtype=torch.bool), torch.zeros_like(x), (empty, x)

    def evaluate(delta):
        with torch.enable_grad():
            d = delta.detach().requires_grad_(True)
            logits = model(x + d)
            loss = loss_fn(logits, y, target)
            (grad,) = torch.autograd.grad(loss.sum(), d)
        return loss.detach().float(), margin(logits.detach(), y), grad.detach()

    delta = threat.project(delta0.to(x.dtype), x)
    loss, low_margin, grad = evaluate(delta)
    wrong = low_margin < 0
    best_loss, best_delta, best_grad = loss.clone(), delta.clone(), grad.clone()
    low_delta = delta.clone()
    delta_prev = delta
    eta = torch.full((n, *([1] * (x.dim() - 1))), 2.0 * threat.eps, dtype=x.dtype, device=x.device)
    history = torch.empty(steps + 1, n, device=x.device)
    history[0] = loss
    check_at = set(checkpoints(steps))
    last_check = 0
    best_at_last_check = best_loss.clone()
    reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)

    with torch.no_grad():
        for i in range(steps):
            alpha = 1.0 if i == 0 else MOMENTUM
            z = threat.project(threat.step(delta, grad, eta), x)
            moved = delta + alpha * (z - delta) + (1 - alpha) * (delta - delta_prev)
            delta_prev, delta = delta, threat.project(moved, x)
            loss, now_margin, grad = evaluate(delta)
            wrong |= (now_margin < 0) & active
            lower = (now_margin < low_margin) & active
            low_margin = torch.where(lower, now_margin, low_margin)
            low_delta = torch.where(_rowwise(lower, delta), delta, low_delta)
            history[i + 1] = loss
            improved = (loss > best_loss) & active
            best_loss = torch.where(improved, loss, best_loss)
            m = _rowwise(improved, delta)
            best_delta = torch.where(m, delta, best_delta)
            best_grad = torch.where(m, grad, best_grad)
            if examples is not None:
                active = ~wrong.view(-1, examples).any(0).repeat(n // examples)

            if i + 1 in check_at:
                k = i + 1 - last_check
                window = history[last_check : i + 2]
                increases = (window[1:] > window[:-1]).sum(0)
                oscillating = increases <= k * RHO
                stalled = ~reduced_last & (best_at_last_check >= best_loss)
                reduce = oscillating | stalled
                m = _rowwise(reduce, delta)
                eta = torch.where(m, eta / 2, eta)
                delta = torch.where(m, best_delta, delta)
                grad = torch.where(m, best_grad, grad)
                reduced_last = reduce
                best_at_last_check = best_loss.clone()
                last_check = i + 1
                if examples is not None and not active.any():
                    break
    return best_loss, wrong, best_delta, (low_margin, low_delta)


def _check(norm: str, eps: float, steps: int, restarts: int) -> None:
    if norm not in ("linf", "l2"):
        raise UsageError(f"APGD supports the norms linf and l2, got {norm!r}")
    if not eps >= 0:
        raise UsageError(f"eps must be non-negative, got {eps}")
    if steps < 1 or restarts < 1:
        raise UsageError(f"steps and restarts must be at least 1, got {steps} and {restarts}")


class _APGD(BallAttack):
    def __post_init__(self):
        _check(self.norm, self.eps, self.steps, self.restarts)


def _subset(model: nn.Module, index: torch.Tensor, size: int) -> torch.Tensor:
    """The rows to attack for the examples `index`: `index` itself, or padded to `size` rows
    under `torch.compile` (a static shape; callers keep the first len(index) results)."""
    return padded_index(index, size) if is_compiled(model) else index


def _restart_rows(x: torch.Tensor, y: torch.Tensor, starts: torch.Tensor | None, restarts: int):
    """Rows [R*B, ...] restart-major, with their starts (zeros without random starts)."""
    xr = x.repeat(restarts, *([1] * (x.dim() - 1)))
    yr = y.repeat(restarts)
    delta0 = torch.zeros_like(xr) if starts is None else starts.reshape(xr.shape).to(xr)
    return xr, yr, delta0


@dataclass(frozen=True)
class APGDCE(_APGD):
    """APGD on the cross-entropy loss; restarts run jointly on every example.

    outcome.loss is the largest CE over the clean point and all iterates of all restarts (fp32);
    outcome.correct is False where any of these points is misclassified.
    """

    name: str
    norm: str
    eps: float
    steps: int = 100
    restarts: int = 1
    estimates_loss: bool = field(default=True, init=False)
    keeps_rows: bool = field(default=True, init=False)  # every restart runs on every row
    returns_points: bool = field(default=True, init=False)  # keep_points gives x + delta

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts, *, keep_points=False
    ) -> AttackOutcome:
        """`keep_points` also returns `points`, the point behind each example's loss (x itself
        where the clean loss is the largest), for `--precision`'s fp32 re-evaluation."""
        r, b = self.restarts, len(y)
        with torch.no_grad():
            clean_logits = model(x)
            clean_loss = ce_per_example(clean_logits, y)
            clean_wrong = clean_logits.argmax(1) != y
        xr, yr, delta0 = _restart_rows(x, y, starts, r)
        best, wrong, best_delta, (low_margin, low_delta) = _apgd(
            model, xr, yr, delta0, self.threat, self.steps, _ce
        )
        attacked, pick = best.view(r, b).max(0)  # per example: the restart with the largest loss
        points = broken = None
        if keep_points:
            index = torch.arange(b, device=x.device)
            clean_wins = (clean_loss > attacked).view(-1, *([1] * (x.dim() - 1)))
            points = torch.where(clean_wins, x, (xr + best_delta)[pick * b + index])
            least, lowest = low_margin.view(r, b).min(0)  # the restart of the least margin
            clean_less = (margin(clean_logits, y) < least).view(-1, *([1] * (x.dim() - 1)))
            broken = torch.where(clean_less, x, (xr + low_delta)[lowest * b + index])
        return AttackOutcome(
            loss=torch.maximum(attacked, clean_loss),
            correct=~(wrong.view(r, b).any(0) | clean_wrong),
            points=points,
            broken_points=broken,
        )


@dataclass(frozen=True)
class APGDT(_APGD):
    """APGD on the targeted DLR loss, one run per target class (AutoAttack's apgd-t).

    Targets are the 2nd, 3rd, ... `n_targets + 1`-th largest clean logits; every target gets
    `restarts` runs from the same starts. Only examples still correct are attacked, and a run
    drops an example as soon as it is misclassified. outcome.loss is NaN (not a CE estimate).
    """

    name: str
    norm: str
    eps: float
    steps: int = 100
    restarts: int = 1
    n_targets: int = 9
    estimates_loss: bool = field(default=False, init=False)
    keeps_rows: bool = field(default=False, init=False)  # only examples still correct

    def __post_init__(self):
        super().__post_init__()
        if self.n_targets < 1:
            raise UsageError(f"n_targets must be at least 1, got {self.n_targets}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts) -> AttackOutcome:
        r = self.restarts
        with torch.no_grad():
            clean_logits = model(x).float()
        num_classes = clean_logits.shape[1]
        if num_classes < 4:
            raise UsageError(f"{self.name} (targeted DLR loss) needs at least 4 classes")
        correct = clean_logits.argmax(1) == y
        ranked = clean_logits.argsort(1, descending=True)
        for t in range(1, min(self.n_targets, num_classes - 1) + 1):
            idx = correct.nonzero().squeeze(1)  # one sync per target class, none per step
            if idx.numel() == 0:
                break
            rows = _subset(model, idx, len(y))
            sub_starts = None if starts is None else starts[:, rows]
            xr, yr, delta0 = _restart_rows(x[rows], y[rows], sub_starts, r)
            target = ranked[rows, t].repeat(r)
            _, wrong, _, _ = _apgd(
                model, xr, yr, delta0, self.threat, self.steps, _dlr_t, target, len(rows)
            )
            fooled = wrong.view(r, -1).any(0)[: len(idx)]
            correct[idx] = correct[idx] & ~fooled
        return AttackOutcome(
            loss=torch.full((len(y),), torch.nan, device=x.device), correct=correct
        )


@dataclass(frozen=True)
class Ensemble:
    """Members run in order; each later member attacks only the examples still correct.

    correct is the AND over members; loss is the elementwise max over the members that estimate
    it (NaN if none does). `steps`/`restarts` are the first member's.
    """

    name: str
    members: Sequence[Any]

    def __post_init__(self):
        if not self.members:
            raise UsageError(f"ensemble {self.name!r} has no members")
        object.__setattr__(self, "members", tuple(self.members))

    @property
    def steps(self) -> int:
        return self.members[0].steps

    @property
    def restarts(self) -> int:
        return self.members[0].restarts

    @property
    def estimates_loss(self) -> bool:
        return any(m.estimates_loss for m in self.members)

    @property
    def keeps_rows(self) -> bool:
        """Only a one-member ensemble: later members attack the examples still correct."""
        return len(self.members) == 1 and self.members[0].keeps_rows

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> list:
        return [m.draw_starts(x, generator) for m in self.members]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts) -> AttackOutcome:
        n = len(y)
        correct = torch.ones(n, dtype=torch.bool, device=x.device)
        loss = torch.full((n,), torch.nan, device=x.device)
        member_starts = [None] * len(self.members) if starts is None else starts
        for i, (member, s) in enumerate(zip(self.members, member_starts, strict=True)):
            if i == 0:  # every example
                idx = torch.arange(n, device=x.device)
                out = member(model, x, y, slice_starts(s, slice(None), x.device))
            else:  # the examples still correct
                idx = correct.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                rows = _subset(model, idx, n)
                out = member(model, x[rows], y[rows], slice_starts(s, rows, x.device))
            k = len(idx)
            correct[idx] &= out.correct[:k].to(x.device)
            if member.estimates_loss:
                loss[idx] = torch.fmax(loss[idx], out.loss[:k].to(loss))
        return AttackOutcome(loss=loss, correct=correct)
