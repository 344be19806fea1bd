"""Worst-case flatness of the robust loss (docs/method.md): two estimators of
max_nu max_delta CE(f(x + delta; w + nu), y) - RCE(w) over the per-layer relative ball.

- `paper` (`worst_paper`, the default): the authors' code. One offset nu for the whole set,
  started uniformly in norm inside the ball; in each of `iterations` passes over the set, every
  batch of `weight_batch` examples takes one joint step of nu (normalized, relative) and of its
  own delta (signed); the value is the set-mean loss at the final iterate, the result the max over
  `restarts` attempts minus RCE(w), not clamped.
- `per-batch` (`worst_per_batch`): one nu per batch, best iterate, a re-attack at nu*, clamped at
  RCE(w) (all three are points of the joint ball).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli import engine, runtime, weights
from flatcli.attacks.ascent import Variable, ascend
from flatcli.attacks.base import ce_per_example, restart_starts, slice_starts
from flatcli.attacks.presets import PAPER_STEP_RATIO
from flatcli.attacks.threat import make_threat
from flatcli.errors import UsageError


@dataclass
class WorstResult:
    """One worst-case estimate at one xi; losses in nats, errors as fractions.

    joint_loss: the ascent's own value (paper: max over attempts of the set-mean loss at the final
    iterate; per-batch: example-weighted mean of each batch's best iterate). reattack_loss: the
    attack re-run at each batch's nu* (per-batch only). perturbed_loss: the estimate of the max;
    flatness = perturbed_loss - loss (paper: unclamped, may be negative); unclamped: the
    difference before any clamp. perturbed_err: error at the point behind perturbed_loss.
    """

    measure: str
    xi: float
    estimator: str
    loss: float
    perturbed_loss: float
    flatness: float
    unclamped: float
    joint_loss: float
    reattack_loss: float | None
    err: float | None
    perturbed_err: float | None
    iterations: int
    restarts: int
    note: str | None = None
    nu: list[torch.Tensor] | None = field(default=None, repr=False)  # paper: the final offset


def _check(iterations: int, restarts: int, weight_batch: int, weight_lr: float) -> None:
    for name, value in [
        ("iterations", iterations),
        ("restarts", restarts),
        ("weight-batch", weight_batch),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name} must be an integer >= 1, got {value}")
    if not (weight_lr > 0 and math.isfinite(weight_lr)):
        raise UsageError(f"--weight-lr must be positive, got {weight_lr:g}")


def joint_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ball,
    nu0: Sequence[torch.Tensor],
    weight_lr: float,
    iterations: int,
    threat=None,
    delta0: torch.Tensor | None = None,
    input_step: float | None = None,
) -> tuple[float, list[torch.Tensor]]:
    """One projected ascent (the one `ascend` loop) jointly over a weight offset nu in `ball`
    (bound with `ball.around(w)`; normalized step `weight_lr`) and, with a `threat`, the batch's
    input perturbation from `delta0` (signed step `input_step`). Returns the largest batch-mean
    cross-entropy over the iterates (NaN once any is NaN) and the nu where it was reached."""
    names, w = weights.named_weights(model)
    variables = [Variable(list(nu0), ball, w, weight_lr)]
    if threat is not None:
        variables.append(Variable(delta0, threat, x, input_step))
    best = {"value": -math.inf, "nu": None}
    current = {}

    def objective(nu, delta=None):
        current["nu"] = nu
        logits = weights.call_perturbed(model, nu, x if delta is None else x + delta, names, w)
        return ce_per_example(logits, y), logits

    def keep_worst(loss, logits):
        value = loss.mean().item()
        if math.isnan(value) or value > best["value"] or best["nu"] is None:
            best["value"] = value
            best["nu"] = [t.detach() for t in current["nu"]]

    model.eval()
    ascend(objective, variables, iterations, keep_worst)
    return best["value"], best["nu"]


def _reference(reference, y) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-example loss [N], per-example correctness [N] or None) from an AttackOutcome-like
    object or a bare loss tensor."""
    if isinstance(reference, torch.Tensor):
        return reference.float().cpu(), None
    correct = getattr(reference, "correct", None)
    return reference.loss.float().cpu(), None if correct is None else correct.cpu()


def _err(correct: torch.Tensor | None) -> float | None:
    return None if correct is None else engine.error_rate(correct)


