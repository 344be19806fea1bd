"""Weight-space geometry: the layer rule on every architecture, relative balls, offsets applied
without copying the model and restored bitwise, and the ascent loop over list-valued variables."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._prims_common import suggest_memory_format

from flatcli import models, runtime, weights
from flatcli.ascent import Variable, ascend
from flatcli.errors import UsageError

SMALL_KWARGS = {"wide-resnet": {"depth": 10, "widen_factor": 1}}
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models and batches are tiny: one thread is faster, and immune to oversubscribed
    cores (OpenMP spin-waits made 2 threads ~100x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _expected_layer_names(model: nn.Module) -> set[str]:
    """An independent statement of the rule: parameters of non-normalization modules."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            continue
        for name, _ in module.named_parameters(recurse=False):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_layers_rule_on_every_architecture(arch):
    kwargs = SMALL_KWARGS.get(arch, {})
    with torch.device("meta"):  # the big WRNs cost nothing on the meta device
        model = models.build(arch, 10, 3, **kwargs)
    found = weights.layers(model)
    names = [n for n, _ in found]
    assert names and len(names) == len(set(names))
    assert set(names) == _expected_layer_names(model)
    params = dict(model.named_parameters())
    assert all(params[n] is p for n, p in found)
    assert not any("normalize" in n for n in names)  # input normalization: buffers, never layers
    bn_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    }
    assert (bn_params or arch == "tiny-nobn") and not bn_params & {id(p) for _, p in found}
    # every weight and bias tensor separately: conv and linear weights all appear
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(1 for m in convs for _ in m.parameters(recurse=False)) == len(found)


def test_layers_excludes_all_normalization_kinds_and_keeps_frozen_parameters():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm2d(4, affine=True),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.LayerNorm(4 * 6 * 6),
        nn.Linear(4 * 6 * 6, 3),
    )
    model[0].weight.requires_grad_(False)  # frozen: still a layer
    names = [n for n, _ in weights.layers(model)]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    only_norm = nn.Sequential(nn.BatchNorm2d(3))
    assert weights.layers(only_norm) == []
    with pytest.raises(UsageError, match="no perturbable layers"):
        weights.require_layers(only_norm)


def _w():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 3, 3, generator=g), torch.randn(7, generator=g) * 5, torch.zeros(5)]


def test_relative_l2_random_start_is_on_each_layers_sphere_and_deterministic():
    w = _w()
    ball = weights.RelativeL2Ball(0.3)
    nu = ball.random_start(w, torch.Generator().manual_seed(0))
    again = weights.random_offset(w, 0.3, torch.Generator().manual_seed(0))
    for n, a, wl in zip(nu, again, w, strict=True):
        assert n.dtype == torch.float32 and torch.equal(n, a)
        torch.testing.assert_close(n.norm(), 0.3 * wl.norm(), rtol=1e-5, atol=1e-7)
    assert torch.equal(nu[2], torch.zeros(5))  # a zero layer has radius zero
    # directions are uniform: the mean of many unit directions is near zero
    many = torch.stack(
        [weights.random_offset(w[:1], 1.0, torch.Generator().manual_seed(s))[0] for s in range(400)]
    )
    assert (many / w[0].norm()).flatten(1).mean(0).abs().max() < 0.1


def test_relative_l2_step_and_projection():
    w = _w()
    ball = weights.RelativeL2Ball(0.1).around(w)
    grad = [torch.randn_like(t) for t in w]
    nu = ball.step(weights.zeros_like(w), grad, 0.02)
    for n, wl, g in zip(nu, w, grad, strict=True):  # normalized, relative step
        torch.testing.assert_close(n.norm(), 0.02 * wl.norm(), rtol=1e-5, atol=1e-7)
        if wl.norm() > 0:
            torch.testing.assert_close(n / n.norm(), g / g.norm())
    big = [10 * t + 1 for t in w]
    proj = ball.project(big, w)
    for p, b, wl in zip(proj, big, w, strict=True):
        assert p.norm() <= 0.1 * wl.norm() * (1 + 1e-5) + 1e-7
        if wl.norm() > 0:
            torch.testing.assert_close(p / p.norm(), b / b.norm())
    inside = [0.01 * t for t in w]
    assert all(torch.equal(a, b) for a, b in zip(ball.project(inside, w), inside, strict=True))
    with pytest.raises(ValueError, match="around"):
        weights.RelativeL2Ball(0.1).step(nu, grad, 0.01)


def test_relative_linf_ball_is_elementwise():
    w = _w()
    ball = weights.RelativeLinfBall(0.2).around(w)
    nu = ball.random_start(w, torch.Generator().manual_seed(0))
    assert all((n.abs() <= 0.2 * wl.abs() + 1e-7).all() for n, wl in zip(nu, w, strict=True))
    stepped = ball.step(weights.zeros_like(w), [torch.ones_like(t) for t in w], 0.05)
    assert all(torch.allclose(s, 0.05 * wl.abs()) for s, wl in zip(stepped, w, strict=True))
    proj = ball.project([100 * torch.ones_like(t) for t in w], w)
    assert all(torch.allclose(p, 0.2 * wl.abs()) for p, wl in zip(proj, w, strict=True))


