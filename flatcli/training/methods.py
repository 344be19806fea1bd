"""Training objectives (clean, AT, TRADES, MART, AT-AWP; docs/method.md): each method is its
inner maximization `adversarial` (the one PGD) and its outer `loss`; AWP adds `awp_offset`."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.ascent import Variable, ascend
from flatcli.attacks.base import ce_per_example
from flatcli.config import registries
from flatcli.training.registry import METHODS as INFO

ATTACK_POINTS = tuple(registries.ATTACK_POINTS)
AWP_LAYERS = tuple(registries.AWP_LAYERS)


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast on `device` when `dtype` is set, else nothing (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Method:
    """A training method with its attack (a flatcli PGD; None for clean) and strengths.

    `attack_point`: the adversarial input trained on, per example, among every iterate of every
    restart: `best` (largest objective, the paper's code) or `final` (last iterate of the best
    restart)."""

    name = ""

    def __init__(
        self,
        attack=None,
        beta: float = 6.0,
        label_smoothing: float = 0.0,
        amp_dtype: torch.dtype | None = None,
        attack_point: str = "best",
    ):
        self.attack, self.beta, self.label_smoothing = attack, beta, label_smoothing
        self.amp_dtype, self.attack_point = amp_dtype, attack_point

    @property
    def info(self):
        return INFO[self.name]

    def adversarial(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor | None:
        """Adversarial inputs [B, ...] for the batch (model in eval mode), or None (clean).
        The random starts come from `generator`, which lives on x's device."""
        if self.attack is None:
            return None
        return self._points(model, x, y, self.attack.draw_starts(x.detach(), generator))

    def _points(self, model, x, y, starts, loss_fn=ce_per_example) -> torch.Tensor:
        # One autocast region for the whole search: the bf16 copies of the weights are cast
        # once per batch, not once per PGD step (the ops outside the model are fp32 either way).
        with autocast(x.device, self.amp_dtype):
            outcome = self.attack(
                model,
                x,
                y,
                starts,
                keep_points=True,
                final=self.attack_point == "final",
                loss_fn=loss_fn,
            )
        return outcome.points.detach()

    def _ce(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

    def loss(
        self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor | None, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar training loss, logits the robust error is counted on): here the
        cross-entropy at x_adv (AT), or at x without an attack (clean training)."""
        with autocast(x.device, self.amp_dtype):
            logits = model(x if x_adv is None else x_adv)
        return self._ce(logits, target), logits


class Clean(Method):
    name = "clean"


class AT(Method):
    name = "at"


class AWP(AT):
    """AT at w + v, v from `awp_offset` (the trainer applies it around `loss`)."""

    name = "awp"


def _kl_rows(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(logits)) per row [B], in fp32."""
    return (p * (p.clamp_min(1e-12).log() - F.log_softmax(logits.float(), 1))).sum(1)


class TRADES(Method):
    name = "trades"

    def adversarial(self, model, x, y, generator):
        """TRADES' inner problem: maximize KL(p(x) || p(x')) from x + 0.001 N(0, 1) (its code)."""
        with torch.no_grad(), autocast(x.device, self.amp_dtype):
            p_clean = F.softmax(model(x).float(), dim=1)
        shape = (self.attack.restarts, *x.shape)
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=x.device)
        starts = torch.stack([self.attack.threat.project(0.001 * n.to(x.dtype), x) for n in noise])

        def kl(logits, _y):  # PGD stacks the restarts: [R*B] rows against p_clean [B]
            return _kl_rows(p_clean.repeat(len(logits) // len(p_clean), 1), logits)

        return self._points(model, x, y, starts, kl)

    def loss(self, model, x, x_adv, target):
        with autocast(x.device, self.amp_dtype):
            logits_clean = model(x).float()
            logits_adv = model(x_adv).float()
        # CE(f(x), y) + beta * KL(p(x) || p(x_adv)), batch mean (TRADES' code)
        kl = F.kl_div(
            F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean"
        )
        return self._ce(logits_clean, target) + self.beta * kl, logits_adv


class MART(Method):
    """MART (Wang et al. 2020): boosted CE on x_adv + beta * KL(p(x) || p(x_adv)) weighted by
    1 - p_y(x), per example; its attack ascends the cross-entropy (MART's code)."""

    name = "mart"

    def loss(self, model, x, x_adv, target):
        with autocast(x.device, self.amp_dtype):
            logits_clean = model(x).float()
            logits_adv = model(x_adv).float()
        p_adv = F.softmax(logits_adv, 1)
        top2 = p_adv.topk(2, dim=1).indices
        runner_up = torch.where(top2[:, 0] == target, top2[:, 1], top2[:, 0])
        boosted = self._ce(logits_adv, target) + F.nll_loss(
            (1.0001 - p_adv + 1e-12).log(), runner_up
        )
        p_clean = F.softmax(logits_clean, 1)
        kl = (p_clean * (p_clean.clamp_min(1e-12).log() - (p_adv + 1e-12).log())).sum(1)
        true_prob = p_clean.gather(1, target[:, None]).squeeze(1)
        return boosted + self.beta * (kl * (1.0000001 - true_prob)).mean(), logits_adv


REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (Clean, AT, TRADES, MART, AWP)}
assert set(REGISTRY) == set(INFO), "every registered method has an objective"


def build(name: str, **kwargs) -> Method:
    """The method `name` (a key of `registry.METHODS`) with its attack and strengths."""
    return REGISTRY[name](**kwargs)


def from_config(c, amp_dtype: torch.dtype | None = None) -> Method:
    """The method of a resolved `TrainConfig`, its PGD built from the config's attack fields."""
    import dataclasses

    from flatcli.attacks.presets import build_attack

    attack = None
    if INFO[c.method].attacks:
        attack = dataclasses.replace(  # trains on the largest loss, whichever restart found it
            build_attack(c.attack, c.norm, c.eps, c.step_size, c.seed, restart_choice="loss"),
            random_start=c.random_start,
        )
    beta = {"trades": c.trades_beta, "mart": c.mart_beta}.get(c.method)
    return build(
        c.method,
        attack=attack,
        beta=6.0 if beta is None else beta,
        label_smoothing=c.label_smoothing,
        amp_dtype=amp_dtype,
        attack_point=c.attack_point or "best",
    )


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


def awp_names(model: nn.Module, which: str = "weights") -> list[str]:
    """The layers AWP perturbs: `weights` (tensors with dim > 1, AWP's code) or `all` (biases
    too, `flatcli.weights.layers`); normalization layers never."""
    from flatcli import weights

    return [n for n, p in weights.layers(model) if which == "all" or p.dim() > 1]


def awp_offset(
    model: nn.Module,
    x_adv: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    amp_dtype: torch.dtype | None = None,
    which: str = "weights",
    mode: str = "eval",
) -> list[torch.Tensor]:
    """AWP's adversarial weight offset v for the batch: one ascent step from v = 0, one tensor
    per layer of `weights.layers(model)` (zero on layers `which` excludes).

    Per perturbed layer v_l = gamma * ||w_l|| * g_l / ||g_l||, g the gradient of the training
    cross-entropy on the adversarial examples, the model in `mode`: eval (BN running statistics,
    as the paper's code) or train (batch statistics, BN statistics left unchanged); the one
    ascent loop over `RelativeL2Ball(gamma)`. The model returns to the mode it came in.
    """
    from flatcli import weights

    found = weights.layers(model)
    chosen = set(awp_names(model, which))
    names = [n for n, _ in found if n in chosen]
    w = [p.detach() for n, p in found if n in chosen]
    ball = weights.RelativeL2Ball(gamma).around(w)

    def objective(nu):
        with autocast(x_adv.device, amp_dtype):
            logits = weights.call_perturbed(model, nu, x_adv, names, w)
        return ce_per_example(logits, target), logits

    was_training = model.training
    model.train(mode == "train")
    try:
        with frozen_buffers(model):
            # one step; the offset's own loss is not needed, so the new iterate is not evaluated
            variable = Variable(weights.zeros_like(w), ball, w, gamma)
            (nu,) = ascend(objective, [variable], 1, evaluate_final=False)
    finally:
        model.train(was_training)
    by_name = dict(zip(names, nu, strict=True))
    return [by_name[n] if n in by_name else torch.zeros_like(p) for n, p in found]
