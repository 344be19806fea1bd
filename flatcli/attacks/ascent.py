"""The one projected-gradient ascent loop, for inputs, weights, or both jointly.

PGD (inputs), worst-case flatness (inputs and weights jointly) and AWP (weights) all run this loop;
they differ only in the variables, their balls (threat models with `step` and `project`) and the
objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Variable:
    """One ascent variable: an offset `value` around `anchor` in the ball `threat`."""

    value: torch.Tensor
    threat: Any  # .step(value, grad, step_size), .project(value, anchor)
    anchor: torch.Tensor
    step_size: float


def ascend(
    objective: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    variables: Sequence[Variable],
    steps: int,
    on_iterate: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> list[torch.Tensor]:
    """Maximize `objective(*values)` by `steps` projected ascent steps; return the final values.

    `objective` returns (per-example loss [B], logits [B, K]); the ascent direction is the gradient
    of the summed loss. `on_iterate(loss, logits)` sees every iterate, the final one included
    (steps + 1 evaluations), so callers can keep the per-example worst point found.
    """
    values = [v.value.detach() for v in variables]
    for t in range(steps + 1):
        last = t == steps
        with torch.enable_grad():
            if not last:
                values = [v.requires_grad_(True) for v in values]
            loss, logits = objective(*values)
            if on_iterate is not None:
                on_iterate(loss.detach(), logits.detach())
            if last:
                break
            grads = torch.autograd.grad(loss.sum(), values)
        with torch.no_grad():
            values = [
                var.threat.project(var.threat.step(v.detach(), g, var.step_size), var.anchor)
                for var, v, g in zip(variables, values, grads, strict=True)
            ]
    return [v.detach() for v in values]
