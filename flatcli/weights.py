"""Weight-space geometry shared by flatness, landscapes and AWP (docs/method.md).

A layer is every weight or bias tensor outside normalization layers (`layers`); an offset `nu`
is a float32 list aligned with it. Relative balls (`RelativeL2Ball`, `RelativeLinfBall`) have
the verbs of the input balls, so the one ascent loop runs over them. Offsets are applied in
place and restored bitwise (`perturbed`), by a functional call (`call_perturbed`), or G at a
time in one stacked call (`call_stacked`, `Stacked`, `StackedBall`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli.errors import UsageError

_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
_TINY = 1e-12


def is_normalization(module: nn.Module) -> bool:
    """True for normalization layers, whose parameters are never perturbed."""
    return isinstance(module, _NORM_TYPES)


def layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every weight and bias tensor of `model` outside normalization layers, as (name, parameter).

    The one rule for flatness, landscapes and AWP (docs/method.md): each tensor is its own layer;
    normalization parameters and all buffers are excluded; frozen parameters are included. A
    parameter shared by several modules appears once, under its first name.
    """
    excluded = set()
    for module in model.modules():
        if is_normalization(module):
            excluded.update(id(p) for p in module.parameters(recurse=False))
    return [(name, p) for name, p in model.named_parameters() if id(p) not in excluded]


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    """The layers' tensors, detached (they share storage with the model: no copy)."""
    return [p.detach() for _, p in layers(model)]


def named_weights(
    model: nn.Module, found: Sequence[tuple[str, nn.Parameter]] | None = None
) -> tuple[list[str], list[torch.Tensor]]:
    """(names, detached tensors) of `found` (default: `require_layers(model)`), for functional
    calls: the tensors share storage with the model."""
    found = require_layers(model) if found is None else found
    return [n for n, _ in found], [p.detach() for _, p in found]


def require_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """`layers(model)`, or a one-line `UsageError` when the model has none."""
    found = layers(model)
    if not found:
        raise UsageError(
            "the model has no perturbable layers (weights or biases outside normalization layers)"
        )
    return found


def norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float32 L2 norm of each tensor, as one vector [L] on the tensors' device."""
    if not tensors:
        return torch.zeros(0)
    return torch.stack([t.detach().float().norm() for t in tensors])


def _draw(shape: torch.Size, generator: torch.Generator | None, device, kind: str) -> torch.Tensor:
    """float32 draws on the generator's device (CPU by default), moved to `device`."""
    where = generator.device if generator is not None else torch.device("cpu")
    if kind == "normal":
        t = torch.randn(shape, generator=generator, dtype=torch.float32, device=where)
    else:
        t = torch.rand(shape, generator=generator, dtype=torch.float32, device=where)
    return t.to(device)


