"""Landscapes of the robust (and clean) loss along weight directions, 1-D and 2-D (PAPER.md).

A thin composition of the robust-loss engine (`flatcli.engine.robust_losses`), the weight-space
geometry (`flatcli.weights`: layers, random directions, in-place offsets) and the flatness module
(the worst-case ascent's pieces for adversarial directions, Hessian-vector products for Hessian
directions):

- **directions** (`direction(...)`): random (a Gaussian per layer), adversarial (one joint ascent
  over a weight offset in the relative ball of radius `scale` and the input perturbation, from its
  own random start), hessian (top eigenvectors of the Hessian of the robust loss at the attack's
  adversarial examples, by subspace iteration on Hessian-vector products) or interpolate
  (d = w_to - w, never rescaled: alpha = 1 is the other checkpoint).
- **normalization** (`normalize_direction`): filter (each output filter / row of d scaled to the
  norm of the same filter of w; biases per tensor), layer (each d_l to ||w_l||) or none (the whole
  d to ||w||), then times `scale`: every layer then has ||d_l|| = scale * ||w_l|| (filter, layer).
  Normalization layers are never directions: `weights.layers` decides.
- **grid**: each point applies alpha d (+ beta d2) in place (`weights.perturbed`, no model copy)
  and re-runs the attack on the moved weights with the work unit's seed keys (seed, run, epoch):
  the very starts `flatcli attack` uses, so alpha = 0 reproduces its robust loss exactly.

The unit of work is (checkpoint, direction): `units(refs, n)` wraps each checkpoint reference into
one `DirectionRef` per direction (key `<ref.key>__d<k:03d>`), so `flatcli.sweep.run` writes one part
per direction and a killed run resumes by computing only the missing ones. `landscape_measure`
returns `measure(unit) -> rows`; `flatcli.plots.landscape_figures` draws the table.
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
    data,
    engine,
    evaluation,
    flatness,
    runtime,
    weights,
)
from flatcli.attacks.presets import PAPER_STEP_RATIO, build_attack
from flatcli.config import LANDSCAPE_SCALE, LandscapeConfig, config_hash
from flatcli.errors import CheckpointError, UsageError

KINDS = ("random", "adversarial", "hessian", "interpolate")
NORMALIZATIONS = ("filter", "layer", "none")
LOSSES = ("robust", "clean", "both")
PLOT_FORMATS = ("png", "svg", "none")
TABLE = "landscape"
PLOTS = "landscape_plots"
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
    """`d` (float32, aligned with `w`) rescaled relative to the weights, times `scale`.

    filter: every output filter (first-axis slice) of a tensor with 2+ dimensions to the norm of
    the same filter of w, 0-/1-D tensors (biases) as a whole; layer: each tensor to ||w_l||;
    none: the whole d to ||w|| (one global factor). A zero filter or layer of w stays 0.
    """
    if normalization not in NORMALIZATIONS:
        raise UsageError(f"--normalization {normalization!r}: choose filter, layer or none")
    d = [t.detach().float() for t in d]
    if normalization == "none":
        factor = weights.flatten(w).norm() / weights.flatten(d).norm().clamp_min(_TINY)
        return [t * (scale * factor) for t in d]
    out = []
    for dl, wl in zip(d, w, strict=True):
        wl = wl.detach().float()
        if normalization == "filter" and dl.dim() >= 2:
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
    """The weight offset of the worst-case ascent (PAPER.md; `flatness.joint_ascent`): projected
    ascent jointly over nu in the relative ball ||nu_l|| <= xi ||w_l|| (normalized step
    `weight_lr`) and, with an `attack`, the input perturbation in its threat ball (the attack's
    signed step), from a random start of both drawn from `generator` (nu first); returns the
    offset of the iterate with the largest mean loss."""
    w = [p.detach() for _, p in weights.require_layers(model)]
    device = w[0].device
    ball = weights.RelativeL2Ball(xi).around(w)
    nu0 = ball.random_start(w, generator)
    threat = delta0 = step = None
    if attack is not None:
        threat = attack.threat
        step = getattr(attack, "step_size", None) or PAPER_STEP_RATIO * attack.eps
        delta0 = threat.random_start(x.cpu(), generator).to(device)
    _, nu = flatness.joint_ascent(
        model, x.to(device), y.to(device), ball, nu0, weight_lr, iterations, threat, delta0, step
    )
    return nu


def hessian_directions(
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
    w.r.t. the layers, at the attack's adversarial examples (`flatness.adversarial_examples`, the
    points behind RCE) or at x without an attack: `iterations` steps of subspace iteration on the
    flatness module's Hessian-vector products, then a Rayleigh-Ritz rotation."""
    found = weights.require_layers(model)
    names = [n for n, _ in found]
    w = [p.detach() for _, p in found]
    model.eval()
    points = (
        x
        if attack is None
        else flatness.adversarial_examples(model, x, y, attack, seed_keys, batch_size)
    )
    hvp = flatness.hvp_operator(model, points, y, names, w, batch_size)
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
    batch_size: int = 512,
    on_point: Callable[[int, int], None] | None = None,
    point_batch: int = 1,
) -> list[dict]:
    """Clean (and, with an attack, robust) loss and error at w + sum_i c_i d_i for each point c.

    Every point re-runs the attack with the same `seed_keys` (hence the same starts as `flatcli
    attack`). One point at a time moves the model in place and restores it bitwise;
    `point_batch` > 1 evaluates that many points in one stacked pass
    (`engine.robust_losses_at`), equal up to float rounding (the attack must keep its rows).
    """
    attacks = [attack] if attack is not None else []
    n_layers = len(directions[0])

    def offset(coefficients) -> list[torch.Tensor]:
        return [
            sum(c * d[j] for c, d in zip(coefficients, directions, strict=True))
            for j in range(n_layers)
        ]

    out = []
    for begin in range(0, len(points), point_batch):
        chunk = [offset(c) for c in points[begin : begin + point_batch]]
        if len(chunk) == 1:
            with weights.perturbed(model, chunk[0]):
                results = [engine.robust_losses(model, x, y, attacks, seed_keys, batch_size)]
        else:
            results = engine.robust_losses_at(model, chunk, x, y, attacks, seed_keys, batch_size)
        out.extend(_grid_row(result, attack) for result in results)
        if on_point is not None:
            on_point(len(out), len(points))
    return out


