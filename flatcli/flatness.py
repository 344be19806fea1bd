"""Flatness of the robust loss (docs/method.md): the average case, the worst case (estimators in
`flatcli.worst_case`), the Hessian (`flatcli.hessian`), and the sweep's `flatness_measure`.

Average-case samples run stacked (`engine.robust_losses_at`) with the draws of one at a time.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import data, engine, evaluation, hessian, registries, runtime, weights, worst_case
from flatcli.attacks.precision import in_fp32
from flatcli.attacks.presets import PAPER_STEP_RATIO
from flatcli.config import AVERAGE_XI, EVAL_BATCH, SAMPLES, WORST_XI, FlatnessConfig, config_hash
from flatcli.errors import CheckpointError, UsageError
from flatcli.uncertainty import average_flatness_se, loss_se, spread

MEASURES = registries.MEASURES
AVERAGE_MEASURES = tuple(n for n, m in MEASURES.items() if m.family == "average")
WORST_MEASURES = tuple(n for n, m in MEASURES.items() if m.family == "worst")
HESSIAN_MEASURES = tuple(n for n, m in MEASURES.items() if m.family == "hessian")
ESTIMATORS = tuple(registries.WORST_ESTIMATORS)
check_xi = weights.check_xi


@dataclass
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


def _xi_list(xi: float | Sequence[float]) -> list[float]:
    values = [xi] if isinstance(xi, (int, float)) else list(xi)
    if not values:
        raise UsageError("--xi: give at least one value")
    return [check_xi(v) for v in values]


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
    `compile`: the engine's policy (`flatcli.compilation`).
    """
    xis = _xi_list(xi)
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
        per_pass = runtime.attack_settings_per_pass(
            model, x, per, batch_size, len(xis) * samples
        )
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
                    measure,
                    v,
                    loss=ref,
                    perturbed_loss=mean,
                    flatness=mean - ref,
                    flatness_std=_std(deltas),
                    per_sample=_clean_list(deltas),
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


# ---------------------------------------------------------------------------------------------
# Worst case (estimators in `flatcli.worst_case`)


def worst_flatness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    eps: float = 0.0,
    attack=None,
    batch_size: int = EVAL_BATCH,
    weight_norm: str = "l2",
    estimator: str = "paper",
    **options,
) -> worst_case.WorstResult:
    """Worst-case flatness at xi (the paper): "worst" for eps > 0, "clean-worst" for eps = 0, by
    `estimator` (paper | per-batch, `flatcli.worst_case`). `options`: fields of
    `worst_case.Ascent` (norm, input_step, iterations, restarts, weight_lr, weight_batch,
    seed_keys, restarts_per_pass; defaults `FlatnessConfig`'s). RCE(w) comes from `attack`
    (default PGD with the ascent's iterations, restarts and step) with the engine's starts for
    seed_keys.
    """
    if estimator not in ESTIMATORS:
        raise UsageError(f"--worst-estimator {estimator!r}: choose {', '.join(ESTIMATORS)}")
    xi = check_xi(xi)
    weights.require_layers(model)
    ascent = dataclasses.replace(_ascent(FlatnessConfig(), eps, (0,)), eps=eps, **options)
    robust = eps > 0
    if robust and attack is None:
        from flatcli.attacks.pgd import PGD

        it, restarts = ascent.iterations, ascent.restarts
        step = ascent.input_step or PAPER_STEP_RATIO * eps
        attack = PGD(f"pgd{it}x{restarts}", ascent.norm, eps, it, step, restarts)
    attacks = [attack] if robust else []
    reference = engine.robust_losses(model, x, y, attacks, ascent.seed_keys, batch_size)
    ref = reference.robust[attack.name] if robust else reference.clean_loss
    registries.require_paper_ball(estimator, weight_norm)
    result = _estimate(model, x, y, xi, ref, estimator, weight_norm, attack, ascent)
    if not robust:
        result.err = engine.error_rate(reference.clean_correct)
    return result


