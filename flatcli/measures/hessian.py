"""The Hessian of the cross-entropy w.r.t. the weights: λmax (Lanczos), trace (Hutchinson) and top
eigenvectors, in the variants `flatcli` and `paper` (docs/method.md, "Other sharpness measures"):
the measures hessian, clean-hessian and paper-hessian, and the landscape's Hessian directions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import engine, evaluation, runtime, weights
from flatcli.attacks.base import ce_per_example
from flatcli.config.commands import EVAL_BATCH, ITERATIONS, SAMPLES
from flatcli.errors import UsageError
from flatcli.measures import register
from flatcli.measures.flatness import HESSIAN_MEASURES, FlatnessInputs, finite_or_none

VARIANTS = ("flatcli", "paper")
PAPER_BATCH = 128  # the paper's code sums Hessian-vector products over batches of 128


@dataclass(kw_only=True)
class HessianResult:
    """Largest eigenvalue and trace of the Hessian of the cross-entropy w.r.t. the layers."""

    measure: str
    loss: float  # the mean cross-entropy at the points used (RCE or clean loss)
    lambda_max: float
    trace: float
    trace_std: float | None  # standard deviation of the Hutchinson probes
    trace_samples: list[float]
    ritz_values: list[float]  # eigenvalues of the Lanczos tridiagonal matrix (ascending)
    iterations: int
    probes: int
    variant: str = "flatcli"
    note: str | None = None
    examples: int | None = None  # the examples behind the Hessian


def adversarial_points(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
) -> torch.Tensor:
    """x + delta where the one PGD (`attack`) found each example's robust loss, through the
    engine (`keep_points`) with its starts for `seed_keys`: exactly the points behind RCE. On x's
    device."""
    if not getattr(attack, "step_size", None):
        raise UsageError(f"attack {attack.name!r} is not PGD: the Hessian needs a pgd preset")
    found = engine.robust_losses(model, x, y, [attack], seed_keys, batch_size, keep_points=True)
    return found.robust[attack.name].points


def paper_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The paper's Hessian parameters: the layers with more than one dimension (no biases)."""
    found = [(n, p) for n, p in weights.require_layers(model) if p.dim() > 1]
    if not found:
        raise UsageError("the model has no weight tensors with more than one dimension")
    return found


def hvp_operator(model, x, y, names, w, batch_size, summed_batches: bool = False):
    """v (flat [P]) -> H v (flat [P]) of the cross-entropy over (x, y) w.r.t. the tensors `w`
    (named `names`; other parameters fixed). Mean over all examples, or with `summed_batches`
    the sum over batches of `batch_size` of each batch's mean (the paper's code)."""
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
                per = ce_per_example(logits, yb)
                loss = per.mean() if summed_batches else per.sum() / n
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
    steps = min(iterations, v0.numel())
    for j in range(steps):  # no host sync: a breakdown is found afterwards
        z = hvp(basis[-1])
        alphas.append(torch.dot(z, basis[-1]))
        if j == steps - 1:
            break
        q_mat = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan): keeps the basis orthogonal in float32
            z = z - q_mat.T @ (q_mat @ z)
        betas.append(z.norm())
        basis.append(z / betas[-1].clamp_min(1e-30))
    a = torch.stack(alphas).double().cpu()
    b = torch.stack(betas).double().cpu() if betas else torch.zeros(0, dtype=torch.float64)
    # The recurrence ends at the first breakdown (beta tiny against the alphas so far), as if
    # it had stopped there: what came after it is discarded.
    tolerance = 1e-7 * a.abs().cummax(0).values[: len(b)] + 1e-30
    broken = (b <= tolerance).nonzero()
    k = int(broken[0]) + 1 if len(broken) else len(a)
    t = torch.diag(a[:k])
    if k > 1:
        t += torch.diag(b[: k - 1], 1) + torch.diag(b[: k - 1], -1)
    return torch.linalg.eigvalsh(t)