def _grid_row(result: engine.ExampleLosses, attack) -> dict:
    row = {
        "clean_loss": result.clean_loss.mean().item(),
        "clean_err": 1.0 - result.clean_correct.float().mean().item(),
    }
    if attack is not None:
        outcome = result.robust[attack.name]
        row["robust_loss"] = outcome.loss.mean().item()
        row["robust_err"] = 1.0 - outcome.correct.float().mean().item()
    return row


# ---------------------------------------------------------------------------------------------
# Configuration and the sweep's measure


def scale_for(config: LandscapeConfig) -> float:
    """--scale, or the paper's default for the kind (0.5 random, 0.025 adversarial, 1 otherwise);
    interpolation is never rescaled (1)."""
    if config.directions == "interpolate":
        return 1.0
    if config.scale is not None:
        return config.scale
    return LANDSCAPE_SCALE.get(config.directions, 1.0)


def _int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"--{name} must be an integer >= {low}, got {value}")
    return value


def _layer_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in weights.layers(model)]


def resolve_landscape_config(config: LandscapeConfig, refs: Sequence) -> LandscapeConfig:
    """Fill the defaults (dataset, eps, range, n_directions) and validate every option before
    any work; for interpolation, load both ends and check that the architectures match."""
    if config.directions not in KINDS:
        raise UsageError(f"--directions {config.directions!r}: choose {', '.join(KINDS)}")
    if isinstance(config.dims, bool) or config.dims not in (1, 2):
        raise UsageError(f"--dims {config.dims}: landscapes are 1-D or 2-D (1 or 2)")
    _int(config.steps, "steps", 2)
    _int(config.iterations, "iterations", 1)
    _int(config.point_batch, "point-batch", 1)
    if config.normalization not in NORMALIZATIONS:
        raise UsageError(f"--normalization {config.normalization!r}: choose filter, layer or none")
    if config.loss not in LOSSES:
        raise UsageError(f"--loss {config.loss!r}: choose robust, clean or both")
    if config.scale is not None and not (config.scale > 0 and math.isfinite(config.scale)):
        raise UsageError(f"--scale must be a positive number, got {config.scale:g}")
    if not (config.weight_lr > 0 and math.isfinite(config.weight_lr)):
        raise UsageError(f"--weight-lr must be positive, got {config.weight_lr:g}")
    interpolate = config.directions == "interpolate"
    span = config.range if config.range is not None else ((0.0, 1.0) if interpolate else (-1, 1))
    if len(span) != 2 or not all(math.isfinite(v) for v in span):
        raise UsageError(f"--range {span}: expected two finite numbers MIN,MAX")
    if not span[0] < span[1]:
        raise UsageError(f"--range {span[0]:g},{span[1]:g}: MIN must be smaller than MAX")
    n_dirs = config.n_directions
    if n_dirs is None:
        n_dirs = 1 if (interpolate or config.dims == 2) else 10
    _int(n_dirs, "n-directions", 1)
    if interpolate:
        if config.to is None:
            raise UsageError("--directions interpolate needs --to CKPT (the other end)")
        if config.dims != 1 or n_dirs != 1:
            raise UsageError("--directions interpolate is one line: use --dims 1 --n-directions 1")
    elif config.to is not None:
        raise UsageError("--to is only used with --directions interpolate")
    resolved = evaluation.resolve_common(config, refs)
    resolved = dataclasses.replace(
        resolved,
        range=(float(span[0]), float(span[1])),
        n_directions=n_dirs,
        to=None if config.to is None else str(config.to),
    )
    if resolved.loss != "clean" or config.directions in ("adversarial", "hessian"):
        attack = build_attack(resolved.attack, resolved.norm, resolved.eps, resolved.step_size)
        if not attack.estimates_loss:
            raise UsageError(
                f"--attack {resolved.attack} does not estimate the robust loss; use a pgd preset "
                "or apgd-ce"
            )
        if config.directions == "hessian" and not hasattr(attack, "step_size"):
            raise UsageError(f"--attack {resolved.attack}: Hessian directions need a pgd preset")
        if config.point_batch > 1 and resolved.loss != "clean" and not attack.keeps_rows:
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


