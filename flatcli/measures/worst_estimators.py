"""Worst-case flatness of the robust loss (docs/method.md): two estimators of
max_nu max_delta CE(f(x + delta; w + nu), y) - RCE(w) over the per-layer relative ball, `paper`
(`worst_paper`, the authors' code, the default) and `per-batch` (`worst_per_batch`).

Restarts run as one stacked batch (`weights.call_stacked`), `restarts_per_pass` at a time, with
the draws of one at a time, so stacking changes results only by float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli import engine, runtime, uncertainty, weights
from flatcli.ascent import Variable, ascend
from flatcli.attacks.base import ce_per_example, restart_starts, slice_starts
from flatcli.attacks.presets import PAPER_STEP_RATIO
from flatcli.attacks.threat import make_threat
from flatcli.errors import UsageError


@dataclass(kw_only=True)
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
    per_restart: list[float] | None = None  # each restart's flatness (its value - loss)
    loss_se: float | None = None  # of `loss`, over examples (`uncertainty.loss_se`)


@dataclass(frozen=True)
class Ascent:
    """The joint ascent of both estimators (docs/method.md; defaults: `FlatnessConfig`'s): input
    ball (`eps` 0: clean, `norm`, signed `input_step`, default PAPER_STEP_RATIO x eps), weight
    step `weight_lr`, `iterations` x `restarts` (restart r's draws from `seed_keys`, whatever
    the stacking), batches of `weight_batch` examples; `restarts_per_pass` (runtime) restarts
    run stacked, None: what fits on the device; `compile` (runtime): the policy of
    `flatcli.runtime` for the stacked model call."""

    eps: float
    norm: str
    input_step: float | None
    iterations: int
    restarts: int
    weight_lr: float
    weight_batch: int
    seed_keys: tuple = (0,)
    restarts_per_pass: int | None = None
    compile: str = "off"

    def call(self, device: torch.device):
        """`weights.call_stacked`, compiled when `compile` says so on `device`."""
        return runtime.compiled_function(weights.call_stacked, self.compile, device)

    def checked(self) -> Ascent:
        """This ascent, or a one-line `UsageError` for a count below 1 or a step that is not
        positive."""
        for name, value in [
            ("iterations", self.iterations),
            ("restarts", self.restarts),
            ("weight-batch", self.weight_batch),
        ]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name} must be an integer >= 1, got {value}")
        if not (self.weight_lr > 0 and math.isfinite(self.weight_lr)):
            raise UsageError(f"--weight-lr must be positive, got {self.weight_lr:g}")
        per_pass = self.restarts_per_pass
        if per_pass is not None and (isinstance(per_pass, bool) or per_pass < 1):
            raise UsageError(f"restarts per pass must be >= 1, got {per_pass}")
        return self


def joint_ascent_stacked(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ball,
    nu0s: Sequence[Sequence[torch.Tensor]],
    weight_lr: float,
    iterations: int,
    threat=None,
    delta0s: torch.Tensor | None = None,
    input_step: float | None = None,
    call=weights.call_stacked,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """G joint ascents in one stacked batch (the one `ascend` loop), each over its weight offset
    in `ball` (bound with `ball.around(w)`; normalized step `weight_lr`) from nu0s[g] and, with a
    `threat`, over the batch's input perturbation from delta0s[g] ([G, B, ...]; signed step
    `input_step`). Returns per setting the largest batch-mean cross-entropy over its iterates
    ([G] on the device; NaN once any is NaN) and per layer the [G, ...] offsets where they were
    reached. The settings do not interact: each equals its ascent run alone, up to rounding.
    `call`: `weights.call_stacked` or its compiled wrapper (`Ascent.call`)."""
    names, w = weights.named_weights(model)
    g = len(nu0s)
    xt, yt = x.repeat_interleave(g, 0), y.repeat_interleave(g, 0)
    variables = [Variable(_stack(nu0s), weights.StackedBall(ball), w, weight_lr)]
    if threat is not None:
        variables.append(Variable(_interleave(delta0s), threat, xt, input_step))
    state: dict = {}

    def objective(nu, delta=None):
        state["nu"] = nu
        logits = _logits_at(call, model, names, w, nu, xt if delta is None else xt + delta)
        return ce_per_example(logits, yt), logits

    def keep_worst(loss, logits):
        value = loss.view(-1, g).mean(0)
        nu = [t.detach() for t in state["nu"]]
        if "best" not in state:
            state["value"], state["best"] = value, nu
            return
        # as one at a time: a larger value or any NaN replaces the kept iterate (no host sync)
        take = value.isnan() | (value > state["value"])
        state["value"] = torch.where(take, value, state["value"])
        state["best"] = [_where(take, t, b) for t, b in zip(nu, state["best"], strict=True)]

    model.eval()
    ascend(objective, variables, iterations, keep_worst)
    return state["value"], state["best"]


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
    """One joint ascent (`joint_ascent_stacked` with G = 1): the largest batch-mean
    cross-entropy over the iterates and the offset nu where it was reached."""
    delta0s = None if delta0 is None else delta0.unsqueeze(0)
    value, nu = joint_ascent_stacked(
        model, x, y, ball, [nu0], weight_lr, iterations, threat, delta0s, input_step
    )
    return value[0].item(), [t[0] for t in nu]


def _stack(offsets: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """G offsets as per layer one [G, ...] tensor."""
    return [torch.stack(layer) for layer in zip(*offsets, strict=True)]


def _interleave(t: torch.Tensor) -> torch.Tensor:
    """[G, B, ...] -> [B * G, ...] with row i at setting i % G (`weights.call_stacked`)."""
    return t.transpose(0, 1).reshape(-1, *t.shape[2:])


def _tile(t: torch.Tensor, g: int, device) -> torch.Tensor:
    """Each row of t repeated g times in a row, on `device` (the interleaved rows of G settings)."""
    return t.to(device).repeat_interleave(g, 0)


def _where(take: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(take.view(-1, *[1] * (new.dim() - 1)), new, old)


def _logits_at(call, model, names, w, nu, inputs) -> torch.Tensor:
    """Logits of interleaved rows at w + nu_g (nu per layer [G, ...], float32), by `call`
    (`weights.call_stacked` or its compiled wrapper)."""
    params = [wl.float() + n for wl, n in zip(w, nu, strict=True)]
    return call(model, names, params, inputs)


def _reference(reference, y) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-example loss [N], per-example correctness [N] or None) from an AttackOutcome-like
    object or a bare loss tensor."""
    if isinstance(reference, torch.Tensor):
        return reference.float().cpu(), None
    correct = getattr(reference, "correct", None)
    return reference.loss.float().cpu(), None if correct is None else correct.cpu()