@dataclass(frozen=True)
class RelativeL2Ball:
    """{nu : ||nu_l||_2 <= xi * ||w_l||_2 for every layer l}, per-layer relative (docs/method.md).

    - `random_start(w, generator)`: for each layer a direction uniform on the sphere (a normalized
      Gaussian) scaled to ||nu_l|| = xi * ||w_l||, i.e. a point ON the sphere of every layer. This
      is the paper's average-case distribution; the worst-case ascent starts there too (its first
      iterate is then an average-case sample, and the ascent only moves inward or along it).
    - `step(nu, grad, step_size)`: nu_l + step_size * ||w_l|| * g_l / ||g_l|| per layer (a
      normalized, relative step; a zero gradient gives no step). Needs `around(w)` first.
    - `project(nu, w)`: each nu_l scaled down to norm xi * ||w_l|| if longer.
    A layer with w_l = 0 has radius 0 and is never moved.
    """

    xi: float
    name: str = "relative-l2"
    weight_norms: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def around(self, w: Sequence[torch.Tensor]) -> RelativeL2Ball:
        """The same ball with the norms of `w` cached, so `step` can be relative to them."""
        return RelativeL2Ball(self.xi, self.name, norms(w))

    def random_start(
        self, w: Sequence[torch.Tensor], generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        out = []
        for wl in w:
            g = _draw(wl.shape, generator, wl.device, "normal")
            scale = self.xi * wl.detach().float().norm() / g.norm().clamp_min(_TINY)
            out.append(g * scale)
        return out

    def step(
        self, nu: Sequence[torch.Tensor], grad: Sequence[torch.Tensor], step_size: float
    ) -> list[torch.Tensor]:
        if self.weight_norms is None:
            raise ValueError("RelativeL2Ball.step is relative to ||w_l||: use ball.around(w)")
        gn = norms(grad).clamp_min(_TINY)
        factor = step_size * self.weight_norms.to(gn.device) / gn  # [L], no host sync
        return [n + f * g.float() for n, g, f in zip(nu, grad, factor, strict=True)]

    def project(self, nu: Sequence[torch.Tensor], w: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        radius = self.xi * norms(w)
        factor = (radius / norms(nu).clamp_min(_TINY)).clamp(max=1.0)
        return [n * f for n, f in zip(nu, factor, strict=True)]


@dataclass(frozen=True)
class RelativeLinfBall:
    """{nu : |nu_l,i| <= xi * |w_l,i| for every element}: element-wise relative L-inf.

    Element-wise (not xi * max|w_l|): the ball of each weight scales with that weight, so the
    ball is invariant to any per-layer (indeed per-element) rescaling; a zero weight never moves.
    - `random_start`: uniform in the box. - `step`: nu + step_size * |w| * sign(g) (the steepest
    ascent step for this weighted norm; needs `around(w)`). - `project`: clamp to +-xi * |w|.
    """

    xi: float
    name: str = "relative-linf"
    weight_abs: list[torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def around(self, w: Sequence[torch.Tensor]) -> RelativeLinfBall:
        return RelativeLinfBall(self.xi, self.name, [t.detach().float().abs() for t in w])

    def random_start(
        self, w: Sequence[torch.Tensor], generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        return [
            (2 * _draw(wl.shape, generator, wl.device, "uniform") - 1) * self.xi * wl.float().abs()
            for wl in w
        ]

    def step(
        self, nu: Sequence[torch.Tensor], grad: Sequence[torch.Tensor], step_size: float
    ) -> list[torch.Tensor]:
        if self.weight_abs is None:
            raise ValueError("RelativeLinfBall.step is relative to |w|: use ball.around(w)")
        return [
            n + step_size * a * g.sign() for n, g, a in zip(nu, grad, self.weight_abs, strict=True)
        ]

    def project(self, nu: Sequence[torch.Tensor], w: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for n, wl in zip(nu, w, strict=True):
            r = self.xi * wl.detach().float().abs()
            out.append(torch.maximum(torch.minimum(n, r), -r))
        return out


WEIGHT_NORMS = {"l2": RelativeL2Ball, "linf": RelativeLinfBall}


def random_offset(
    w: Sequence[torch.Tensor], xi: float, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """A random offset with ||nu_l|| = xi * ||w_l|| and a direction uniform on each layer's sphere.

    Draws are made on the generator's device (CPU by default) and moved to each layer's device,
    so the same generator gives the same offset on every device.
    """
    return RelativeL2Ball(xi).random_start(w, generator)


def zeros_like(w: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The zero offset (float32) for weights `w`."""
    return [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in w]


def _check_offset(params: Sequence[torch.Tensor], offset: Sequence[torch.Tensor]) -> None:
    if len(params) != len(offset):
        raise ValueError(f"offset has {len(offset)} tensors, the model {len(params)} layers")
    for p, nu in zip(params, offset, strict=True):
        if p.shape != nu.shape:
            raise ValueError(f"offset shape {tuple(nu.shape)} != layer shape {tuple(p.shape)}")


@contextlib.contextmanager
def perturbed(model: nn.Module, offset: Sequence[torch.Tensor]) -> Iterator[nn.Module]:
    """`with perturbed(model, nu) as m:` the model's layers hold w + nu (in place, no model copy).

    On exit, normal or not, every layer is restored bitwise from a saved copy of its tensor (the
    copy is of the perturbed tensors only, never of the module). Offsets are added in float32
    arithmetic; the weights keep their dtype.
    """
    params = [p for _, p in layers(model)]
    _check_offset(params, offset)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, nu in zip(params, offset, strict=True):
                nu = nu.to(p.device, torch.float32)
                if p.dtype == torch.float32:
                    p.add_(nu)
                else:  # float32 arithmetic, then back to the weight's dtype
                    p.copy_(p.float() + nu)
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def call_perturbed(
    model: nn.Module,
    offset: Sequence[torch.Tensor],
    x: torch.Tensor,
    names: Sequence[str] | None = None,
    weights: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """`model(x)` with each layer at w + nu (float32), by a functional call: the model is neither
    copied nor changed, and the result is differentiable in `offset`.

    `names`/`weights` (from `layers`/`weights_of`) can be passed to save looking them up per call.
    """
    if names is None or weights is None:
        names, weights = named_weights(model, layers(model))
    _check_offset(weights, offset)
    params = {n: w.float() + nu for n, w, nu in zip(names, weights, offset, strict=True)}
    return torch.func.functional_call(model, params, (x,))


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float32 vector of all tensors (layer after layer)."""
    return torch.cat([t.reshape(-1).float() for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `vector` shaped like each tensor of `like` (inverse of `flatten`)."""
    sizes = [t.numel() for t in like]
    return [v.view(t.shape) for v, t in zip(vector.split(sizes), like, strict=True)]


def stacked_params(
    weights: Sequence[torch.Tensor], offsets: Sequence[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    """Per layer the G settings w + offset_g (float32) stacked into one [G, ...] tensor."""
    for offset in offsets:
        _check_offset(weights, offset)
    return [
        torch.stack([w.detach().float() + nu[j].to(w.device) for nu in offsets])
        for j, w in enumerate(weights)
    ]


def call_stacked(
    model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    """`model` at G weight settings in one call: `params` holds per layer `names[j]` a [G, ...]
    tensor (differentiable), x [G * R, ...] has its rows interleaved (row i at setting i % G, so
    an attack that repeats its whole input keeps every row on its setting); returns [G * R, ...].

    The settings are mapped over by `torch.func.vmap` of a functional call (normalization
    parameters and buffers shared). Everything entering the vmapped call is made
    contiguous_format: a channels_last weight or input makes the activations channels_last
    inside vmap, and CUDA's batch norm then asks `is_contiguous(channels_last)` of a batched
    tensor, which vmap does not implement. G = 1 is a plain functional call.
    """
    g = len(params[0])
    if len(x) % g:
        raise ValueError(f"{len(x)} rows do not split over {g} weight settings")
    if g == 1:
        return torch.func.functional_call(
            model, {n: p[0] for n, p in zip(names, params, strict=True)}, (x,)
        )
    flat = [p.contiguous() for p in params]
    per_setting = x.reshape(-1, g, *x.shape[1:]).transpose(0, 1).contiguous()  # [G, R, ...]

    def one(layer_params: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            model, dict(zip(names, layer_params, strict=True)), (rows,)
        )

    out = torch.func.vmap(one)(flat, per_setting)  # [G, R, ...]
    return out.transpose(0, 1).reshape(len(x), *out.shape[2:])


class Stacked(nn.Module):
    """`model` at G fixed weight settings w + offset_g in one call (`call_stacked`: rows
    interleaved, row i at setting i % G). The model itself is not changed. Only inputs whose
    row count is a multiple of G are accepted: attacks that run on a subset of their examples
    (APGD-T, ensembles) cannot use it."""

    def __init__(self, model: nn.Module, offsets: Sequence[Sequence[torch.Tensor]]):
        super().__init__()
        self.names, w = named_weights(model)
        self.model = model
        self.copies = len(offsets)
        self.params = stacked_params(w, offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return call_stacked(self.model, self.names, self.params, x)


@dataclass(frozen=True)
class StackedBall:
    """A bound weight ball (`ball.around(w)`) acting on G offsets at once: `step` and `project`
    take per layer a [G, ...] tensor and apply the ball's verb to each setting (vmap over dim 0),
    so G restarts ascend together exactly as they would one at a time."""

    ball: RelativeL2Ball | RelativeLinfBall

    def step(
        self, nu: Sequence[torch.Tensor], grad: Sequence[torch.Tensor], step_size: float
    ) -> list[torch.Tensor]:
        return torch.func.vmap(lambda n, g: self.ball.step(n, g, step_size))(list(nu), list(grad))

    def project(self, nu: Sequence[torch.Tensor], w: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return torch.func.vmap(lambda n: self.ball.project(n, w))(list(nu))


def check_xi(xi) -> float:
    """`xi` as a float, or a one-line `UsageError` unless it is a finite number >= 0."""
    if isinstance(xi, bool) or not isinstance(xi, (int, float)):
        raise UsageError(f"--xi must be a number, got {xi!r}")
    if not (xi == xi and abs(xi) != float("inf")) or xi < 0:
        raise UsageError(f"--xi must be a finite number >= 0, got {xi:g}")
    return float(xi)


def ball_named(weight_norm: str):
    """The relative ball class for `--weight-norm` (l2 | linf)."""
    if weight_norm not in WEIGHT_NORMS:
        raise UsageError(f"--weight-norm {weight_norm!r}: choose {' or '.join(WEIGHT_NORMS)}")
    return WEIGHT_NORMS[weight_norm]


def uniform_norm_offset(
    w: Sequence[torch.Tensor], xi: float, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """A random offset inside the relative L2 ball: per layer a direction uniform on the sphere
    and a norm uniform in [0, xi ||w_l||] (the paper's code, `LayerWiseL2UniformNormInitialization`:
    the worst-case ascent's start). Direction drawn first, then the radius, layer after layer."""
    out = []
    for wl in w:
        g = _draw(wl.shape, generator, wl.device, "normal")
        r = _draw(torch.Size([]), generator, wl.device, "uniform")
        out.append(g * (r * xi * wl.detach().float().norm() / g.norm().clamp_min(_TINY)))
    return out


def check_conv_scale(factor) -> float:
    """`factor` as a float, or a one-line `UsageError` unless it is finite and > 0."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise UsageError(f"--conv-scale must be a number, got {factor!r}")
    if not (0 < factor < float("inf")):
        raise UsageError(f"--conv-scale must be a finite number > 0, got {factor:g}")
    return float(factor)


def scale_conv(model: nn.Module, factor: float, x: torch.Tensor) -> float:
    """Multiply the weight (and bias) of every convolution of `model` by `factor`, in place, and
    the running statistics of each BatchNorm fed directly by one (mean x a, var x a^2, as they
    would have been measured): the paper's scale-invariance check (`scale_fixed`, x0.5 / x2).

    With BN after every convolution the function is unchanged, so relative-ball flatness stays
    while the Hessian's block of those weights scales by 1 / a^2. `x` [B, ...] (a few examples on
    the model's device) finds which BN follows which conv; returns the largest change of the
    logits on x relative to their largest magnitude (0 for an invariant network; callers note
    anything else). factor 1 changes nothing and returns 0.
    """
    factor = check_conv_scale(factor)
    if factor == 1.0:
        return 0.0
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    conv_out: list[torch.Tensor] = []
    fed: list[nn.Module] = []

    def after_conv(module, inputs, output):
        conv_out.append(output)

    def before_norm(module, inputs):
        if any(inputs[0] is t for t in conv_out):
            fed.append(module)

    hooks = [c.register_forward_hook(after_conv) for c in convs]
    hooks += [
        m.register_forward_pre_hook(before_norm)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    with torch.no_grad():
        try:
            before = model(x).float()
        finally:
            for h in hooks:
                h.remove()
        conv_out.clear()
        for c in convs:
            c.weight.mul_(factor)
            if c.bias is not None:
                c.bias.mul_(factor)
        for bn in dict.fromkeys(fed):
            if bn.running_mean is not None:
                bn.running_mean.mul_(factor)
                bn.running_var.mul_(factor**2)
        after = model(x).float()
    scale = before.abs().max().clamp_min(_TINY)
    return ((after - before).abs().max() / scale).item()