def _ascent(config: FlatnessConfig, eps: float, seed_keys: tuple) -> worst_case.Ascent:
    """The worst-case ascent of `config` at input radius eps (0: clean)."""
    return worst_case.Ascent(
        eps=eps,
        norm=config.norm,
        input_step=config.step_size,
        iterations=config.iterations,
        restarts=config.restarts,
        weight_lr=config.weight_lr,
        weight_batch=config.weight_batch,
        seed_keys=seed_keys,
        compile=config.compile,
    )


def _estimate(model, x, y, xi, ref, estimator, weight_norm, attack, ascent):
    """The estimator's result with RCE(w) `ref`."""
    if estimator == "paper":
        return worst_case.worst_paper(model, x, y, xi, ref, ascent)
    return worst_case.worst_per_batch(model, x, y, xi, ref, ascent, attack, weight_norm)


# ---------------------------------------------------------------------------------------------
# The sweep's measure


def xis_for(config: FlatnessConfig, measure: str) -> tuple[float, ...]:
    """--xi values, or the paper's default for the measure (0.5 average, 0.00075 worst)."""
    if config.xi is not None:
        return config.xi
    return (AVERAGE_XI,) if MEASURES[measure].family == "average" else (WORST_XI,)


def _robust_measures(measures) -> bool:
    return any(MEASURES[m].robust for m in measures)


def resolve_flatness_config(config: FlatnessConfig, refs: Sequence) -> FlatnessConfig:
    """Fill the dataset's defaults and validate every option cheaply, before any work."""
    config.validate()
    measures = tuple(dict.fromkeys(config.measures))
    xi = None if config.xi is None else tuple(_xi_list(config.xi))
    weights.ball_named(config.weight_norm)
    weights.check_conv_scale(config.conv_scale)
    resolved = evaluation.resolve_common(config, refs)
    resolved = dataclasses.replace(resolved, measures=measures, xi=xi)
    if _robust_measures(measures):
        evaluation.loss_attack(resolved, "the Hessian" if "hessian" in measures else None)
    if config.sample_attack is not None:
        named = dataclasses.replace(resolved, attack=config.sample_attack)
        evaluation.loss_attack(named, flag="--sample-attack")  # before any work
    return resolved


def _worst(model, x, y, xi, measure, config, keys, reference, attack) -> worst_case.WorstResult:
    clean = measure == "clean-worst"
    outcome = None if clean else reference.robust[attack.name]
    ref = reference.clean_loss if clean else outcome
    ascent = _ascent(config, 0.0 if clean else config.eps, keys)
    estimator = config.worst_estimator
    result = _estimate(model, x, y, xi, ref, estimator, config.weight_norm, attack, ascent)
    if estimator == "paper" and config.worst_reattack and not clean and result.nu is not None:
        # asked for: the attack behind RCE(w) re-run at the final nu, with the same starts
        with weights.perturbed(model, result.nu):
            again = engine.robust_losses(
                model, x, y, [attack], keys, config.batch_size, compile=config.compile
            )
        result.reattack_loss = again.robust[attack.name].loss.mean().item()
    if clean:  # the clean loss at w comes with its error
        result.err = engine.error_rate(reference.clean_correct)
    return result


