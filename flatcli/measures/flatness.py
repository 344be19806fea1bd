"""The flatness table (docs/method.md): one checkpoint's rows of each requested measure, average
case (`measures.average`), worst case (`measures.worst`) and Hessian (`measures.hessian`), each
found through the registry. What they share is prepared here once per sweep: the loss attack,
the attack re-run per average-case offset, the held-out split of the paper's Hessian; and once
per checkpoint: RCE(w), the attack's robust loss at the weights, behind both flatness measures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from flatcli import data, engine, evaluation, measures, weights
from flatcli.attacks.presets import preset
from flatcli.config import registries
from flatcli.config.commands import AVERAGE_XI, WORST_XI, FlatnessConfig
from flatcli.errors import UsageError

MEASURES = registries.MEASURES
# family -> its measures, in the order their rows come: average, worst, hessian
FAMILIES = {
    family: tuple(n for n, m in MEASURES.items() if m.family == family)
    for family in dict.fromkeys(m.family for m in MEASURES.values())
}
AVERAGE_MEASURES = FAMILIES["average"]
WORST_MEASURES = FAMILIES["worst"]
HESSIAN_MEASURES = FAMILIES["hessian"]
ESTIMATORS = tuple(registries.WORST_ESTIMATORS)
check_xi = weights.check_xi


@dataclass(frozen=True, kw_only=True)
class FlatnessInputs:
    """What a flatness measure gets beside the checkpoint's context: the loss attack (None for
    clean measures alone), the attack re-run at every average-case offset, the held-out split
    ((x, y) for the paper's Hessian, else None), and RCE(w) (`engine.robust_losses` at the
    weights, with the loss attack when an average or worst measure needs it)."""

    attack: object | None
    sample_attack: object | None
    heldout: tuple[torch.Tensor, torch.Tensor] | None
    reference: engine.ExampleLosses


def xi_list(xi: float | Sequence[float]) -> list[float]:
    """--xi as a non-empty list of checked radii."""
    values = [xi] if isinstance(xi, (int, float)) else list(xi)
    if not values:
        raise UsageError("--xi: give at least one value")
    return [check_xi(v) for v in values]


def finite_or_none(values: Sequence[float]) -> list[float | None]:
    """`values` with NaN and inf as None (a table's null)."""
    return [v if isinstance(v, float) and math.isfinite(v) else None for v in values]


def xis_for(config: FlatnessConfig, measure: str) -> tuple[float, ...]:
    """--xi values, or the paper's default for the measure (0.5 average, 0.00075 worst)."""
    if config.xi is not None:
        return config.xi
    return (AVERAGE_XI,) if MEASURES[measure].family == "average" else (WORST_XI,)


def _robust_measures(measures_: Sequence[str]) -> bool:
    return any(MEASURES[m].robust for m in measures_)


def sample_attack_name(config) -> str:
    """The attack re-run at every average-case offset: `--sample-attack`, else `--attack` with
    one restart (pgd20x10 -> pgd20: the paper's code runs PGD-20 once per offset and subtracts
    the PGD-20 x 10 robust loss at w), keeping --attack's step ratio."""
    if config.sample_attack is not None:
        return config.sample_attack
    found = preset(config.attack)
    if found.kind != "pgd" or found.restarts == 1:
        return config.attack
    name = f"pgd{found.steps}"
    return name if preset(name).step_ratio == found.step_ratio else f"{name}x1"


def resolve_flatness_config(config: FlatnessConfig, refs: Sequence) -> FlatnessConfig:
    """Fill the dataset's defaults and validate every option cheaply, before any work."""
    config.validate()
    measures_ = tuple(dict.fromkeys(config.measures))
    xi = None if config.xi is None else tuple(xi_list(config.xi))
    weights.ball_named(config.weight_norm)
    weights.check_conv_scale(config.conv_scale)
    resolved = evaluation.resolve_common(config, refs)
    resolved = dataclasses.replace(resolved, measures=measures_, xi=xi)
    if _robust_measures(measures_):
        evaluation.loss_attack(resolved, "the Hessian" if "hessian" in measures_ else None)
    if config.sample_attack is not None:
        named = dataclasses.replace(resolved, attack=config.sample_attack)
        evaluation.loss_attack(named, flag="--sample-attack")  # before any work
    return resolved


class FlatnessMeasure:
    """The sweep's `measure(ref) -> rows` for the flatness table: one row per (measure, xi) of a
    checkpoint, in the order average, worst, Hessian. `config` must be resolved
    (`resolve_flatness_config`). `config.compile` compiles the attacks (reference, average-case
    samples, re-attack) and the worst-case ascent's stacked model call (the Hessian runs eager)."""

    def __init__(self, config: FlatnessConfig):
        self.config = config
        robust = _robust_measures(config.measures)
        self.attack = evaluation.eval_attack(config, config.attack) if robust else None
        sample_name = sample_attack_name(config)
        self.sample_attack = self.attack
        if robust and "average" in config.measures and sample_name != config.attack:
            self.sample_attack = evaluation.eval_attack(config, sample_name)
        self.heldout = None
        if "paper-hessian" in config.measures:
            self.heldout = data.load_split(config.dataset, "heldout", None, config.data_dir)
        self.needs_reference = robust and any(m in config.measures for m in ("average", "worst"))

    def __call__(self, ctx: evaluation.Context) -> list[dict]:
        config = self.config
        evaluation.require_layers(ctx)
        notes = (_conv_scale_note(ctx, config), evaluation.nonfinite_note(ctx.model))
        model_note = "; ".join(n for n in notes if n) or None
        reference = engine.robust_losses(
            ctx.model, ctx.x, ctx.y, [self.attack] if self.needs_reference else [], ctx.keys,
            config.batch_size, ctx.on_batch, compile=config.compile,
        )  # fmt: skip
        inputs = FlatnessInputs(attack=self.attack, sample_attack=self.sample_attack,
                                heldout=self.heldout, reference=reference)  # fmt: skip
        rows = []
        for names in FAMILIES.values():
            if any(n in config.measures for n in names):
                rows += measures.implementation(names[0])(ctx, config, inputs)
        return [_row(ctx.base, row, config, model_note) for row in rows]


def flatness_measure(
    config: FlatnessConfig,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
):
    """`measure(ref) -> rows` for the flatness table (`FlatnessMeasure` over an `Evaluation`);
    `on_note(line)` gets the compile time."""
    prepared = evaluation.Evaluation(config, device, on_batch, on_note)
    return prepared.measure(FlatnessMeasure(config))


def _conv_scale_note(ctx: evaluation.Context, config: FlatnessConfig) -> str | None:
    """Apply --conv-scale; a note when the network's function changed (no BN after a conv)."""
    change = weights.scale_conv(ctx.model, config.conv_scale, ctx.x[:64].to(ctx.device))
    if change > 1e-2:  # BN eps is not scaled, so tiny changes are expected
        return f"--conv-scale changed the logits by {change:.2g} (relative): not BN after conv"
    return None


def _row(base: dict, columns: dict, config: FlatnessConfig, model_note: str | None) -> dict:
    """A measure's own columns (with its "measure" and "note") on the checkpoint's key columns."""
    columns = dict(columns)
    clean = not MEASURES[columns["measure"]].robust
    note = "; ".join(n for n in (model_note, columns.pop("note")) if n) or None
    common = {
        **base,
        "eps": 0.0 if clean else config.eps,
        "attack": None if clean else config.attack,
        "conv_scale": config.conv_scale,
        "note": note,
    }
    return {**common, **columns}


measures.register_table("flatness", FlatnessConfig, resolve_flatness_config, flatness_measure)
