"""The one projected-gradient ascent loop, over inputs, weights, or both jointly.

PGD, the weight attacks, AWP and both worst-case estimators run on it (APGD keeps its own
momentum step); they differ only in the variables, their balls (`step`, `project`) and the
objective (docs/method.md). No host sync per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Variable:
    """One ascent variable: an offset `value` around `anchor` in the ball `threat`.

    `value` and `anchor` are tensors (inputs) or lists of tensors (per-layer weight offsets and
    weights, `flatcli.weights`); the threat's verbs take and return the same kind.
    """

    value: torch.Tensor | list[torch.Tensor]
    threat: Any  # .step(value, grad, step_size), .project(value, anchor)
    anchor: torch.Tensor | list[torch.Tensor]
    step_size: float


def _map(fn: Callable[[torch.Tensor], Any], value):
    """`fn` applied to a tensor, or to each tensor of a list (keeping the list)."""
    return [fn(t) for t in value] if isinstance(value, (list, tuple)) else fn(value)


def _leaves(values: list) -> list[torch.Tensor]:
    return [t for v in values for t in (v if isinstance(v, (list, tuple)) else [v])]


def _regroup(flat: Sequence[torch.Tensor], like: list) -> list:
    """`flat` (as from `_leaves(like)`) back in the shape of `like`."""
    out, i = [], 0
    for v in like:
        if isinstance(v, (list, tuple)):
            out.append(list(flat[i : i + len(v)]))
            i += len(v)
        else:
            out.append(flat[i])
            i += 1
    return out


def ascend(
    objective: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    variables: Sequence[Variable],
    steps: int,
    on_iterate: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    *,
    evaluate_final: bool = True,
) -> list:
    """Maximize `objective(*values)` by `steps` projected ascent steps; return the final values.

    `objective` returns (per-example loss [B], logits [B, K]); the ascent direction is the gradient
    of the summed loss. `on_iterate(loss, logits)` sees every iterate, the final one included
    (steps + 1 evaluations), so callers can keep the per-example worst point found; without
    `evaluate_final` the final iterate is returned unevaluated (steps evaluations: a caller that
    interleaves single steps over batches, as the paper's worst-case estimator does).
    """
    values = [_map(torch.Tensor.detach, v.value) for v in variables]
    for t in range(steps + 1):
        last = t == steps
        if last and not evaluate_final:
            break
        # The last iterate needs no gradient: evaluated without autograd, as every plain
        # evaluation is (under compile: the same graph as those, not one more).
        with torch.enable_grad() if not last else torch.no_grad():
            if not last:
                values = [_map(lambda x: x.requires_grad_(True), v) for v in values]
            loss, logits = objective(*values)
            if on_iterate is not None:
                on_iterate(loss.detach(), logits.detach())
            if last:
                break
            # A tensor the loss does not depend on (an unused layer) gets a zero gradient.
            flat = torch.autograd.grad(
                loss.sum(), _leaves(values), allow_unused=True, materialize_grads=True
            )
            grads = _regroup(flat, values)
        with torch.no_grad():
            values = [
                var.threat.project(
                    var.threat.step(_map(torch.Tensor.detach, v), g, var.step_size), var.anchor
                )
                for var, v, g in zip(variables, values, grads, strict=True)
            ]
    return [_map(torch.Tensor.detach, v) for v in values]