def worst_paper(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    reference,
    eps: float = 0.0,
    norm: str = "linf",
    input_step: float | None = None,
    iterations: int = 20,
    restarts: int = 10,
    weight_lr: float = 0.01,
    weight_batch: int = 128,
    seed_keys: tuple = (0,),
) -> WorstResult:
    """The paper's estimator (module docstring), relative L2 ball ||nu_l|| <= xi ||w_l||.

    `reference`: RCE(w) per example (the attack's outcome at w with `loss`/`correct`, or a loss
    tensor [N]); for eps = 0 the clean loss. Attempt r starts nu from `uniform_norm_offset` with
    generator (seed_keys, "worst-weights", r) and delta from the r-th of `restart_starts` drawn
    with (seed_keys, "worst-input"). xi = 0: the ball is {w}, whose worst case over delta is
    RCE(w) itself, so flatness is 0 exactly and no ascent runs.
    """
    xi = weights.check_xi(xi)
    _check(iterations, restarts, weight_batch, weight_lr)
    ref_loss, ref_correct = _reference(reference, y)
    loss = ref_loss.mean().item()
    err = _err(ref_correct)
    robust = eps > 0
    measure = "worst" if robust else "clean-worst"
    if xi == 0:
        return WorstResult(
            measure, xi, "paper", loss, loss, 0.0, 0.0, loss, None, err, err, iterations, restarts
        )
    names, w = weights.named_weights(model)
    device = w[0].device
    ball = weights.RelativeL2Ball(xi).around(w)
    model.eval()
    n = len(y)
    batches = [slice(b, min(n, b + weight_batch)) for b in range(0, n, weight_batch)]
    threat = step = starts = None
    if robust:
        threat = make_threat(norm, eps)
        step = input_step if input_step is not None else PAPER_STEP_RATIO * eps
        gen = runtime.generator(*seed_keys, "worst-input")
        starts = restart_starts(threat, x.cpu(), gen, restarts)
    best_value, best_err, best_nu = -math.inf, None, None
    for r in range(restarts):
        nu = weights.uniform_norm_offset(w, xi, runtime.generator(*seed_keys, "worst-weights", r))
        deltas = [starts[r, i].to(device) if robust else None for i in batches]
        for _ in range(iterations):
            for b, index in enumerate(batches):
                xb, yb = x[index].to(device), y[index].to(device)
                nu, deltas[b] = _joint_step(
                    model, names, w, ball, nu, weight_lr, xb, yb, threat, deltas[b], step
                )
        value, wrong = _final_value(model, names, w, nu, x, y, batches, deltas)
        if math.isnan(value) or value > best_value:
            best_value, best_err, best_nu = value, wrong / n, nu
        if math.isnan(best_value):
            break
    note = None if math.isfinite(best_value) and math.isfinite(loss) else "non-finite loss"
    difference = best_value - loss
    return WorstResult(
        measure,
        xi,
        "paper",
        loss,
        best_value,
        difference,
        difference,
        best_value,
        None,
        err,
        best_err,
        iterations,
        restarts,
        note,
        best_nu,
    )


def _joint_step(model, names, w, ball, nu, weight_lr, xb, yb, threat, delta, step):
    """One joint step on the batch's mean loss: nu by the ball's normalized relative step, delta
    by the threat's signed step, both projected."""
    nu = [t.detach().requires_grad_(True) for t in nu]
    leaves = list(nu)
    if delta is not None:
        delta = delta.detach().requires_grad_(True)
        leaves.append(delta)
    with torch.enable_grad():
        inputs = xb if delta is None else xb + delta
        logits = weights.call_perturbed(model, nu, inputs, names, w)
        grads = torch.autograd.grad(
            ce_per_example(logits, yb).mean(), leaves, allow_unused=True, materialize_grads=True
        )
    with torch.no_grad():
        nu = ball.project(ball.step([t.detach() for t in nu], grads[: len(nu)], weight_lr), w)
        if delta is not None:
            delta = threat.project(threat.step(delta.detach(), grads[-1], step), xb)
    return nu, delta


