"""Flatness of the robust loss (PAPER.md): average- and worst-case, and the Hessian's λmax/trace.

Thin compositions of the robust-loss engine (`flatcli.engine`), the one ascent loop
(`flatcli.attacks.ascent`) and the weight-space geometry (`flatcli.weights`):

- `average_flatness`: for each of `samples` random offsets nu on the sphere of the relative ball
  (||nu_l|| = xi ||w_l|| per layer), apply nu in place (no model copy), re-run the attack on the
  perturbed weights (fresh adversarial examples) and take mean_nu RCE(w + nu) - RCE(w). The clean
  loss comes with every evaluation, so the clean variant (eps = 0) is free.
- `worst_flatness`: per batch of `weight_batch` examples, maximise the batch's mean cross-entropy
  jointly over one weight offset nu (relative ball, normalized step `weight_lr`) and a per-example
  input perturbation delta (signed step), `iterations` steps from `restarts` random starts; the
  batch's value is the largest of: the mean loss at any iterate of any restart, the attack's robust
  loss re-computed at the best nu found, and RCE at nu = 0 (all valid points of the joint ball);
  flatness = the example-weighted mean over batches - RCE(w) >= 0. eps = 0: over nu only.
- `hessian_eigen`: Lanczos (full reorthogonalisation) on Hessian-vector products of the mean
  cross-entropy w.r.t. the layers, at fixed adversarial examples (the attack's worst point per
  example, exactly those behind RCE) or at the clean examples; Hutchinson's estimate of the trace
  with Rademacher probes.

Random draws and common random numbers: weight directions come from
`runtime.generator(*seed_keys, ...)` per sample (average) or per (batch, restart) (worst) and do
not depend on xi, so a grid of xi reuses the same directions; the input attack's starts are the
ones the engine draws for the whole set from `seed_keys`, for RCE(w) and for every RCE(w + nu)
alike. Results therefore do not depend on the batch size (the worst-case `weight_batch` is part of
the definition: one nu per batch), and xi = 0 gives flatness 0 exactly.

`flatness_measure(config, device)` -> `measure(ref) -> rows` for `flatcli.sweep.run`, like
`flatcli.evaluation.attack_measure`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import data, engine, evaluation, runtime, weights
from flatcli.attacks.ascent import Variable, ascend
from flatcli.attacks.base import ce_per_example, restart_starts, slice_starts
from flatcli.attacks.presets import PAPER_STEP_RATIO, build_attack
from flatcli.attacks.threat import make_threat
from flatcli.config import AVERAGE_XI, WORST_XI, FlatnessConfig, config_hash
from flatcli.errors import CheckpointError, UsageError

MEASURES = ("average", "worst", "clean-average", "clean-worst", "hessian", "clean-hessian")
AVERAGE_MEASURES = ("average", "clean-average")
WORST_MEASURES = ("worst", "clean-worst")
HESSIAN_MEASURES = ("hessian", "clean-hessian")


@dataclass
class FlatnessResult:
    """One measure at one xi. Losses in nats; `loss` is at the checkpoint's weights.

    average: perturbed_loss = mean over samples of the loss at w + nu; per_sample = each sample's
    flatness (perturbed - loss); flatness_std = their standard deviation (ddof 1).
    worst: perturbed_loss = the worst mean loss found (example-weighted over batches).
    Clean measures hold clean cross-entropies in the same fields.
    """

    measure: str
    xi: float
    loss: float
    perturbed_loss: float
    flatness: float
    flatness_std: float | None = None
    per_sample: list[float] | None = None
    samples: int | None = None
    iterations: int | None = None
    restarts: int | None = None
    note: str | None = None


@dataclass
class HessianResult:
    """Largest eigenvalue and trace of the Hessian of the mean cross-entropy w.r.t. the layers."""

    measure: str  # hessian | clean-hessian
    loss: float  # the mean cross-entropy at the points used (RCE or clean loss)
    lambda_max: float
    trace: float
    trace_std: float | None  # standard deviation of the Hutchinson probes
    trace_samples: list[float]
    ritz_values: list[float]  # eigenvalues of the Lanczos tridiagonal matrix (ascending)
    iterations: int
    probes: int
    note: str | None = None


def check_xi(xi: float) -> float:
    if isinstance(xi, bool) or not isinstance(xi, (int, float)):
        raise UsageError(f"--xi must be a number, got {xi!r}")
    if not math.isfinite(xi) or xi < 0:
        raise UsageError(f"--xi must be a finite number >= 0, got {xi:g}")
    return float(xi)


def _xi_list(xi: float | Sequence[float]) -> list[float]:
    values = [xi] if isinstance(xi, (int, float)) else list(xi)
    if not values:
        raise UsageError("--xi: give at least one value")
    return [check_xi(v) for v in values]


def _ball(weight_norm: str):
    if weight_norm not in weights.WEIGHT_NORMS:
        raise UsageError(f"--weight-norm {weight_norm!r}: choose l2 or linf")
    return weights.WEIGHT_NORMS[weight_norm]


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _std(values: Sequence[float]) -> float | None:
    if len(values) < 2 or not all(_finite(v) for v in values):
        return None
    return statistics.stdev(values)


def _clean_list(values: Sequence[float]) -> list[float | None]:
    return [v if _finite(v) else None for v in values]


def _nonfinite_note(reference: float, values: Sequence[float], what: str) -> str | None:
    if not _finite(reference):
        return "non-finite loss at the checkpoint"
    bad = sum(not _finite(v) for v in values)
    if bad:
        return f"non-finite loss after perturbation in {bad} of {len(values)} {what}"
    return None


# ---------------------------------------------------------------------------------------------
# Average case


def average_flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float | Sequence[float],
    samples: int = 10,
    attack=None,
    seed_keys: tuple = (0,),
    batch_size: int = 512,
    reference: engine.ExampleLosses | None = None,
    weight_norm: str = "l2",
    on_batch: Callable[[int, int], None] | None = None,
) -> list[FlatnessResult]:
    """Average-case flatness at each xi: "clean-average" results, and "average" (of the robust
    loss, re-running `attack` on every perturbed model) when an attack is given.

    `reference`: the engine's result at w with the same attack and seed_keys, if already computed.
    The model is evaluated in place (eval mode) and restored bitwise.
    """
    xis = _xi_list(xi)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UsageError(f"--samples must be a positive integer, got {samples}")
    w = [p.detach() for _, p in weights.require_layers(model)]
    ball = _ball(weight_norm)
    attacks = [attack] if attack is not None else []
    if reference is None:
        reference = engine.robust_losses(model, x, y, attacks, seed_keys, batch_size)
    clean_ref = reference.clean_loss.mean().item()
    robust_ref = reference.robust[attack.name].loss.mean().item() if attack is not None else None
    clean = {v: [] for v in xis}
    robust = {v: [] for v in xis}
    for s in range(samples):
        # One direction per sample, shared by every xi (common random numbers across the grid).
        unit = ball(1.0).random_start(w, runtime.generator(*seed_keys, "weight-direction", s))
        for v in xis:
            with weights.perturbed(model, [v * u for u in unit]):
                out = engine.robust_losses(model, x, y, attacks, seed_keys, batch_size, on_batch)
            clean[v].append(out.clean_loss.mean().item())
            if attack is not None:
                robust[v].append(out.robust[attack.name].loss.mean().item())
    results = []
    for measure, ref, values, steps, restarts in [
        (
            "average",
            robust_ref,
            robust,
            getattr(attack, "steps", None),
            getattr(attack, "restarts", None),
        ),
        ("clean-average", clean_ref, clean, None, None),
    ]:
        if ref is None:
            continue
        for v in xis:
            per = [p - ref for p in values[v]]
            mean = sum(values[v]) / len(values[v])
            results.append(
                FlatnessResult(
                    measure,
                    v,
                    loss=ref,
                    perturbed_loss=mean,
                    flatness=mean - ref,
                    flatness_std=_std(per),
                    per_sample=_clean_list(per),
                    samples=samples,
                    iterations=steps,
                    restarts=restarts,
                    note=_nonfinite_note(ref, values[v], "samples"),
                )
            )
    return results


# ---------------------------------------------------------------------------------------------
# Worst case


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
    (bound to the weights with `ball.around(w)`; normalized step `weight_lr`) and, with a
    `threat`, the input perturbation of the batch (x, y on the model's device) from `delta0`
    (signed step `input_step`). Returns the largest batch-mean cross-entropy over the iterates
    (NaN once any is NaN) and the offset nu where it was reached (float32, detached).
    """
    found = weights.require_layers(model)
    names = [n for n, _ in found]
    w = [p.detach() for _, p in found]
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


