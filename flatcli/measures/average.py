"""Average-case flatness of the robust loss (docs/method.md): the mean over random offsets nu on
the relative sphere of radius xi of RCE(w + nu) - RCE(w), re-running the attack at every offset;
"clean-average" the same for the clean loss. Samples run stacked (`engine.robust_losses_at`)
with the draws of one at a time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import engine, evaluation, runtime, weights
from flatcli.config.commands import EVAL_BATCH, SAMPLES, FlatnessConfig
from flatcli.errors import UsageError
from flatcli.measures import register
from flatcli.measures.flatness import (
    FlatnessInputs,
    finite_or_none,
    sample_attack_name,
    xi_list,
    xis_for,
)
from flatcli.uncertainty import average_flatness_se, loss_se


@dataclass(kw_only=True)
class FlatnessResult:
    """Average case at one xi. Losses in nats, errors as fractions; `loss`/`err` at w.

    perturbed_loss/perturbed_err: means over samples at w + nu; per_sample: each sample's flatness
    (perturbed - loss); flatness_std: their standard deviation (ddof 1). Clean measures hold clean
    cross-entropies and errors in the same fields.
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
    err: float | None = None
    perturbed_err: float | None = None
    flatness_se: float | None = None  # over offsets and examples (`uncertainty`)
    loss_se: float | None = None  # of `loss`, over examples


def _finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _std(values: Sequence[float]) -> float | None:
    if len(values) < 2 or not all(_finite(v) for v in values):
        return None
    return statistics.stdev(values)


def _nonfinite_note(reference: float, values: Sequence[float], what: str) -> str | None:
    if not _finite(reference):
        return "non-finite loss at the checkpoint"
    bad = sum(not _finite(v) for v in values)
    if bad:
        return f"non-finite loss after perturbation in {bad} of {len(values)} {what}"
    return None