def _err(correct: torch.Tensor | None) -> float | None:
    return None if correct is None else engine.error_rate(correct)


def _input_ascent(ascent: Ascent, x: torch.Tensor):
    """(threat, signed step, starts [R, N, ...] drawn with (seed_keys, "worst-input")) of the
    input ascent, or three Nones for eps = 0 (the clean worst case)."""
    if ascent.eps <= 0:
        return None, None, None
    threat = make_threat(ascent.norm, ascent.eps)
    step = ascent.input_step if ascent.input_step is not None else PAPER_STEP_RATIO * ascent.eps
    gen = runtime.generator(*ascent.seed_keys, "worst-input")
    return threat, step, restart_starts(threat, x.cpu(), gen, ascent.restarts)


def _passes(model, x, ascent: Ascent) -> list[range]:
    """The restarts in groups of `restarts_per_pass` (default: what fits on the device for a
    batch of `weight_batch` rows, `runtime.settings_per_pass`)."""
    restarts, per_pass = ascent.restarts, ascent.restarts_per_pass
    if per_pass is None:
        rows = min(len(x), ascent.weight_batch)
        per_pass = runtime.settings_per_pass(model, x[:1], rows, restarts)
    return [range(b, min(restarts, b + per_pass)) for b in range(0, restarts, per_pass)]


def _keep(best: dict, values: Sequence[float], kept: Callable[[int], object]) -> bool:
    """Fold one pass's restart values into `best` as restarts one after another would: the first
    largest value is kept, and a NaN is kept and ends the search (returns True)."""
    for i, value in enumerate(values):
        if "value" not in best or math.isnan(value) or value > best["value"]:
            best.update(value=value, kept=kept(i))
        if math.isnan(best["value"]):
            return True
    return False


