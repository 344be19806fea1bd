"""Landscapes of the robust (and clean) loss along weight directions, 1-D and 2-D (docs/method.md).

One unit of work is (checkpoint, direction) (`units`); grid points run one at a time in place or
`point_batch` at a time stacked, with the attack starts of `flatcli attack` at every point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flatcli import (
    checkpoints,
    engine,
    evaluation,
    measures,
    runtime,
    uncertainty,
    weights,
)
from flatcli.attacks.presets import PAPER_STEP_RATIO
from flatcli.config import registries
from flatcli.config.commands import (
    EVAL_BATCH,
    LANDSCAPE_SCALE,
    LANDSCAPE_SCALE_MAXABS,
    LandscapeConfig,
)
from flatcli.errors import CheckpointError, UsageError
from flatcli.measures import hessian, worst_estimators

KINDS = tuple(registries.DIRECTIONS)
FIXED_POINTS_ATTACK = "pgd10"  # robust-fixed: the inputs of the weight attack, found at w
PLOT_FORMATS = ("png", "svg", "none")
TABLE = "landscape"
_TINY = 1e-12


# ---------------------------------------------------------------------------------------------
# Units of work


@dataclass(frozen=True)
class DirectionRef:
    """One (checkpoint, direction) work unit; quacks like a `CheckpointRef` for `sweep.run`."""

    ref: checkpoints.CheckpointRef
    direction: int

    @property
    def key(self) -> str:
        return f"{self.ref.key}__d{self.direction:03d}"

    @property
    def run(self) -> str:
        return self.ref.run

    @property
    def epoch(self) -> int | None:
        return self.ref.epoch

    @property
    def path(self) -> Path:
        return self.ref.path


def units(refs: Sequence, n_directions: int) -> list[DirectionRef]:
    """Every (checkpoint, direction), checkpoint-major (one model load per checkpoint)."""
    return [DirectionRef(r, k) for r in refs for k in range(n_directions)]


# ---------------------------------------------------------------------------------------------
# Directions


def normalize_direction(
    d: Sequence[torch.Tensor], w: Sequence[torch.Tensor], normalization: str, scale: float
) -> list[torch.Tensor]:
    """`d` (float32, aligned with `w`) rescaled relative to the weights by `scale` = s.

    layer: ||d_l|| = s ||w_l|| per tensor; layer-maxabs: max|d_l| = s max|w_l| per tensor;
    filter: every output filter (first-axis slice) of a 2+-D tensor to s times the norm of the
    same filter of w, 0-/1-D tensors as a whole; none: the whole d to s ||w||. A zero filter or
    layer of w stays 0.
    """
    if normalization not in registries.NORMALIZATIONS:
        choices = ", ".join(registries.NORMALIZATIONS)
        raise UsageError(f"--normalization {normalization!r}: choose {choices}")
    d = [t.detach().float() for t in d]
    if normalization == "none":
        factor = weights.flatten(w).norm() / weights.flatten(d).norm().clamp_min(_TINY)
        return [t * (scale * factor) for t in d]
    out = []
    for dl, wl in zip(d, w, strict=True):
        wl = wl.detach().float()
        if normalization == "layer-maxabs":
            wn, dn = wl.abs().max(), dl.abs().max().clamp_min(_TINY)
        elif normalization == "filter" and dl.dim() >= 2:
            dims = tuple(range(1, dl.dim()))
            wn = torch.linalg.vector_norm(wl, dim=dims, keepdim=True)
            dn = torch.linalg.vector_norm(dl, dim=dims, keepdim=True).clamp_min(_TINY)
        else:
            wn, dn = wl.norm(), dl.norm().clamp_min(_TINY)
        out.append(dl * (scale * wn / dn))
    return out


def random_direction(w: Sequence[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    """A Gaussian direction per layer (the geometry's random offset; normalized afterwards)."""
    return weights.random_offset(w, 1.0, generator)


def adversarial_direction(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xi: float,
    attack,
    iterations: int,
    weight_lr: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """The weight offset of the weight attack (`worst_estimators.joint_ascent`): projected ascent
    over nu in the relative ball ||nu_l|| <= xi ||w_l|| (normalized step `weight_lr`) and, with an
    `attack`, jointly over the input perturbation (the attack's signed step); without one, of the
    cross-entropy at the inputs x as given (clean, or adversarial points fixed at w: the paper's
    code). Starts drawn from `generator` (nu first); returns the offset of the iterate with the
    largest mean loss."""
    w = weights.weights_of(model)
    weights.require_layers(model)
    device = w[0].device
    ball = weights.RelativeL2Ball(xi).around(w)
    nu0 = ball.random_start(w, generator)
    threat = delta0 = step = None
    if attack is not None:
        threat = attack.threat
        step = getattr(attack, "step_size", None) or PAPER_STEP_RATIO * attack.eps
        delta0 = threat.random_start(x.cpu(), generator).to(device)
    _, nu = worst_estimators.joint_ascent(
        model, x.to(device), y.to(device), ball, nu0, weight_lr, iterations, threat, delta0, step
    )
    return nu


def fixed_points(model, x, y, attack, generator, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Adversarial inputs of `attack` at the model's weights w, kept fixed while the weights move
    (`robust-fixed` directions: the paper's code attacks the weights on an AdversarialDataset of
    PGD points computed once). Starts drawn from `generator`; returned on the model's device."""
    device = weights.weights_of(model)[0].device
    starts = attack.draw_starts(x.cpu(), generator)
    model.eval()
    points = []
    for begin in range(0, len(y), batch_size):
        index = slice(begin, begin + batch_size)
        part = None if starts is None else starts[:, index].to(device)
        out = attack(model, x[index].to(device), y[index].to(device), part, keep_points=True)
        points.append(out.points.detach())
    return torch.cat(points)


# ---------------------------------------------------------------------------------------------
# The grid


def grid(lo: float, hi: float, steps: int) -> list[float]:
    """`steps` evenly spaced values from lo to hi (float64; 0 exactly when it is a grid point)."""
    return [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]


def evaluate_grid(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    directions: Sequence[Sequence[torch.Tensor]],
    points: Sequence[tuple[float, ...]],
    attack=None,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
    on_point: Callable[[int, int], None] | None = None,
    point_batch: int | None = 1,
    compile: str = "off",
) -> list[dict]:
    """Clean (and, with an attack, robust) loss and error at w + sum_i c_i d_i for each point c.

    Every point re-runs the attack with the same `seed_keys` (hence the same starts as `flatcli
    attack`). One point at a time moves the model in place and restores it bitwise;
    `point_batch` > 1 evaluates that many points in one stacked pass
    (`engine.robust_losses_at`), equal up to float rounding (the attack must keep its rows);
    None: what fits in free device memory (`runtime.settings_per_pass`; 1 on CPU). `compile`:
    the engine's policy (`flatcli.runtime`).
    """
    attacks = [attack] if attack is not None else []
    n_layers = len(directions[0])
    if point_batch is None:
        point_batch = runtime.attack_settings_per_pass(model, x, attack, batch_size, len(points))

    def offset(coefficients) -> list[torch.Tensor]:
        return [
            sum(c * d[j] for c, d in zip(coefficients, directions, strict=True))
            for j in range(n_layers)
        ]

    out = []
    for begin in range(0, len(points), point_batch):
        chunk = [offset(c) for c in points[begin : begin + point_batch]]
        results = engine.robust_losses_at(
            model, chunk, x, y, attacks, seed_keys, batch_size, compile=compile
        )
        out.extend(_grid_row(result, attack) for result in results)
        if on_point is not None:
            on_point(len(out), len(points))
    return out


def _grid_row(result: engine.ExampleLosses, attack) -> dict:
    row = {
        "clean_loss": result.clean_loss.mean().item(),
        "clean_err": engine.error_rate(result.clean_correct),
        "clean_loss_se": uncertainty.loss_se(result.clean_loss),
    }
    if attack is not None:
        outcome = result.robust[attack.name]
        row["robust_loss"] = outcome.loss.mean().item()
        row["robust_err"] = engine.error_rate(outcome.correct)
        row["robust_loss_se"] = uncertainty.loss_se(outcome.loss)
    return row


# ---------------------------------------------------------------------------------------------
# Configuration and the sweep's measure


def scale_for(config: LandscapeConfig) -> float:
    """--scale, or the default for the kind: the paper's 0.5 random / 0.025 adversarial, the code's
    0.5 / 0.01 with layer-maxabs, 1 otherwise; interpolation is never rescaled (1)."""
    if config.directions == "interpolate":
        return 1.0
    if config.scale is not None:
        return config.scale
    table = LANDSCAPE_SCALE_MAXABS if config.normalization == "layer-maxabs" else LANDSCAPE_SCALE
    return table.get(config.directions, 1.0)


def _layer_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in weights.layers(model)]


def resolve_landscape_config(config: LandscapeConfig, refs: Sequence) -> LandscapeConfig:
    """Fill the defaults (dataset, eps, range, n_directions) and validate every option before
    any work; for interpolation, load both ends and check that the architectures match."""
    config.validate()
    weights.check_xi(config.adversarial_xi)
    weights.check_conv_scale(config.conv_scale)
    interpolate = config.directions == "interpolate"
    span = config.range if config.range is not None else ((0.0, 1.0) if interpolate else (-1, 1))
    n_dirs = config.n_directions
    if n_dirs is None:
        n_dirs = 1 if (interpolate or config.dims == 2) else 10
    if interpolate and (config.dims != 1 or n_dirs != 1):
        raise UsageError("--directions interpolate is one line: use --dims 1 --n-directions 1")
    resolved = evaluation.resolve_common(config, refs)
    resolved = dataclasses.replace(
        resolved,
        range=(float(span[0]), float(span[1])),
        n_directions=n_dirs,
        to=None if config.to is None else str(config.to),
    )
    robust_directions = config.directions == "hessian" or (
        config.directions == "adversarial" and config.adversarial_loss != "clean"
    )
    if resolved.loss != "clean" or robust_directions:
        hessian_directions = "the Hessian" if config.directions == "hessian" else None
        attack = evaluation.loss_attack(resolved, hessian_directions)
        if (config.point_batch or 1) > 1 and resolved.loss != "clean" and not attack.keeps_rows:
            raise UsageError(
                f"--point-batch {config.point_batch}: --attack {resolved.attack} attacks a subset "
                "of its examples and cannot batch grid points; use a pgd preset or apgd-ce"
            )
    if interpolate:
        _check_interpolation(resolved, refs)
    return resolved


def _check_interpolation(config: LandscapeConfig, refs: Sequence) -> None:
    cpu = torch.device("cpu")
    to_ref = checkpoints.CheckpointRef("to", None, Path(config.to))
    try:
        target, target_info = evaluation.load_for_eval(to_ref, config, cpu)
    except CheckpointError as err:
        raise UsageError(f"--to: {err}") from None
    shapes = _layer_shapes(target)
    for ref in refs:
        try:
            model, info = evaluation.load_for_eval(ref, config, cpu)
        except CheckpointError as err:
            raise UsageError(str(err)) from None
        if info.arch != target_info.arch or _layer_shapes(model) != shapes:
            raise UsageError(
                f"--directions interpolate: {ref.path} ({info.arch}) and --to {config.to} "
                f"({target_info.arch}) have different architectures"
            )


class LandscapeRows:
    """`rows(unit)` for the landscape table: the grid of one (checkpoint, direction).

    `config` must be resolved (`resolve_landscape_config`). Directions are drawn from the
    generator `(seed, run, epoch, "landscape", kind, k)`, so any unit can be computed alone (a
    resumed run gets the same directions). The units of one checkpoint come one after the other:
    its context (model loaded, --conv-scale applied), its PGD-10 points fixed at w and its
    Hessian eigenvectors are kept until the next checkpoint's unit.
    """

    def __init__(self, config: LandscapeConfig, evaluation_: evaluation.Evaluation):
        self.config = config
        self.evaluation = evaluation_
        self.kind = config.directions
        self.scale = scale_for(config)
        self.robust = config.loss != "clean"
        needs_attack = (
            self.robust
            or self.kind == "hessian"
            or (self.kind == "adversarial" and config.adversarial_loss == "robust")
        )
        self.attack = evaluation.eval_attack(config, config.attack) if needs_attack else None
        lo, hi = config.range
        axis = grid(lo, hi, config.steps)
        self.points = (
            [(a,) for a in axis] if config.dims == 1 else [(a, b) for b in axis for a in axis]
        )
        self.checkpoint: evaluation.Context | None = None  # the last checkpoint's context
        self.scale_note: str | None = None
        self.fixed: torch.Tensor | None = None  # robust-fixed: PGD-10 points at w
        self.eigenvectors: list[list[torch.Tensor]] | None = None

    def context(self, unit: DirectionRef) -> evaluation.Context:
        """The unit's context: its checkpoint's, loaded once for all of its directions."""
        if self.checkpoint is None or self.checkpoint.unit.path != unit.path:
            self.checkpoint = None
            ctx = self.evaluation.context(unit)
            evaluation.require_layers(ctx)
            probe = ctx.x[:64].to(ctx.device)
            change = weights.scale_conv(ctx.model, self.config.conv_scale, probe)
            self.scale_note = None
            if change > 1e-2:  # BN eps is not scaled, so tiny changes are expected
                self.scale_note = f"--conv-scale changed the logits by {change:.2g} (relative)"
            self.checkpoint, self.fixed, self.eigenvectors = ctx, None, None
        keys = evaluation.seed_keys(self.config, unit)  # the same as `flatcli attack`
        return dataclasses.replace(self.checkpoint, unit=unit, keys=keys)

    def directions(self, ctx: evaluation.Context) -> list[list[torch.Tensor]]:
        """The unit's `dims` directions, each normalized (`normalize_direction`)."""
        config, kind, model, unit = self.config, self.kind, ctx.model, ctx.unit
        w = weights.weights_of(model)
        if kind == "interpolate":
            to_ref = checkpoints.CheckpointRef("to", None, Path(config.to))
            target, _ = evaluation.load_for_eval(to_ref, config, ctx.device)
            if _layer_shapes(target) != _layer_shapes(model):
                raise CheckpointError(f"{unit.path} and --to {config.to}: different architectures")
            ends = zip(weights.weights_of(target), w, strict=True)
            return [[t.float() - s.float() for t, s in ends]]
        out = []
        for i in range(config.dims):
            index = unit.direction * config.dims + i
            gen = runtime.generator(*ctx.keys, "landscape", kind, index)
            if kind == "random":
                d = random_direction(w, gen)
            elif kind == "adversarial":
                d = adversarial_direction(
                    model,
                    self._adversarial_inputs(ctx),
                    ctx.y,
                    config.adversarial_xi,
                    self.attack if config.adversarial_loss == "robust" else None,
                    config.adversarial_iterations,
                    config.weight_lr,
                    gen,
                )
            else:
                d = self._eigenvectors(ctx)[index]
            out.append(normalize_direction(d, w, config.normalization, self.scale))
        return out

    def _adversarial_inputs(self, ctx: evaluation.Context) -> torch.Tensor:
        """x, or for robust-fixed the PGD-10 points at w (computed once per checkpoint)."""
        if self.config.adversarial_loss != "robust-fixed":
            return ctx.x
        if self.fixed is None:
            pgd10 = evaluation.eval_attack(self.config, FIXED_POINTS_ATTACK)
            fixed_gen = runtime.generator(*ctx.keys, "landscape", "fixed-points")
            self.fixed = fixed_points(ctx.model, ctx.x, ctx.y, pgd10, fixed_gen)
        return self.fixed

    def _eigenvectors(self, ctx: evaluation.Context) -> list[list[torch.Tensor]]:
        """The checkpoint's top Hessian eigenvectors, every unit's planes (computed once)."""
        if self.eigenvectors is None:
            config = self.config
            self.eigenvectors = hessian.top_eigenvectors(
                ctx.model,
                ctx.x,
                ctx.y,
                self.attack,
                config.n_directions * config.dims,
                config.iterations,
                runtime.generator(*ctx.keys, "landscape", self.kind),
                ctx.keys,
                config.batch_size,
            )
        return self.eigenvectors

    def __call__(self, unit: DirectionRef) -> list[dict]:
        config, kind = self.config, self.kind
        ctx = self.context(unit)
        model_note = evaluation.nonfinite_note(ctx.model) or self.scale_note
        values = evaluate_grid(
            ctx.model,
            ctx.x,
            ctx.y,
            self.directions(ctx),
            self.points,
            self.attack if self.robust else None,
            ctx.keys,
            config.batch_size,
            ctx.on_batch,
            config.point_batch,
            compile=config.compile,
        )
        bad = sum(
            not all(math.isfinite(v) for v in row.values() if isinstance(v, float))
            for row in values
        )
        grid_note = f"non-finite loss at {bad} of {len(values)} points" if bad else None
        note = "; ".join(n for n in (model_note, grid_note) if n)
        return [
            {
                **ctx.base,
                "direction_kind": kind,
                "direction": unit.direction,
                "alpha": point[0],
                "beta": point[1] if len(point) > 1 else None,
                "attack": config.attack if self.robust else None,
                **row,
                "normalization": "none" if kind == "interpolate" else config.normalization,
                "scale": self.scale,
                "adversarial_loss": config.adversarial_loss if kind == "adversarial" else None,
                "conv_scale": config.conv_scale,
                "note": note or None,
            }
            for point, row in zip(self.points, values, strict=True)
        ]


def landscape_measure(
    config: LandscapeConfig,
    device: torch.device,
    on_point: Callable[[int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
):
    """`measure(unit) -> rows` for the landscape table (`LandscapeRows` over an `Evaluation`);
    `on_point(done, total)` reports the grid's progress, `on_note(line)` the compile time."""
    prepared = evaluation.Evaluation(config, device, on_point, on_note)
    return prepared.measure_units(LandscapeRows(config, prepared))


measures.register_table(
    TABLE,
    LandscapeConfig,
    resolve_landscape_config,
    landscape_measure,
    lambda config, refs: units(refs, config.n_directions),
)
