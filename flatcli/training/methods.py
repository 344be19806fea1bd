"""Training objectives of the methods PAPER.md compares: clean, AT, TRADES, MART, AT-AWP.

Every method is two pieces:
- `adversarial(model, x, y, generator)`: the inner maximization, run with the model in eval mode
  (BN statistics fixed, as TRADES', MART's and AWP's code do) by the one ascent loop
  (`flatcli.attacks.ascent.ascend`) over the input ball of a flatcli PGD attack
  (`flatcli.attacks.presets.build_attack`): its threat model, steps, step size and random start;
- `loss(model, x, x_adv, target)`: the outer loss, in train mode, and the logits on which the
  batch's robust error is counted.

AWP (Wu et al. 2020) adds a weight perturbation `awp_offset`: one normalized ascent step of a
layer-wise relative offset of size gamma (`flatcli.weights.RelativeL2Ball`, the same ball and the
same ascent loop as worst-case flatness) on the adversarial examples; the caller takes the
training gradient at w + v inside `flatcli.weights.perturbed`, which restores w before the update.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.attacks.ascent import Variable, ascend
from flatcli.attacks.base import ce_per_example

METHODS = ("clean", "at", "trades", "mart", "awp")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on `device` when `dtype` is set, else nothing (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Method:
    """One training method with its attack (a flatcli PGD, None for clean) and strengths."""

    name: str
    attack: object | None = None  # flatcli.attacks.pgd.PGD
    beta: float = 6.0  # TRADES / MART
    label_smoothing: float = 0.0
    amp_dtype: torch.dtype | None = None

    # -- inner maximization -----------------------------------------------------------------

    def adversarial(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor | None:
        """Adversarial inputs for the batch (model in eval mode), or None for clean training."""
        if self.attack is None:
            return None
        if self.name == "trades":
            return self._trades_points(model, x, generator)
        return self._ce_points(model, x, y, generator)

    def _ascend(self, model, x, delta0, per_example_loss) -> tuple[torch.Tensor, torch.Tensor]:
        """One PGD run from `delta0`; returns (final delta, its per-example loss)."""
        attack = self.attack
        final = {}

        def objective(delta):
            with autocast(x.device, self.amp_dtype):
                logits = model(x + delta)
            return per_example_loss(logits), logits

        def keep_last(loss, _logits):
            final["loss"] = loss

        (delta,) = ascend(
            objective,
            [Variable(delta0, attack.threat, x, attack.step_size)],
            attack.steps,
            keep_last,
        )
        return delta, final["loss"]

    def _starts(self, x: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """The attack's random starts, drawn on the CPU (same draws on every device)."""
        starts = self.attack.draw_starts(x.detach().cpu(), generator)
        if starts is None:
            return [torch.zeros_like(x)] * self.attack.restarts
        return [s.to(x.device) for s in starts]

    def _ce_points(self, model, x, y, generator) -> torch.Tensor:
        best_delta, best_loss = None, None
        for delta0 in self._starts(x, generator):
            delta, loss = self._ascend(model, x, delta0, lambda logits: ce_per_example(logits, y))
            if best_delta is None:
                best_delta, best_loss = delta, loss
            else:  # several restarts: per example, the final point with the larger loss
                better = loss > best_loss
                best_delta = torch.where(better.view(-1, *[1] * (x.dim() - 1)), delta, best_delta)
                best_loss = torch.maximum(loss, best_loss)
        return (x + best_delta).detach()

    def _trades_points(self, model, x, generator) -> torch.Tensor:
        """TRADES' inner problem: maximize KL(p(x) || p(x')) from x + 0.001 N(0, 1) (its code)."""
        with torch.no_grad(), autocast(x.device, self.amp_dtype):
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
        delta0 = self.attack.threat.project(0.001 * noise.to(x.dtype), x)

        def kl(logits):
            return (
                p_clean * (p_clean.clamp_min(1e-12).log() - F.log_softmax(logits.float(), 1))
            ).sum(1)

        delta, _ = self._ascend(model, x, delta0, kl)
        return (x + delta).detach()

    # -- outer loss ---------------------------------------------------------------------------

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar training loss, logits for the robust error: on x_adv, on x for clean)."""
        ls = self.label_smoothing
        with autocast(x.device, self.amp_dtype):
            if self.name == "clean":
                logits = model(x)
                return F.cross_entropy(logits.float(), target, label_smoothing=ls), logits
            if self.name in ("at", "awp"):
                logits = model(x_adv)
                return F.cross_entropy(logits.float(), target, label_smoothing=ls), logits
            logits_clean = model(x).float()
            logits_adv = model(x_adv).float()
        if self.name == "trades":
            # CE(f(x), y) + beta * KL(p(x) || p(x_adv)), batch mean (TRADES' code)
            kl = F.kl_div(
                F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean"
            )
            return F.cross_entropy(
                logits_clean, target, label_smoothing=ls
            ) + self.beta * kl, logits_adv
        if self.name == "mart":
            return self._mart(logits_clean, logits_adv, target), logits_adv
        raise ValueError(f"unknown method {self.name!r}")

    def _mart(self, logits_clean, logits_adv, target) -> torch.Tensor:
        """MART (Wang et al. 2020): boosted CE on x_adv + beta * KL(p(x) || p(x_adv)) weighted
        by 1 - p_y(x), per example."""
        p_adv = F.softmax(logits_adv, 1)
        top2 = p_adv.topk(2, dim=1).indices
        runner_up = torch.where(top2[:, 0] == target, top2[:, 1], top2[:, 0])
        boosted = F.cross_entropy(
            logits_adv, target, label_smoothing=self.label_smoothing
        ) + F.nll_loss((1.0001 - p_adv + 1e-12).log(), runner_up)
        p_clean = F.softmax(logits_clean, 1)
        kl = (p_clean * (p_clean.clamp_min(1e-12).log() - (p_adv + 1e-12).log())).sum(1)
        true_prob = p_clean.gather(1, target[:, None]).squeeze(1)
        return boosted + self.beta * (kl * (1.0000001 - true_prob)).mean()


@contextlib.contextmanager
def frozen_buffers(model: nn.Module):
    """Run train-mode forwards without changing BN running statistics (restored on exit)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, s in saved:
                b.copy_(s)


def awp_offset(
    model: nn.Module,
    x_adv: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    amp_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """AWP's adversarial weight offset v for the batch: one ascent step from v = 0.

    Per layer (`flatcli.weights.layers`: every weight and bias, normalization excluded)
    v_l = gamma * ||w_l|| * g_l / ||g_l||, with g the gradient of the training cross-entropy on the
    adversarial examples (model in train mode as AWP's proxy, BN statistics left unchanged).
    The ascent is the one loop (`ascend`) over `RelativeL2Ball(gamma)`, whose step is relative to
    ||w_l|| and whose projection keeps ||v_l|| <= gamma * ||w_l||. AWP's own code perturbs only
    multi-dimensional weights; flatcli's layers include biases, as PAPER.md's flatness does.
    """
    from flatcli import weights

    found = weights.layers(model)
    names = [n for n, _ in found]
    w = [p.detach() for _, p in found]
    ball = weights.RelativeL2Ball(gamma).around(w)

    def objective(nu):
        with autocast(x_adv.device, amp_dtype):
            logits = weights.call_perturbed(model, nu, x_adv, names, w)
        return ce_per_example(logits, target), logits

    with frozen_buffers(model):
        (nu,) = ascend(objective, [Variable(weights.zeros_like(w), ball, w, gamma)], 1)
    return nu