def _final_value(model, names, w, nu, x, y, batches, deltas) -> tuple[float, int]:
    """Set-mean cross-entropy and the number misclassified at the final (nu, deltas)."""
    device = w[0].device
    total, wrong = 0.0, 0
    with torch.no_grad():
        for index, delta in zip(batches, deltas, strict=True):
            xb, yb = x[index].to(device), y[index].to(device)
            inputs = xb if delta is None else xb + delta
            logits = weights.call_perturbed(model, nu, inputs, names, w)
            total += ce_per_example(logits, yb).sum().item()
            wrong += (logits.argmax(1) != yb).sum().item()
    return total / len(y), wrong


def worst_per_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    reference,
    eps: float = 0.0,
    norm: str = "linf",
    input_step: float | None = None,
    iterations: int = 20,
    restarts: int = 10,
    weight_lr: float = 0.01,
    weight_batch: int = 128,
    seed_keys: tuple = (0,),
    attack=None,
    weight_norm: str = "l2",
) -> WorstResult:
    """flatcli's earlier estimator: per batch of `weight_batch` examples its own nu, `restarts`
    joint ascents (`joint_ascent`) from random starts on the sphere; the batch's value is the
    largest of the best iterate, the robust loss re-computed by `attack` at nu* (same starts as at
    w) and RCE at nu = 0, so flatness >= 0. `reference` as in `worst_paper`; `attack` (the
    engine's, drawn with seed_keys) is required for eps > 0."""
    xi = weights.check_xi(xi)
    _check(iterations, restarts, weight_batch, weight_lr)
    ref_loss, ref_correct = _reference(reference, y)
    _, w = weights.named_weights(model)
    ball = weights.ball_named(weight_norm)(xi).around(w)
    robust = eps > 0
    if robust and attack is None:
        raise UsageError("the per-batch worst case needs the attack behind RCE(w)")
    device = w[0].device
    model.eval()
    x_cpu = x.cpu()
    threat = step = starts = attack_starts = None
    if robust:
        threat = make_threat(norm, eps)
        step = input_step if input_step is not None else PAPER_STEP_RATIO * eps
        starts = restart_starts(
            threat, x_cpu, runtime.generator(*seed_keys, "worst-input"), restarts
        )
        attack_starts = attack.draw_starts(x_cpu, runtime.generator(*seed_keys, attack.name))
    n = len(y)
    totals = {"joint": 0.0, "again": 0.0, "value": 0.0, "wrong": 0}
    bad = 0
    for b, begin in enumerate(range(0, n, weight_batch)):
        index = slice(begin, min(n, begin + weight_batch))
        xb, yb = x[index].to(device), y[index].to(device)
        best_value, best_nu = -math.inf, None
        for r in range(restarts):
            nu0 = ball.random_start(w, runtime.generator(*seed_keys, "worst-weights", b, r))
            delta0 = slice_starts(starts[r : r + 1], index, device)[0] if robust else None
            value, nu = joint_ascent(
                model, xb, yb, ball, nu0, weight_lr, iterations, threat, delta0, step
            )
            if math.isnan(value) or value > best_value or best_nu is None:
                best_value, best_nu = value, nu
            if math.isnan(best_value):
                break
        candidates = [best_value, ref_loss[index].mean().item()]
        if robust and not math.isnan(best_value):
            with weights.perturbed(model, best_nu):
                again = attack(model, xb, yb, slice_starts(attack_starts, index, device))
            candidates.append(again.loss.mean().item())
            totals["again"] += candidates[-1] * len(yb)
            totals["wrong"] += int((~again.correct).sum().item())
        value = math.nan if any(math.isnan(c) for c in candidates) else max(candidates)
        bad += not math.isfinite(value)
        totals["joint"] += best_value * len(yb)
        totals["value"] += value * len(yb)
    loss = ref_loss.mean().item()
    perturbed = totals["value"] / n
    reattack = totals["again"] / n if robust else None
    unclamped = max(totals["joint"] / n, reattack if reattack is not None else -math.inf) - loss
    note = None
    if not math.isfinite(loss):
        note = "non-finite loss at the checkpoint"
    elif bad:
        note = f"non-finite loss after perturbation in {bad} batches"
    return WorstResult(
        "worst" if robust else "clean-worst",
        xi,
        "per-batch",
        loss,
        perturbed,
        perturbed - loss,
        unclamped,
        totals["joint"] / n,
        reattack,
        _err(ref_correct),
        totals["wrong"] / n if robust else None,
        iterations,
        restarts,
        note,
    )