def worst_paper(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    reference,
    ascent: Ascent,
) -> WorstResult:
    """The paper's estimator, relative L2 ball ||nu_l|| <= xi ||w_l||: one offset nu for the whole
    set started uniformly in norm inside the ball; in each of `iterations` passes over the set,
    every batch of `weight_batch` examples takes one joint step of nu (normalized, relative) and
    of its own delta (signed); the value is the set-mean loss at the final iterate, the result
    the max over `restarts` attempts minus RCE(w), not clamped.

    `reference`: RCE(w) per example (the attack's outcome at w with `loss`/`correct`, or a loss
    tensor [N]); for eps = 0 the clean loss. Attempt r starts nu from `uniform_norm_offset` with
    generator (seed_keys, "worst-weights", r) and delta from the r-th of `restart_starts` drawn
    with (seed_keys, "worst-input"). Attempts are independent (each its own nu and deltas), so
    `restarts_per_pass` of them run stacked, exactly. xi = 0: the ball is {w}, whose worst case
    over delta is RCE(w) itself, so flatness is 0 exactly and no ascent runs.
    """
    xi = weights.check_xi(xi)
    ascent = ascent.checked()
    ref_loss, ref_correct = _reference(reference, y)
    loss = ref_loss.mean().item()
    err = _err(ref_correct)
    measure = "worst" if ascent.eps > 0 else "clean-worst"
    if xi == 0:
        return WorstResult(
            measure=measure, xi=xi, estimator="paper", loss=loss, perturbed_loss=loss,
            flatness=0.0, unclamped=0.0, joint_loss=loss, reattack_loss=None, err=err,
            perturbed_err=err, iterations=ascent.iterations, restarts=ascent.restarts,
            loss_se=uncertainty.loss_se(ref_loss),
        )  # fmt: skip
    names, w = weights.named_weights(model)
    device = w[0].device
    ball = weights.StackedBall(weights.RelativeL2Ball(xi).around(w))
    model.eval()
    n = len(y)
    batches = [slice(b, min(n, b + ascent.weight_batch)) for b in range(0, n, ascent.weight_batch)]
    threat, step, starts = _input_ascent(ascent, x)
    call = ascent.call(device)
    best: dict = {}
    attempts: list[float] = []  # each restart's value, in order
    for chunk in _passes(model, x, ascent):
        g = len(chunk)
        gens = [runtime.generator(*ascent.seed_keys, "worst-weights", r) for r in chunk]
        nu = _stack([weights.uniform_norm_offset(w, xi, gen) for gen in gens])
        rows = [(_tile(x[i], g, device), _tile(y[i], g, device)) for i in batches]
        deltas = [
            None if starts is None else _interleave(starts[chunk.start : chunk.stop, i].to(device))
            for i in batches
        ]
        for _ in range(ascent.iterations):
            for b, (xb, yb) in enumerate(rows):
                nu, deltas[b] = _joint_step(
                    call, model, names, w, ball, nu, ascent.weight_lr, xb, yb, threat, deltas[b],
                    step, g,
                )
        value, wrong = _final_value(call, model, names, w, nu, rows, deltas, g)
        wrong = wrong.tolist()
        kept = lambda i, nu=nu, wrong=wrong: ([t[i] for t in nu], wrong[i] / n)  # noqa: E731
        attempts += (value / n).tolist()
        if _keep(best, (value / n).tolist(), kept):
            break
    best_nu, best_err = best["kept"]
    best_value = best["value"]
    note = None if math.isfinite(best_value) and math.isfinite(loss) else "non-finite loss"
    difference = best_value - loss
    return WorstResult(
        measure=measure,
        xi=xi,
        estimator="paper",
        loss=loss,
        perturbed_loss=best_value,
        flatness=difference,
        unclamped=difference,
        joint_loss=best_value,
        reattack_loss=None,
        err=err,
        perturbed_err=best_err,
        iterations=ascent.iterations,
        restarts=ascent.restarts,
        note=note,
        nu=best_nu,
        per_restart=[a - loss for a in attempts],
        loss_se=uncertainty.loss_se(ref_loss),
    )


def _joint_step(call, model, names, w, ball, nu, weight_lr, xb, yb, threat, delta, step, g):
    """One joint step of G settings (interleaved rows) on each setting's batch-mean loss, by the
    one `ascend` loop (one step, the new iterate not evaluated): nu by the ball's normalized
    relative step, delta by the threat's signed step, both projected."""
    variables = [Variable(nu, ball, w, weight_lr)]
    if delta is not None:
        variables.append(Variable(delta, threat, xb, step))
    rows = len(yb) // g  # per setting

    def objective(nu, delta=None):
        logits = _logits_at(call, model, names, w, nu, xb if delta is None else xb + delta)
        # summed: the settings' batch means, so each setting's gradients are as if it ran alone
        return ce_per_example(logits, yb) / rows, logits

    values = ascend(objective, variables, 1, evaluate_final=False)
    return values[0], values[1] if delta is not None else None