def _model():
    torch.manual_seed(0)
    return models.build("tiny", 10, 1).eval()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _bitwise_equal(model, snapshot) -> bool:
    """Every parameter and buffer holds exactly the bytes of the snapshot."""
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        state[k].numpy().tobytes() == snapshot[k].numpy().tobytes() for k in state
    )


def test_perturbed_applies_in_place_and_restores_bitwise_even_on_error():
    model = _model()
    before = _snapshot(model)
    params_before = [p for _, p in weights.layers(model)]
    w = weights.weights_of(model)
    nu = weights.random_offset(w, 0.5, torch.Generator().manual_seed(0))
    before_w = [t.clone() for t in w]
    expected = [wl + n for wl, n in zip(before_w, nu, strict=True)]
    with weights.perturbed(model, nu) as m:
        assert m is model  # no copy
        assert all(
            torch.equal(p, e) for (_, p), e in zip(weights.layers(model), expected, strict=True)
        )
        bn = model.net[1]
        assert torch.equal(bn.weight, before["net.1.weight"])  # normalization untouched
    assert _bitwise_equal(model, before)
    assert [p for _, p in weights.layers(model)] == params_before  # same Parameter objects
    with pytest.raises(RuntimeError, match="boom"):
        with weights.perturbed(model, nu):
            raise RuntimeError("boom")
    assert _bitwise_equal(model, before)
    assert all(torch.equal(a, b) for a, b in zip(weights.weights_of(model), before_w, strict=True))
    with pytest.raises(ValueError):
        with weights.perturbed(model, nu[:-1]):
            pass


def test_call_perturbed_matches_in_place_and_is_differentiable_in_the_offset():
    model = _model()
    before = _snapshot(model)
    x = torch.rand(5, 1, 8, 8)
    w = weights.weights_of(model)
    nu = [t.requires_grad_(True) for t in weights.random_offset(w, 0.2, torch.Generator())]
    out = weights.call_perturbed(model, nu, x)
    with torch.no_grad(), weights.perturbed(model, nu):
        ref = model(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), nu)
    assert all(g.shape == n.shape and g.abs().sum() > 0 for g, n in zip(grads, nu, strict=True))
    assert _bitwise_equal(model, before)


def test_ascend_over_a_list_variable_reaches_the_closed_form_maximum():
    """max sum_l <c_l, nu_l> over ||nu_l|| <= xi ||w_l|| is nu_l = xi ||w_l|| c_l / ||c_l||;
    a layer the objective does not use gets a zero gradient and stays where it started."""
    w = _w()[:2] + [torch.randn(3)]
    c = [torch.randn_like(t) for t in w[:2]]
    ball = weights.RelativeL2Ball(0.1).around(w)

    def objective(nu):
        value = sum((cl * n).sum() for cl, n in zip(c, nu[:2], strict=True))
        return value.reshape(1), torch.zeros(1, 2)

    start = weights.zeros_like(w)
    (nu,) = ascend(objective, [Variable(start, ball, w, 0.05)], steps=10)
    for n, cl, wl in zip(nu[:2], c, w[:2], strict=True):
        torch.testing.assert_close(n, 0.1 * wl.norm() * cl / cl.norm(), rtol=1e-4, atol=1e-6)
    assert torch.equal(nu[2], torch.zeros(3))


def test_ascend_keeps_tensor_variables_working_with_mixed_lists():
    """A tensor variable (input delta) and a list variable (weights) in one ascent."""
    model = _model()
    x = torch.rand(6, 1, 8, 8)
    y = torch.randint(0, 10, (6,))
    w = weights.weights_of(model)
    names = [n for n, _ in weights.layers(model)]
    from flatcli.attacks.threat import LinfBall

    def objective(nu, delta):
        logits = weights.call_perturbed(model, nu, x + delta, names, w)
        return nn.functional.cross_entropy(logits, y, reduction="none"), logits

    losses = []
    nu, delta = ascend(
        objective,
        [
            Variable(weights.zeros_like(w), weights.RelativeL2Ball(0.05).around(w), w, 0.01),
            Variable(torch.zeros_like(x), LinfBall(0.1), x, 0.025),
        ],
        steps=5,
        on_iterate=lambda loss, logits: losses.append(loss.mean().item()),
    )
    assert isinstance(nu, list) and delta.shape == x.shape and len(losses) == 6
    assert losses[-1] > losses[0]
    assert delta.abs().max() <= 0.1 + 1e-6
    assert all(n.norm() <= 0.05 * wl.norm() * (1 + 1e-5) for n, wl in zip(nu, w, strict=True))


def test_flatten_roundtrip():
    w = _w()
    flat = weights.flatten(w)
    assert flat.numel() == sum(t.numel() for t in w)
    assert all(torch.equal(a, b) for a, b in zip(weights.unflatten(flat, w), w, strict=True))


