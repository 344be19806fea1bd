"""Input-space threat models: balls with three verbs, `random_start`, `step` (steepest ascent
for the norm, unprojected) and `project` (into the ball and the [0, 1] box).

PGD, APGD and the shared ascent loop use only these verbs; the weight-space balls of
`flatcli.weights` have the same ones. Shapes: `x`, `delta`, `grad` [B, ...]; norms per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped [B, 1, 1, ...] to broadcast against `t`."""
    norms = t.flatten(1).norm(dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


@dataclass(frozen=True)
class _Ball:
    eps: float

    def random_start(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A random offset in the ball around `x`, clipped to the box (`_draw` per norm)."""
        return self.project(self._draw(x, generator), x)


@dataclass(frozen=True)
class LinfBall(_Ball):
    """{delta : ||delta||_inf <= eps, 0 <= x + delta <= 1}."""

    name: str = "linf"

    def _draw(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (2 * u - 1) * self.eps

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size) -> torch.Tensor:
        return delta + step_size * grad.sign()

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        delta = delta.clamp(-self.eps, self.eps)
        return (x + delta).clamp(0, 1) - x


@dataclass(frozen=True)
class L2Ball(_Ball):
    """{delta : ||delta||_2 <= eps per example, 0 <= x + delta <= 1}."""

    name: str = "l2"

    def _draw(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # Uniform in the ball: Gaussian direction, radius eps * U^(1/d).
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        r = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        r = (r ** (1.0 / x[0].numel())).view(-1, *([1] * (x.dim() - 1)))
        return self.eps * r * g / _per_example_norm(g).clamp_min(1e-12)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, step_size) -> torch.Tensor:
        return delta + step_size * grad / _per_example_norm(grad).clamp_min(1e-12)

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Ball first, then the box: the box clip only shortens delta, so it stays in the ball.
        factor = (self.eps / _per_example_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * factor).clamp(0, 1) - x


NORMS = {"linf": LinfBall, "l2": L2Ball}


def make_threat(norm: str, eps: float) -> LinfBall | L2Ball:
    """The input-space ball named `norm` ("linf" | "l2") of radius `eps`."""
    return NORMS[norm](eps)