def landscape_measure(
    config: LandscapeConfig,
    device: torch.device,
    on_point: Callable[[int, int], None] | None = None,
):
    """`measure(unit) -> rows` for the landscape table: the grid of one (checkpoint, direction).

    `config` must be resolved (`resolve_landscape_config`). Directions are drawn from the
    generator `(seed, run, epoch, "landscape", kind, k)`, so any unit can be computed alone (a
    resumed run gets the same directions); the model of the last checkpoint (and its Hessian
    eigenvectors) is kept between units.
    """
    chash = config_hash(config)
    x, y = data.load_split(config.dataset, config.split, config.n_examples, config.data_dir)
    kind = config.directions
    scale = scale_for(config)
    robust = config.loss != "clean"
    needs_attack = robust or kind in ("adversarial", "hessian")
    attack = (
        build_attack(config.attack, config.norm, config.eps, config.step_size, config.seed)
        if needs_attack
        else None
    )
    lo, hi = config.range
    axis = grid(lo, hi, config.steps)
    points = [(a,) for a in axis] if config.dims == 1 else [(a, b) for b in axis for a in axis]
    planes = config.dims
    cache: dict = {}

    def load(ref):
        if cache.get("path") != ref.path:
            cache.clear()
            model, info = evaluation.load_for_eval(ref, config, device)
            if not weights.layers(model):
                raise CheckpointError(
                    f"{ref.path}: no perturbable layers (weights or biases outside normalization)"
                )
            cache.update(path=ref.path, model=model, info=info)
        return cache["model"], cache["info"]

    def directions_of(unit, model, keys) -> list[list[torch.Tensor]]:
        w = weights.weights_of(model)
        if kind == "interpolate":
            to_ref = checkpoints.CheckpointRef("to", None, Path(config.to))
            target, _ = evaluation.load_for_eval(to_ref, config, device)
            if _layer_shapes(target) != _layer_shapes(model):
                raise CheckpointError(f"{unit.path} and --to {config.to}: different architectures")
            ends = zip(weights.weights_of(target), w, strict=True)
            return [[t.float() - s.float() for t, s in ends]]
        out = []
        for i in range(planes):
            index = unit.direction * planes + i
            gen = runtime.generator(*keys, "landscape", kind, index)
            if kind == "random":
                d = random_direction(w, gen)
            elif kind == "adversarial":
                d = adversarial_direction(
                    model, x, y, scale, attack, config.iterations, config.weight_lr, gen
                )
            else:
                if "hessian" not in cache:
                    cache["hessian"] = hessian_directions(
                        model,
                        x,
                        y,
                        attack,
                        config.n_directions * planes,
                        config.iterations,
                        runtime.generator(*keys, "landscape", kind),
                        keys,
                        config.batch_size,
                    )
                d = cache["hessian"][index]
            out.append(normalize_direction(d, w, config.normalization, scale))
        return out

    def measure(unit) -> list[dict]:
        model, info = load(unit.ref)
        model_note = evaluation.nonfinite_note(model)
        keys = (config.seed, unit.run, unit.epoch)  # the same as `flatcli attack`
        directions = directions_of(unit, model, keys)
        values = evaluate_grid(
            model,
            x,
            y,
            directions,
            points,
            attack if robust else None,
            keys,
            config.batch_size,
            on_point,
            config.point_batch,
        )
        base = evaluation.key_columns(unit.ref, info, config, chash, device)
        bad = sum(
            not all(math.isfinite(v) for v in row.values() if isinstance(v, float))
            for row in values
        )
        grid_note = f"non-finite loss at {bad} of {len(values)} points" if bad else None
        note = "; ".join(n for n in (model_note, grid_note) if n)
        return [
            {
                **base,
                "direction_kind": kind,
                "direction": unit.direction,
                "alpha": point[0],
                "beta": point[1] if len(point) > 1 else None,
                "attack": config.attack if robust else None,
                **row,
                "normalization": "none" if kind == "interpolate" else config.normalization,
                "scale": scale,
                "note": note or None,
            }
            for point, row in zip(points, values, strict=True)
        ]

    return measure