def test_uniform_norm_offset_is_inside_each_layers_ball_with_spread_norms():
    """The worst-case start of the paper's code: per layer a norm uniform in [0, xi ||w_l||]."""
    torch.manual_seed(0)
    w = [torch.randn(64, 3, 3, 3), torch.randn(64), torch.randn(10, 256)]
    nus = [weights.uniform_norm_offset(w, 0.1, torch.Generator().manual_seed(s)) for s in range(50)]
    fractions = torch.stack([weights.norms(nu) / (0.1 * weights.norms(w)) for nu in nus])
    assert (fractions <= 1 + 1e-6).all() and (fractions >= 0).all()
    assert fractions.min() < 0.2 and fractions.max() > 0.8  # spread over the ball, not a sphere
    again = weights.uniform_norm_offset(w, 0.1, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, nus[0], strict=True))


def test_scale_conv_keeps_a_bn_network_and_reports_a_changed_one():
    torch.manual_seed(0)
    with_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()).eval()
    with_bn[1].running_mean.uniform_(-1, 1)
    without = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten()).eval()
    x = torch.rand(5, 1, 6, 6)
    conv = with_bn[0].weight.clone()
    assert weights.scale_conv(with_bn, 2.0, x) < 1e-3
    assert torch.equal(with_bn[0].weight, conv * 2)
    assert weights.scale_conv(without, 2.0, x) > 0.1
    assert weights.scale_conv(without, 1.0, x) == 0.0


def _cudnn_batch_norm_query(module, inputs):
    """What CUDA's batch norm asks of its input before choosing cuDNN: is it contiguous in its
    suggested memory format? Inside vmap that query is not implemented for channels_last (the
    `NYI: querying is_contiguous inside of vmap` of `--point-batch` on CUDA); asked here
    so that the CPU takes the path that failed there."""
    t = inputs[0]
    t.is_contiguous(memory_format=suggest_memory_format(t))


def test_stacked_channels_last_model_passes_the_cuda_batch_norm_query_and_equals_one_at_a_time():
    torch.manual_seed(0)
    model = models.build("small-cnn", 10, 1, width=8, hidden=32).eval()
    model = model.to(memory_format=torch.channels_last)  # as `load_for_eval` makes it on CUDA
    for p in model.parameters():
        p.requires_grad_(False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    hooks = [m.register_forward_pre_hook(_cudnn_batch_norm_query) for m in norms]
    w = weights.weights_of(model)
    offsets = [weights.random_offset(w, 0.1, torch.Generator().manual_seed(s)) for s in range(3)]
    x = torch.rand(4, 1, 8, 8)
    rows = x.repeat_interleave(3, 0).contiguous(memory_format=torch.channels_last)
    rows.requires_grad_(True)
    out = weights.Stacked(model, offsets)(rows)  # raised the NYI before the fix
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum(), rows)  # what an attack asks
    for g, nu in enumerate(offsets):
        xg = x.clone().requires_grad_(True)
        with weights.perturbed(model, nu):
            ref = model(xg)
            (ref_grad,) = torch.autograd.grad(ref.logsumexp(1).sum(), xg)
        torch.testing.assert_close(out[g::3], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad[g::3], ref_grad, rtol=1e-5, atol=1e-6)
    for h in hooks:
        h.remove()


def test_stacked_ball_steps_and_projects_each_setting_as_alone():
    model = _model()
    w = weights.weights_of(model)
    gen = torch.Generator().manual_seed(3)
    for ball in (weights.RelativeL2Ball(0.1).around(w), weights.RelativeLinfBall(0.1).around(w)):
        nus = [ball.random_start(w, gen) for _ in range(3)]
        grads = [[torch.randn(t.shape, generator=gen) for t in w] for _ in range(3)]
        grads[1] = [g * 0 for g in grads[1]]  # a zero gradient takes no step
        stacked = weights.StackedBall(ball)
        stack = [torch.stack(layer) for layer in zip(*nus, strict=True)]
        out = stacked.project(
            stacked.step(stack, [torch.stack(g) for g in zip(*grads, strict=True)], 0.3), w
        )
        for r in range(3):
            alone = ball.project(ball.step(nus[r], grads[r], 0.3), w)
            for a, b in zip(out, alone, strict=True):
                torch.testing.assert_close(a[r], b, rtol=1e-6, atol=1e-7)


def test_settings_per_pass_fits_free_memory_and_is_the_fixed_cap_on_cpu():
    model = _model()
    x = torch.rand(1, 1, 8, 8)
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o.numel() * 4))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert runtime.activation_bytes(model, x) == sum(outputs) > 0
    assert runtime.settings_per_pass(model, x, 64, 50) == min(50, runtime.CPU_SETTINGS)
    assert runtime.settings_per_pass(model, x, 64, 1) == 1
    # 8 GB free, half of it planned: 4e9 // (1e8 + 100 x 4 x 1e6) = 8 settings
    assert runtime.settings_that_fit(8 * 10**9, 10**8, 10**6, 100, 50) == 8
    assert runtime.settings_that_fit(8 * 10**9, 10**8, 10**6, 100, 5) == 5  # at most limit
    assert runtime.settings_that_fit(10**6, 10**8, 10**6, 100, 5) == 1  # at least one
