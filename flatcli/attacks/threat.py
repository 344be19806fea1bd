"""Input-space threat models: each is a ball with three verbs.

- `random_start(x, generator)`: a random point of the ball around `x` (an offset `delta`).
- `step(delta, grad, step_size)`: one steepest-ascent step for this norm (not yet projected).
- `project(delta, x)`: the nearest offset inside the ball with `x + delta` in the box [0, 1].

Every attack (PGD, APGD) and the shared ascent loop use only these verbs, so the same loop serves
L-inf and L2 and, with the weight-space balls of `flatcli.weights`, weight perturbations.
Shapes: `x`, `delta`, `grad` are [B, ...]; norms are per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped [B, 1, 1, ...] to broadcast against `t`."""
    norms = t.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class LinfBall:
    """{delta : ||delta||_inf <= eps, 0 <= x + delta <= 1}."""

    eps: float
    name: str = "linf"

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return self.project((2 * u - 1) * self.eps, x)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return delta + step_size * grad.sign()

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = delta.clamp(-self.eps, self.eps)
        return (x + delta).clamp(0, 1) - x


@dataclass(frozen=True)
class L2Ball:
    """{delta : ||delta||_2 <= eps per example, 0 <= x + delta <= 1}."""

    eps: float
    name: str = "l2"

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Uniform in the ball: Gaussian direction, radius eps * U^(1/d).
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        d = x[0].numel()
        r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        r = (r ** (1.0 / d)).view(-1, *([1] * (x.dim() - 1)))
        direction = g / _per_example_norm(g).clamp_min(1e-12)
        return self.project(self.eps * r * direction, x)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
        return delta + step_size * grad / _per_example_norm(grad).clamp_min(1e-12)

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Ball first, then the box: the box clip only shortens delta, so it stays in the ball.
        factor = (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * factor).clamp(0, 1) - x


NORMS = {"linf": LinfBall, "l2": L2Ball}


def make_threat(norm: str, eps: float) -> LinfBall | L2Ball:
    """The input-space ball named `norm` ("linf" | "l2") of radius `eps`."""
    return NORMS[norm](eps)