def worst_flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    eps: float = 0.0,
    norm: str = "linf",
    input_step: float | None = None,
    iterations: int = 20,
    restarts: int = 10,
    weight_lr: float = 0.01,
    weight_batch: int = 128,
    seed_keys: tuple = (0,),
    reference: torch.Tensor | None = None,
    attack=None,
    batch_size: int = 512,
    weight_norm: str = "l2",
) -> FlatnessResult:
    """Worst-case flatness at xi (PAPER.md): "worst" for eps > 0, "clean-worst" for eps = 0.

    Per batch of `weight_batch` examples (one weight offset per batch): projected ascent (the one
    `ascend` loop) jointly over nu in the relative ball (`weight_norm` l2: ||nu_l|| <= xi ||w_l||,
    normalized step weight_lr * ||w_l||) and, for eps > 0, the input perturbation in the `norm`
    ball (signed step `input_step`, default PAPER.md's 0.2229 * eps), `iterations` steps from
    `restarts` random starts. The batch's worst loss is the largest of three valid lower bounds
    of max_nu max_delta (each is a point of the ball):
      - the batch-mean loss at any iterate of any restart;
      - the robust loss re-computed by `attack` at the best offset nu* found (same starts as at w,
        per-example worst over the attack's iterates and restarts);
      - the loss at w itself (nu = 0 is in the ball), so flatness is never negative.
    `attack` defaults to PGD with the ascent's iterations, step and restarts. `reference`: the
    per-example loss at w [N] from the same attack and seed_keys (RCE, or the clean loss); computed
    if None. Offsets and perturbed weights are float32; the model is restored bitwise.
    """
    xi = check_xi(xi)
    for name, value in [
        ("iterations", iterations),
        ("restarts", restarts),
        ("weight-batch", weight_batch),
    ]:
        if value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if not (weight_lr > 0 and math.isfinite(weight_lr)):
        raise UsageError(f"--weight-lr must be positive, got {weight_lr:g}")
    w = [p.detach() for _, p in weights.require_layers(model)]
    ball = _ball(weight_norm)(xi).around(w)
    robust = eps > 0
    device = w[0].device
    model.eval()
    x_cpu = x.cpu()
    attack_starts = threat = step = None
    if robust:
        threat = make_threat(norm, eps)
        step = input_step if input_step is not None else PAPER_STEP_RATIO * eps
        gen = runtime.generator(*seed_keys, "worst-input")
        starts = restart_starts(threat, x_cpu, gen, restarts)
        if attack is None:
            from flatcli.attacks.pgd import PGD

            attack = PGD(f"pgd{iterations}x{restarts}", norm, eps, iterations, step, restarts)
        # The engine's starts for this attack: RCE(w + nu*) is paired with RCE(w).
        attack_starts = attack.draw_starts(x_cpu, runtime.generator(*seed_keys, attack.name))
    if reference is None:
        ref = engine.robust_losses(model, x, y, [attack] if robust else [], seed_keys, batch_size)
        reference = ref.robust[attack.name].loss if robust else ref.clean_loss
    reference = reference.float().cpu()

    n = len(y)
    per_batch = []
    total = 0.0
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
        candidates = [best_value, reference[index].mean().item()]
        if robust and not math.isnan(best_value):
            with weights.perturbed(model, best_nu):
                again = attack(model, xb, yb, slice_starts(attack_starts, index, device))
            candidates.append(again.loss.mean().item())
        value = math.nan if any(math.isnan(c) for c in candidates) else max(candidates)
        per_batch.append(value)
        total += value * len(yb)
    perturbed_loss = total / n
    loss = reference.mean().item()
    return FlatnessResult(
        "worst" if robust else "clean-worst",
        xi,
        loss,
        perturbed_loss,
        perturbed_loss - loss,
        iterations=iterations,
        restarts=restarts,
        note=_nonfinite_note(loss, per_batch, "batches"),
    )


