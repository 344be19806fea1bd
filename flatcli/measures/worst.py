"""Worst-case flatness of the robust loss (docs/method.md): max_nu max_delta CE(f(x + delta;
w + nu), y) - RCE(w) over the per-layer relative ball of radius xi, by one of two estimators
(`measures.worst_estimators`: the paper's code, the default, and per-batch); "clean-worst" the
same for the clean loss.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from flatcli import engine, evaluation, weights
from flatcli.attacks.presets import PAPER_STEP_RATIO
from flatcli.config import registries
from flatcli.config.commands import EVAL_BATCH, FlatnessConfig
from flatcli.errors import UsageError
from flatcli.measures import register
from flatcli.measures.flatness import (
    ESTIMATORS,
    WORST_MEASURES,
    FlatnessInputs,
    check_xi,
    finite_or_none,
    xis_for,
)
from flatcli.measures.worst_estimators import Ascent, WorstResult, worst_paper, worst_per_batch
from flatcli.uncertainty import spread


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
) -> WorstResult:
    """Worst-case flatness at xi (the paper): "worst" for eps > 0, "clean-worst" for eps = 0, by
    `estimator` (paper | per-batch, `measures.worst_estimators`). `options`: fields of
    `Ascent` (norm, input_step, iterations, restarts, weight_lr, weight_batch,
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


def _ascent(config: FlatnessConfig, eps: float, seed_keys: tuple) -> Ascent:
    """The worst-case ascent of `config` at input radius eps (0: clean)."""
    return Ascent(
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
        return worst_paper(model, x, y, xi, ref, ascent)
    return worst_per_batch(model, x, y, xi, ref, ascent, attack, weight_norm)


def _worst(model, x, y, xi, measure, config, keys, reference, attack) -> WorstResult:
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


@register("worst", "clean-worst")
def worst_rows(
    ctx: evaluation.Context, config: FlatnessConfig, inputs: FlatnessInputs
) -> list[dict]:
    """The requested worst-case measures of one checkpoint, at every xi."""
    return [
        _columns(_worst(ctx.model, ctx.x, ctx.y, v, m, config, ctx.keys, inputs.reference,
                        inputs.attack), config)
        for m in WORST_MEASURES
        if m in config.measures
        for v in xis_for(config, m)
    ]  # fmt: skip


def _columns(r: WorstResult, config: FlatnessConfig) -> dict:
    return {
        "measure": r.measure,
        "note": r.note,
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
        "per_sample": None if r.per_restart is None else finite_or_none(r.per_restart),
    }