def _mean_loss(model, points, y, batch_size) -> float:
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            xb, yb = points[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            total += ce_per_example(model(xb), yb).double().sum()
    return total.item() / len(y)


def hessian_eigen(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack=None,
    iterations: int = ITERATIONS,
    probes: int = SAMPLES,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
    variant: str = "flatcli",
    measure: str | None = None,
) -> HessianResult:
    """λmax (Lanczos, `iterations` Hessian-vector products) and trace (Hutchinson, `probes`
    Rademacher probes) of the Hessian of the cross-entropy w.r.t. the weights.

    variant `flatcli`: mean over (x, y), every layer, at the PGD `attack`'s worst points (or clean
    without an attack). variant `paper`: clean, weights with dim > 1, Hessian-vector products
    summed over batches of `PAPER_BATCH` (pass the held-out examples as x, y).
    """
    if variant not in VARIANTS:
        raise UsageError(f"Hessian variant {variant!r}: choose {', '.join(VARIANTS)}")
    if iterations < 1 or probes < 1:
        raise UsageError("the Hessian needs --iterations >= 1 and --samples (probes) >= 1")
    paper = variant == "paper"
    names, w = weights.named_weights(model, paper_layers(model) if paper else None)
    model.eval()
    use_attack = None if paper else attack
    points = (
        x if use_attack is None else adversarial_points(model, x, y, attack, seed_keys, batch_size)
    )
    loss = _mean_loss(model, points, y, batch_size)
    chunk = PAPER_BATCH if paper else batch_size
    hvp = hvp_operator(model, points, y, names, w, chunk, summed_batches=paper)
    size = sum(t.numel() for t in w)
    device = w[0].device
    gen = runtime.generator(*seed_keys, "hessian")
    v0 = torch.randn(size, generator=gen, dtype=torch.float32).to(device)
    ritz = lanczos(hvp, v0, iterations)
    products = []
    for _ in range(probes):
        v = (torch.randint(0, 2, (size,), generator=gen) * 2 - 1).to(device, torch.float32)
        products.append(torch.dot(v, hvp(v)))
    samples = torch.stack(products).tolist()
    trace = sum(samples) / probes
    values = [float(r) for r in ritz.tolist()]
    finite = all(math.isfinite(v) for v in [loss, trace, *values])
    std = statistics.stdev(samples) if len(samples) > 1 and finite else None
    default_name = "hessian" if use_attack is not None else "clean-hessian"
    return HessianResult(
        measure=measure or default_name,
        loss=loss,
        lambda_max=values[-1],
        trace=trace,
        trace_std=std,
        trace_samples=samples,
        ritz_values=values,
        iterations=len(values),
        probes=probes,
        variant=variant,
        note=None if finite else "non-finite Hessian",
        examples=len(y),
    )


@register(*HESSIAN_MEASURES)
def hessian_rows(ctx: evaluation.Context, config, inputs: FlatnessInputs) -> list[dict]:
    """The requested Hessian measures of one checkpoint: hessian (at the PGD points), clean-hessian,
    paper-hessian (on the held-out split)."""
    rows = []
    for m in (m for m in HESSIAN_MEASURES if m in config.measures):
        x, y = inputs.heldout if m == "paper-hessian" else (ctx.x, ctx.y)
        r = hessian_eigen(
            ctx.model,
            x,
            y,
            attack=inputs.attack if m == "hessian" else None,
            iterations=config.iterations,
            probes=config.samples,
            seed_keys=ctx.keys,
            batch_size=config.batch_size,
            variant="paper" if m == "paper-hessian" else "flatcli",
            measure=m,
        )
        rows.append({
            "measure": r.measure,
            "note": r.note,
            "split": "heldout" if r.variant == "paper" else config.split,
            "n_examples": r.examples,
            "estimator": r.variant,
            "samples": r.probes,
            "iterations": r.iterations,
            "robust_loss": r.loss,
            "lambda_max": r.lambda_max,
            "hessian_trace": r.trace,
            "per_sample": finite_or_none(r.trace_samples),
        })  # fmt: skip
    return rows


def top_eigenvectors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack,
    k: int,
    iterations: int,
    generator: torch.Generator,
    seed_keys: tuple,
    batch_size: int,
) -> list[list[torch.Tensor]]:
    """The top-`k` eigenvectors (largest |eigenvalue|) of the Hessian of the mean cross-entropy
    w.r.t. the layers, at the attack's worst points (`adversarial_points`) or at x without an
    attack: `iterations` steps of subspace iteration, then a Rayleigh-Ritz rotation. Each vector
    is a list aligned with `weights.layers(model)`."""
    names, w = weights.named_weights(model)
    model.eval()
    points = x if attack is None else adversarial_points(model, x, y, attack, seed_keys, batch_size)
    hvp = hvp_operator(model, points, y, names, w, batch_size)
    size = sum(t.numel() for t in w)
    k = min(k, size)
    basis = torch.randn(size, k, generator=generator, dtype=torch.float32).to(w[0].device)
    basis, _ = torch.linalg.qr(basis)
    for _ in range(max(1, iterations)):
        basis, _ = torch.linalg.qr(torch.stack([hvp(basis[:, j]) for j in range(k)], 1))
    hv = torch.stack([hvp(basis[:, j]) for j in range(k)], 1)
    small = basis.T @ hv
    values, vectors = torch.linalg.eigh((small + small.T) / 2)
    order = values.abs().argsort(descending=True)
    top = basis @ vectors[:, order]
    return [[t.clone() for t in weights.unflatten(top[:, j], w)] for j in range(k)]