# ---------------------------------------------------------------------------------------------
# Hessian


def adversarial_examples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack,
    seed_keys: tuple = (0,),
    batch_size: int = 512,
) -> torch.Tensor:
    """x + delta at the worst point (largest cross-entropy over all iterates and restarts) of the
    PGD `attack` for each example, with the starts the engine draws: the points behind its RCE.

    Returned on x's device. `attack` must be PGD-like (threat, steps, step_size, restarts).
    """
    if not all(hasattr(attack, a) for a in ("threat", "steps", "step_size", "restarts")):
        raise UsageError(f"attack {attack.name!r} is not PGD: the Hessian needs a pgd preset")
    device = next(model.parameters()).device
    model.eval()
    starts = attack.draw_starts(x.cpu(), runtime.generator(*seed_keys, attack.name))
    out = torch.empty_like(x)
    r = attack.restarts
    for begin in range(0, len(y), batch_size):
        index = slice(begin, min(len(y), begin + batch_size))
        xb, yb = x[index].to(device), y[index].to(device)
        b = len(yb)
        xr = xb.repeat(r, *([1] * (xb.dim() - 1)))
        yr = yb.repeat(r)
        s = slice_starts(starts, index, device)
        delta0 = torch.zeros_like(xr) if s is None else s.reshape(xr.shape).to(xr.dtype)
        best = torch.full((r * b,), -math.inf, device=device)
        best_delta = delta0.clone()
        current = {}

        def objective(delta, xr=xr, yr=yr, current=current):
            current["delta"] = delta
            logits = model(xr + delta)
            return ce_per_example(logits, yr), logits

        def keep_worst(loss, logits, best=best, best_delta=best_delta, current=current):
            better = loss > best
            best[better] = loss[better]
            best_delta[better] = current["delta"].detach()[better]

        ascend(
            objective,
            [Variable(delta0, attack.threat, xr, attack.step_size)],
            attack.steps,
            keep_worst,
        )
        pick = best.view(r, b).argmax(0)
        points = (xr + best_delta).view(r, b, *xb.shape[1:])[pick, torch.arange(b, device=device)]
        out[index] = points.to(out.device)
    return out


