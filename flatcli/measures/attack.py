"""The attack table (docs/method.md): clean and robust error and loss of one checkpoint, one row
per attack, and the per-example worst case over them (`worst`) when there are several."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from flatcli import engine, evaluation, measures, uncertainty
from flatcli.attacks.presets import build_attack
from flatcli.config.commands import AttackConfig


def resolve_attack_config(config: AttackConfig, refs: Sequence) -> AttackConfig:
    """Fill the dataset's defaults (dataset, eps, n_examples) and validate everything cheaply."""
    config.validate()
    resolved = evaluation.resolve_common(config, refs)
    for name in resolved.attacks:  # unknown names and a missing AutoAttack fail before work
        build_attack(
            name, resolved.norm, resolved.eps, resolved.step_size, resolved.seed, resolved.precision
        )
    return resolved


class AttackRows:
    """`rows(ctx)` for the attack table: the clean pass and every attack of `config`, built once
    per sweep, run on the checkpoint's examples with the engine's starts for its seed keys."""

    def __init__(self, config: AttackConfig):
        self.config = config
        self.attacks = [evaluation.eval_attack(config, a) for a in config.attacks]

    def __call__(self, ctx: evaluation.Context) -> list[dict]:
        config = self.config
        note = evaluation.nonfinite_note(ctx.model)
        result = engine.robust_losses(
            ctx.model, ctx.x, ctx.y, self.attacks, ctx.keys, config.batch_size, ctx.on_batch,
            compile=config.compile,
        )  # fmt: skip
        clean = {
            "clean_err": engine.error_rate(result.clean_correct),
            "clean_loss": result.clean_loss.mean().item(),
            "clean_err_se": uncertainty.error_se(result.clean_correct),
            "clean_loss_se": uncertainty.loss_se(result.clean_loss),
        }
        outcomes = [
            (a.name, a.steps, a.restarts, getattr(a, "step_size", None), result.robust[a.name])
            for a in self.attacks
        ]
        if len(self.attacks) > 1:
            outcomes.append(("worst", None, None, None, result.worst()))
        return [
            {
                **ctx.base,
                **clean,
                "attack": name,
                "steps": steps,
                "restarts": restarts,
                "step_size": step,
                "robust_err": engine.error_rate(o.correct),
                "robust_loss": o.loss.mean().item(),
                "robust_err_se": uncertainty.error_se(o.correct),
                "robust_loss_se": uncertainty.loss_se(o.loss),
                "note": note,
            }
            for name, steps, restarts, step, o in outcomes
        ]


def attack_measure(
    config: AttackConfig,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
):
    """`measure(ref) -> rows` for the attack table: one row per attack (+ `worst` of several).
    `on_note(line)` gets the compile-time line when a checkpoint compiled (`--compile`)."""
    prepared = evaluation.Evaluation(config, device, on_batch, on_note, examples_on_device=True)
    return prepared.measure(AttackRows(config))


measures.register_table("attack", AttackConfig, resolve_attack_config, attack_measure)