def flatness_measure(
    config: FlatnessConfig,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
):
    """`measure(ref) -> rows` for the flatness table: one row per (measure, xi) of a checkpoint.

    `config` must be resolved (`resolve_flatness_config`). `config.compile` compiles the attacks
    (reference, average-case samples, re-attack) and the worst-case ascent's stacked model call
    (the Hessian runs eager); `on_note(line)` gets the compile time.
    """
    chash = config_hash(config)
    x, y = data.load_split(config.dataset, config.split, config.n_examples, config.data_dir)
    measures = config.measures
    robust = _robust_measures(measures)
    attack = (
        evaluation.eval_attack(config, config.attack)
        if robust
        else None
    )
    sample_name = evaluation.sample_attack_name(config)
    sample_attack = attack
    if robust and "average" in measures and sample_name != config.attack:
        sample_attack = evaluation.eval_attack(config, sample_name)
    heldout = None
    if "paper-hessian" in measures:
        heldout = data.load_split(config.dataset, "heldout", None, config.data_dir)

    shared = evaluation.SharedModels(on_note)  # compiled code reused across checkpoints

    def measure(ref) -> list[dict]:
        model, info = shared.load(ref, config, device)
        if not weights.layers(model):
            raise CheckpointError(
                f"{ref.path}: no perturbable layers (weights or biases outside normalization)"
            )
        notes = (_conv_scale_note(model, config, x, device), evaluation.nonfinite_note(model))
        model_note = "; ".join(n for n in notes if n) or None
        keys = evaluation.seed_keys(config, ref)
        needs_reference = robust and any(m in measures for m in ("average", "worst"))
        reference = engine.robust_losses(
            model, x, y, [attack] if needs_reference else [], keys, config.batch_size, on_batch,
            compile=config.compile,
        )
        results: list = []
        if any(m in measures for m in AVERAGE_MEASURES):
            found = average_flatness(
                model,
                x,
                y,
                xis_for(config, "average"),
                samples=config.samples,
                attack=attack if "average" in measures else None,
                seed_keys=keys,
                batch_size=config.batch_size,
                reference=reference,
                weight_norm=config.weight_norm,
                on_batch=on_batch,
                compile=config.compile,
                sample_attack=sample_attack,
            )
            results += [r for r in found if r.measure in measures]
        for m in (m for m in WORST_MEASURES if m in measures):
            for v in xis_for(config, m):
                results.append(_worst(model, x, y, v, m, config, keys, reference, attack))
        for m in (m for m in HESSIAN_MEASURES if m in measures):
            hx, hy = heldout if m == "paper-hessian" else (x, y)
            results.append(
                hessian.hessian_eigen(
                    model,
                    hx,
                    hy,
                    attack=attack if m == "hessian" else None,
                    iterations=config.iterations,
                    probes=config.samples,
                    seed_keys=keys,
                    batch_size=config.batch_size,
                    variant="paper" if m == "paper-hessian" else "flatcli",
                    measure=m,
                )
            )
        base = evaluation.key_columns(ref, info, config, chash, device)
        return [_row(base, r, config, model_note) for r in results]

    return in_fp32(evaluation.noting_compile(measure, config.compile, device, on_note))


def _conv_scale_note(model, config, x, device) -> str | None:
    """Apply --conv-scale; a note when the network's function changed (no BN after a conv)."""
    change = weights.scale_conv(model, config.conv_scale, x[:64].to(device))
    if change > 1e-2:  # BN eps is not scaled, so tiny changes are expected
        return f"--conv-scale changed the logits by {change:.2g} (relative): not BN after conv"
    return None


def _row(base: dict, r, config: FlatnessConfig, model_note: str | None) -> dict:
    clean = not MEASURES[r.measure].robust
    note = "; ".join(n for n in (model_note, r.note) if n) or None
    common = {
        **base,
        "eps": 0.0 if clean else config.eps,
        "measure": r.measure,
        "attack": None if clean else config.attack,
        "conv_scale": config.conv_scale,
        "note": note,
    }
    if isinstance(r, hessian.HessianResult):
        return {
            **common,
            "split": "heldout" if r.variant == "paper" else base["split"],
            "n_examples": r.examples,
            "estimator": r.variant,
            "samples": r.probes,
            "iterations": r.iterations,
            "robust_loss": r.loss,
            "lambda_max": r.lambda_max,
            "hessian_trace": r.trace,
            "per_sample": _clean_list(r.trace_samples),
        }
    if isinstance(r, worst_case.WorstResult):
        return {
            **common,
            "estimator": r.estimator,
            "xi": r.xi,
            "iterations": r.iterations,
            "restarts": r.restarts,
            "weight_lr": config.weight_lr,
            "robust_loss": r.loss,
            "robust_err": r.err,
            "perturbed_robust_loss": r.perturbed_loss,
            "perturbed_robust_err": r.perturbed_err,
            "joint_loss": r.joint_loss,
            "reattack_loss": r.reattack_loss,
            "unclamped_flatness": r.unclamped,
            "flatness": r.flatness,
            "flatness_se": spread(r.per_restart or []),
            "robust_loss_se": r.loss_se,
            "per_sample": None if r.per_restart is None else _clean_list(r.per_restart),
        }
    return {
        **common,
        "sample_attack": None if clean else evaluation.sample_attack_name(config),
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