def hvp_operator(model, x, y, names, w, batch_size):
    """v (flat [P]) -> H v (flat [P]) for the mean cross-entropy over (x, y) w.r.t. the layers."""
    n = len(y)
    device = w[0].device

    def hvp(v: torch.Tensor) -> torch.Tensor:
        vs = weights.unflatten(v, w)
        out = torch.zeros_like(v)
        for begin in range(0, n, batch_size):
            index = slice(begin, min(n, begin + batch_size))
            xb, yb = x[index].to(device), y[index].to(device)
            params = [t.detach().float().requires_grad_(True) for t in w]
            with torch.enable_grad():
                logits = torch.func.functional_call(
                    model, dict(zip(names, params, strict=True)), (xb,)
                )
                loss = ce_per_example(logits, yb).sum() / n
                grads = torch.autograd.grad(
                    loss, params, create_graph=True, allow_unused=True, materialize_grads=True
                )
                dot = sum((g * u).sum() for g, u in zip(grads, vs, strict=True) if g.requires_grad)
                if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                    continue  # the loss is linear in every layer here: zero curvature
                hv = torch.autograd.grad(dot, params, allow_unused=True, materialize_grads=True)
            out += weights.flatten(hv)
        return out

    return hvp


def lanczos(
    hvp: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Eigenvalues (ascending, float64) of the Lanczos tridiagonal matrix after `iterations`
    Hessian-vector products from start `v0`, with full reorthogonalisation (memory: iterations
    vectors of the parameter count). The largest approximates λmax from below."""
    q = v0 / v0.norm().clamp_min(1e-30)
    basis = [q]
    alphas, betas = [], []
    for j in range(min(iterations, v0.numel())):
        z = hvp(basis[-1])
        alpha = torch.dot(z, basis[-1])
        alphas.append(alpha.item())
        q_mat = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan): keeps the basis orthogonal in float32
            z = z - q_mat.T @ (q_mat @ z)
        beta = z.norm()
        if j == iterations - 1 or beta.item() <= 1e-7 * max(abs(a) for a in alphas) + 1e-30:
            break
        betas.append(beta.item())
        basis.append(z / beta)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(t)


def hessian_eigen(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack=None,
    iterations: int = 20,
    probes: int = 10,
    seed_keys: tuple = (0,),
    batch_size: int = 512,
) -> HessianResult:
    """λmax (Lanczos, `iterations` Hessian-vector products) and trace (Hutchinson, `probes`
    Rademacher probes) of the Hessian of the mean cross-entropy w.r.t. the layers (normalization
    excluded), at the adversarial examples of the PGD `attack` ("hessian") or at the clean examples
    ("clean-hessian").

    Not scale-invariant (PAPER.md): multiplying conv weights before BN by a scales their block by
    1 / a^2.
    """
    if iterations < 1 or probes < 1:
        raise UsageError("the Hessian needs --iterations >= 1 and --samples (probes) >= 1")
    found = weights.require_layers(model)
    names = [n for n, _ in found]
    w = [p.detach() for _, p in found]
    model.eval()
    points = (
        x if attack is None else adversarial_examples(model, x, y, attack, seed_keys, batch_size)
    )
    device = w[0].device
    with torch.inference_mode():
        loss = sum(
            ce_per_example(
                model(points[i : i + batch_size].to(device)), y[i : i + batch_size].to(device)
            )
            .sum()
            .item()
            for i in range(0, len(y), batch_size)
        ) / len(y)
    hvp = hvp_operator(model, points, y, names, w, batch_size)
    size = sum(t.numel() for t in w)
    gen = runtime.generator(*seed_keys, "hessian")
    v0 = torch.randn(size, generator=gen, dtype=torch.float32).to(device)
    ritz = lanczos(hvp, v0, iterations)
    samples = []
    for _ in range(probes):
        v = (torch.randint(0, 2, (size,), generator=gen) * 2 - 1).to(device, torch.float32)
        samples.append(torch.dot(v, hvp(v)).item())
    trace = sum(samples) / probes
    values = [float(r) for r in ritz.tolist()]
    note = None if all(_finite(v) for v in [loss, trace, *values]) else "non-finite Hessian"
    return HessianResult(
        "hessian" if attack is not None else "clean-hessian",
        loss,
        values[-1],
        trace,
        _std(samples),
        samples,
        values,
        len(values),
        probes,
        note,
    )


# ---------------------------------------------------------------------------------------------
# The sweep's measure


def xis_for(config: FlatnessConfig, measure: str) -> tuple[float, ...]:
    """--xi values, or the paper's default for the measure (0.5 average, 0.00075 worst)."""
    if config.xi is not None:
        return config.xi
    return (AVERAGE_XI,) if measure in AVERAGE_MEASURES else (WORST_XI,)


def _robust_measures(measures) -> bool:
    return any(m in ("average", "worst", "hessian") for m in measures)


def resolve_flatness_config(config: FlatnessConfig, refs: Sequence) -> FlatnessConfig:
    """Fill the dataset's defaults and validate every option cheaply, before any work."""
    measures = tuple(dict.fromkeys(config.measures))
    if not measures:
        raise UsageError("--measure: give at least one of " + ", ".join(MEASURES))
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise UsageError(f"unknown measure {unknown[0]!r}; choose from {', '.join(MEASURES)}")
    xi = None if config.xi is None else tuple(_xi_list(config.xi))
    for name, value, low in [
        ("samples", config.samples, 1),
        ("iterations", config.iterations, 1),
        ("restarts", config.restarts, 1),
        ("weight-batch", config.weight_batch, 1),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"--{name} must be an integer >= {low}, got {value}")
    if not (config.weight_lr > 0 and math.isfinite(config.weight_lr)):
        raise UsageError(f"--weight-lr must be positive, got {config.weight_lr:g}")
    _ball(config.weight_norm)
    resolved = evaluation.resolve_common(config, refs)
    resolved = dataclasses.replace(resolved, measures=measures, xi=xi)
    if _robust_measures(measures):
        attack = build_attack(resolved.attack, resolved.norm, resolved.eps, resolved.step_size)
        if not attack.estimates_loss:
            raise UsageError(
                f"--attack {resolved.attack} does not estimate the robust loss; use a pgd preset "
                "or apgd-ce"
            )
        if "hessian" in measures and not hasattr(attack, "step_size"):
            raise UsageError(f"--attack {resolved.attack}: the Hessian needs a pgd preset")
    return resolved


def flatness_measure(
    config: FlatnessConfig, device: torch.device, on_batch: Callable[[int, int], None] | None = None
):
    """`measure(ref) -> rows` for the flatness table: one row per (measure, xi) of a checkpoint.

    `config` must be resolved (`resolve_flatness_config`).
    """
    chash = config_hash(config)
    x, y = data.load_split(config.dataset, config.split, config.n_examples, config.data_dir)
    measures = config.measures
    robust = _robust_measures(measures)
    attack = (
        build_attack(config.attack, config.norm, config.eps, config.step_size, config.seed)
        if robust
        else None
    )

    def measure(ref) -> list[dict]:
        model, info = evaluation.load_for_eval(ref, config, device)
        if not weights.layers(model):
            raise CheckpointError(
                f"{ref.path}: no perturbable layers (weights or biases outside normalization)"
            )
        model_note = evaluation.nonfinite_note(model)
        keys = evaluation.seed_keys(config, ref)
        needs_reference = robust and any(m in measures for m in ("average", "worst"))
        reference = engine.robust_losses(
            model, x, y, [attack] if needs_reference else [], keys, config.batch_size, on_batch
        )
        results: list[FlatnessResult | HessianResult] = []
        if any(m in measures for m in AVERAGE_MEASURES):
            want_robust = "average" in measures
            found = average_flatness(
                model,
                x,
                y,
                xis_for(config, "average"),
                samples=config.samples,
                attack=attack if want_robust else None,
                seed_keys=keys,
                batch_size=config.batch_size,
                reference=reference,
                weight_norm=config.weight_norm,
                on_batch=on_batch,
            )
            results += [r for r in found if r.measure in measures]
        for m in WORST_MEASURES:
            if m not in measures:
                continue
            clean = m == "clean-worst"
            ref_loss = reference.clean_loss if clean else reference.robust[attack.name].loss
            for v in xis_for(config, m):
                results.append(
                    worst_flatness(
                        model,
                        x,
                        y,
                        v,
                        eps=0.0 if clean else config.eps,
                        norm=config.norm,
                        input_step=config.step_size,
                        iterations=config.iterations,
                        restarts=config.restarts,
                        weight_lr=config.weight_lr,
                        weight_batch=config.weight_batch,
                        seed_keys=keys,
                        reference=ref_loss,
                        attack=attack,
                        batch_size=config.batch_size,
                        weight_norm=config.weight_norm,
                    )
                )
        for m in HESSIAN_MEASURES:
            if m in measures:
                results.append(
                    hessian_eigen(
                        model,
                        x,
                        y,
                        attack=None if m == "clean-hessian" else attack,
                        iterations=config.iterations,
                        probes=config.samples,
                        seed_keys=keys,
                        batch_size=config.batch_size,
                    )
                )
        base = evaluation.key_columns(ref, info, config, chash, device)
        return [_row(base, r, config, model_note) for r in results]

    return measure


def _row(base: dict, r, config: FlatnessConfig, model_note: str | None) -> dict:
    clean = r.measure.startswith("clean-")
    note = "; ".join(n for n in (model_note, r.note) if n) or None
    common = {
        **base,
        "eps": 0.0 if clean else config.eps,
        "measure": r.measure,
        "attack": None if clean else config.attack,
        "note": note,
    }
    if isinstance(r, HessianResult):
        return {
            **common,
            "samples": r.probes,
            "iterations": r.iterations,
            "robust_loss": r.loss,
            "lambda_max": r.lambda_max,
            "hessian_trace": r.trace,
            "per_sample": _clean_list(r.trace_samples),
        }
    worst = r.measure in WORST_MEASURES
    return {
        **common,
        "xi": r.xi,
        "samples": r.samples,
        "iterations": r.iterations,
        "restarts": r.restarts,
        "weight_lr": config.weight_lr if worst else None,
        "robust_loss": r.loss,
        "perturbed_robust_loss": r.perturbed_loss,
        "flatness": r.flatness,
        "flatness_std": r.flatness_std,
        "per_sample": r.per_sample,
    }