def _final_value(call, model, names, w, nu, rows, deltas, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Per setting the summed cross-entropy (float64 [G]) and the number misclassified ([G]) at
    the final (nu, deltas), on the device (no host sync)."""
    device = w[0].device
    total = torch.zeros(g, dtype=torch.float64, device=device)
    wrong = torch.zeros(g, dtype=torch.long, device=device)
    with torch.no_grad():
        for (xb, yb), delta in zip(rows, deltas, strict=True):
            logits = _logits_at(call, model, names, w, nu, xb if delta is None else xb + delta)
            total += ce_per_example(logits, yb).view(-1, g).double().sum(0)
            wrong += (logits.argmax(1) != yb).view(-1, g).sum(0)
    return total, wrong


def worst_per_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    reference,
    ascent: Ascent,
    attack=None,
    weight_norm: str = "l2",
) -> WorstResult:
    """flatcli's earlier estimator: per batch of `weight_batch` examples its own nu, `restarts`
    joint ascents (`joint_ascent_stacked`, `restarts_per_pass` at a time) from random starts on
    the sphere (generator (seed_keys, "worst-weights", batch, r)); the batch's value is the
    largest of the best iterate, the robust loss re-computed by `attack` at nu* (same starts as
    at w) and RCE at nu = 0, so flatness >= 0 (one-at-a-time restarts' value, clamped).
    `reference` as in `worst_paper`; `attack` (the engine's, drawn with seed_keys) is required
    for eps > 0."""
    xi = weights.check_xi(xi)
    ascent = ascent.checked()
    ref_loss, ref_correct = _reference(reference, y)
    _, w = weights.named_weights(model)
    ball = weights.ball_named(weight_norm)(xi).around(w)
    robust = ascent.eps > 0
    if robust and attack is None:
        raise UsageError("the per-batch worst case needs the attack behind RCE(w)")
    device = w[0].device
    model.eval()
    threat, step, starts = _input_ascent(ascent, x)
    attack_starts = None
    if robust:
        generator = runtime.generator(*ascent.seed_keys, attack.name)
        attack_starts = attack.draw_starts(x.cpu(), generator)
    n = len(y)
    totals = {"joint": 0.0, "again": 0.0, "value": 0.0, "wrong": 0}
    bad = 0
    per_restart: list[float] = []  # each restart's example-weighted sum of its batch values
    passes = _passes(model, x, ascent)
    for b, begin in enumerate(range(0, n, ascent.weight_batch)):
        index = slice(begin, min(n, begin + ascent.weight_batch))
        xb, yb = x[index].to(device), y[index].to(device)
        best: dict = {}
        tried: list[float] = []
        for chunk in passes:
            nu0s = [
                ball.random_start(w, runtime.generator(*ascent.seed_keys, "worst-weights", b, r))
                for r in chunk
            ]
            delta0s = (
                None
                if starts is None
                else slice_starts(starts[chunk.start : chunk.stop], index, device)
            )
            values, nus = joint_ascent_stacked(
                model, xb, yb, ball, nu0s, ascent.weight_lr, ascent.iterations, threat, delta0s,
                step, ascent.call(device),
            )
            tried += values.tolist()
            if _keep(best, values.tolist(), lambda i, nus=nus: [t[i] for t in nus]):
                break
        # a restart counts when every batch ran it (a NaN ends a batch's restarts early)
        sums = per_restart or [0.0] * len(tried)
        per_restart = [a + t * len(yb) for a, t in zip(sums, tried, strict=False)]
        best_value, best_nu = best["value"], best["kept"]
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
        measure="worst" if robust else "clean-worst",
        xi=xi,
        estimator="per-batch",
        loss=loss,
        perturbed_loss=perturbed,
        flatness=perturbed - loss,
        unclamped=unclamped,
        joint_loss=totals["joint"] / n,
        reattack_loss=reattack,
        err=_err(ref_correct),
        perturbed_err=totals["wrong"] / n if robust else None,
        iterations=ascent.iterations,
        restarts=ascent.restarts,
        note=note,
        per_restart=[t / n - loss for t in per_restart],
        loss_se=uncertainty.loss_se(ref_loss),
    )