def average_flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float | Sequence[float],
    samples: int = SAMPLES,
    attack=None,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
    reference: engine.ExampleLosses | None = None,
    weight_norm: str = "l2",
    on_batch: Callable[[int, int], None] | None = None,
    settings_per_pass: int | None = None,
    compile: str = "off",
    sample_attack=None,
) -> list[FlatnessResult]:
    """Average-case flatness at each xi: "clean-average" results, and "average" (of the robust
    loss, re-running `sample_attack` (default `attack`) on every perturbed model, minus RCE(w)
    from `attack`) when an attack is given.

    `reference`: the engine's result at w with the same attack and seed_keys, if already computed.
    The (sample, xi) settings run `settings_per_pass` at a time in one stacked pass
    (`engine.robust_losses_at`; default sized from free device memory, `runtime.settings_per_pass`)
    or one at a time in place (restored bitwise); both give the same draws, so the same results
    up to float rounding. An attack that does not keep its rows runs one setting at a time.
    `compile`: the engine's policy (`flatcli.runtime`).
    """
    xis = xi_list(xi)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UsageError(f"--samples must be a positive integer, got {samples}")
    weights.require_layers(model)
    w = weights.weights_of(model)
    ball = weights.ball_named(weight_norm)
    attacks = [attack] if attack is not None else []
    per = sample_attack if sample_attack is not None else attack
    sampled = [per] if attack is not None else []
    if reference is None:
        reference = engine.robust_losses(
            model, x, y, attacks, seed_keys, batch_size, compile=compile
        )
    clean_ref = reference.clean_loss.mean().item()
    refs_err = {"clean-average": engine.error_rate(reference.clean_correct)}
    robust_ref = None
    if attack is not None:
        robust_ref = reference.robust[attack.name].loss.mean().item()
        refs_err["average"] = engine.error_rate(reference.robust[attack.name].correct)
    clean = {v: [] for v in xis}
    robust = {v: [] for v in xis}
    # per example, the sum over offsets of the perturbed loss (the examples' share of the SE)
    sums = {m: {v: torch.zeros(len(y), dtype=torch.float64) for v in xis} for m in refs_err}
    errs = {m: {v: [] for v in xis} for m in refs_err}
    per_pass = settings_per_pass
    if per_pass is None:
        per_pass = runtime.attack_settings_per_pass(model, x, per, batch_size, len(xis) * samples)
    settings = [(s, v) for s in range(samples) for v in xis]
    units: dict[int, list[torch.Tensor]] = {}
    for begin in range(0, len(settings), per_pass):
        chunk = settings[begin : begin + per_pass]
        for s in dict.fromkeys(s for s, _ in chunk):
            # One direction per sample, shared by every xi (common random numbers across the
            # grid), drawn once whatever the stacking.
            if s not in units:
                gen = runtime.generator(*seed_keys, "weight-direction", s)
                units[s] = ball(1.0).random_start(w, gen)
        offsets = [[v * u for u in units[s]] for s, v in chunk]
        for (_, v), out in zip(
            chunk,
            engine.robust_losses_at(
                model, offsets, x, y, sampled, seed_keys, batch_size, on_batch, compile=compile
            ),
            strict=True,
        ):
            clean[v].append(out.clean_loss.mean().item())
            sums["clean-average"][v] += out.clean_loss.double()
            errs["clean-average"][v].append(engine.error_rate(out.clean_correct))
            if attack is not None:
                robust[v].append(out.robust[per.name].loss.mean().item())
                sums["average"][v] += out.robust[per.name].loss.double()
                errs["average"][v].append(engine.error_rate(out.robust[per.name].correct))
        for s in [s for s in units if s < chunk[-1][0]]:
            del units[s]  # every xi of that sample is done
    results = []
    at_w = {"clean-average": reference.clean_loss}
    if attack is not None:
        at_w["average"] = reference.robust[attack.name].loss
    for measure, ref, values, steps, restarts in [
        (
            "average",
            robust_ref,
            robust,
            getattr(per, "steps", None),
            getattr(per, "restarts", None),
        ),
        ("clean-average", clean_ref, clean, None, None),
    ]:
        if ref is None:
            continue
        for v in xis:
            deltas = [p - ref for p in values[v]]
            per_example = sums[measure][v] / samples - at_w[measure].double()
            mean = sum(values[v]) / len(values[v])
            results.append(
                FlatnessResult(
                    measure=measure,
                    xi=v,
                    loss=ref,
                    perturbed_loss=mean,
                    flatness=mean - ref,
                    flatness_std=_std(deltas),
                    per_sample=finite_or_none(deltas),
                    samples=samples,
                    iterations=steps,
                    restarts=restarts,
                    note=_nonfinite_note(ref, values[v], "samples"),
                    err=refs_err[measure],
                    perturbed_err=sum(errs[measure][v]) / samples,
                    flatness_se=average_flatness_se(deltas, per_example),
                    loss_se=loss_se(at_w[measure]),
                )
            )
    return results


@register("average", "clean-average")
def average_rows(
    ctx: evaluation.Context, config: FlatnessConfig, inputs: FlatnessInputs
) -> list[dict]:
    """The requested average-case measures of one checkpoint, at every xi."""
    found = average_flatness(
        ctx.model,
        ctx.x,
        ctx.y,
        xis_for(config, "average"),
        samples=config.samples,
        attack=inputs.attack if "average" in config.measures else None,
        seed_keys=ctx.keys,
        batch_size=config.batch_size,
        reference=inputs.reference,
        weight_norm=config.weight_norm,
        on_batch=ctx.on_batch,
        compile=config.compile,
        sample_attack=inputs.sample_attack,
    )
    return [_columns(r, config) for r in found if r.measure in config.measures]


def _columns(r: FlatnessResult, config: FlatnessConfig) -> dict:
    clean = r.measure == "clean-average"
    return {
        "measure": r.measure,
        "note": r.note,
        "sample_attack": None if clean else sample_attack_name(config),
        "estimator": "mean",
        "xi": r.xi,
        "samples": r.samples,
        "iterations": r.iterations,
        "restarts": r.restarts,
        "robust_loss": r.loss,
        "robust_err": r.err,
        "perturbed_robust_loss": r.perturbed_loss,
        "perturbed_robust_err": r.perturbed_err,
        "flatness": r.flatness,
        "flatness_std": r.flatness_std,
        "per_sample": r.per_sample,
        "flatness_se": r.flatness_se,
        "robust_loss_se": r.loss_se,
    }
