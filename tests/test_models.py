"""Model registry: every architecture builds and runs; names and sizes match public codebases."""

from __future__ import annotations

import math

import pytest
import torch

from flatcli import models
from flatcli.errors import UsageError

# Published parameter counts for 10 classes, 3 input channels (CIFAR-10).
PARAM_COUNTS = {
    "preact-resnet18": 11_172_170,  # robust_overfitting's PreActResNet-18 (with its final `bn`)
    "resnet18": 11_173_962,  # kuangliu/pytorch-cifar ResNet-18
    "wrn-28-10": 36_479_194,
    "wrn-34-10": 46_160_474,
}

# Keys (and shapes) of the public checkpoints, under `net.`; None: must be absent.
EXPECTED_KEYS = {
    "preact-resnet18": {
        "net.conv1.weight": (64, 3, 3, 3),
        "net.layer1.0.bn1.weight": (64,),
        "net.layer1.0.bn1.running_mean": (64,),
        "net.layer1.0.conv1.weight": (64, 64, 3, 3),
        "net.layer1.0.bn2.weight": (64,),
        "net.layer1.0.conv2.weight": (64, 64, 3, 3),
        "net.layer1.0.shortcut.0.weight": None,
        "net.layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "net.layer2.0.shortcut.1.weight": None,
        "net.layer2.1.shortcut.0.weight": None,
        "net.layer4.1.conv2.weight": (512, 512, 3, 3),
        "net.layer4.0.shortcut.0.weight": (512, 256, 1, 1),
        "net.bn.weight": (512,),
        "net.bn.running_var": (512,),
        "net.linear.weight": (10, 512),
        "net.linear.bias": (10,),
        "net.bn1.weight": None,
    },
    "resnet18": {
        "net.conv1.weight": (64, 3, 3, 3),
        "net.bn1.weight": (64,),
        "net.bn1.num_batches_tracked": (),
        "net.layer1.0.conv1.weight": (64, 64, 3, 3),
        "net.layer1.0.bn1.weight": (64,),
        "net.layer1.0.conv2.weight": (64, 64, 3, 3),
        "net.layer1.0.bn2.bias": (64,),
        "net.layer1.0.shortcut.0.weight": None,
        "net.layer2.0.shortcut.0.weight": (128, 64, 1, 1),
        "net.layer2.0.shortcut.1.weight": (128,),
        "net.layer2.0.shortcut.1.running_mean": (128,),
        "net.layer3.1.shortcut.0.weight": None,
        "net.layer4.1.bn2.weight": (512,),
        "net.linear.weight": (10, 512),
        "net.linear.bias": (10,),
        "net.bn.weight": None,
    },
    "wrn-34-10": {
        "net.conv1.weight": (16, 3, 3, 3),
        "net.block1.layer.0.bn1.weight": (16,),
        "net.block1.layer.0.conv1.weight": (160, 16, 3, 3),
        "net.block1.layer.0.bn2.weight": (160,),
        "net.block1.layer.0.conv2.weight": (160, 160, 3, 3),
        "net.block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "net.block1.layer.1.convShortcut.weight": None,
        "net.block1.layer.4.conv2.weight": (160, 160, 3, 3),
        "net.block1.layer.5.conv2.weight": None,
        "net.block2.layer.0.convShortcut.weight": (320, 160, 1, 1),
        "net.block3.layer.0.conv1.weight": (640, 320, 3, 3),
        "net.block3.layer.4.bn2.running_var": (640,),
        "net.bn1.weight": (640,),
        "net.fc.weight": (10, 640),
        "net.fc.bias": (10,),
        "net.sub_block1.layer.0.conv1.weight": None,
    },
    "wrn-28-10": {
        "net.block1.layer.3.conv2.weight": (160, 160, 3, 3),
        "net.block1.layer.4.conv2.weight": None,
        "net.block3.layer.0.convShortcut.weight": (640, 320, 1, 1),
        "net.fc.weight": (10, 640),
    },
}

# Number of state-dict entries (parameters and BN buffers, plus normalize.mean/std).
STATE_DICT_SIZES = {"preact-resnet18": 109, "resnet18": 124, "wrn-34-10": 193, "wrn-28-10": 157}


def _meta(arch: str, **kwargs) -> models.Classifier:
    """The model without memory or initialization: for names, shapes and parameter counts."""
    with torch.device("meta"):
        return models.build(arch, num_classes=10, in_channels=3, **kwargs)


# Registered names whose defaults duplicate another name's (checked on meta below): build small.
SMALL_KWARGS = {"wide-resnet": {"depth": 16, "widen_factor": 2}}


def _built(arch: str) -> models.Classifier:
    torch.manual_seed(0)
    return models.build(arch, num_classes=10, in_channels=3, **SMALL_KWARGS.get(arch, {}))


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_families_registered():
    for name in ("preact-resnet18", "resnet18", "wide-resnet", "wrn-28-10", "wrn-34-10"):
        assert name in models.ARCHITECTURES
        assert models.ARCHITECTURES[name].description


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_builds_runs_and_is_deterministic_in_eval(arch):
    model = _built(arch)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, 10)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    # train mode runs too (BN on batch statistics) and leaves the mean/std buffers alone
    model.train()
    model(x)
    model.eval()
    assert torch.equal(model.normalize.mean, torch.zeros(1, 3, 1, 1))


@pytest.mark.parametrize("arch", ["preact-resnet18", "resnet18", "wide-resnet"])
def test_other_channels_classes_and_sizes(arch):
    kwargs = {"depth": 10, "widen_factor": 1} if arch == "wide-resnet" else {"width": 8}
    torch.manual_seed(0)
    model = models.build(arch, num_classes=7, in_channels=1, **kwargs).eval()
    for size in (8, 28, 32):
        with torch.no_grad():
            assert model(torch.rand(2, 1, size, size)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["preact-resnet18", "resnet18", "wide-resnet"])
def test_every_parameter_gets_a_gradient(arch):
    kwargs = {"depth": 16, "widen_factor": 2} if arch == "wide-resnet" else {"width": 8}
    torch.manual_seed(0)
    model = models.build(arch, num_classes=10, in_channels=3, **kwargs).train()
    model(torch.rand(4, 3, 8, 8)).logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", sorted(PARAM_COUNTS))
def test_parameter_counts(arch):
    n = _n_params(_meta(arch))
    assert abs(n - PARAM_COUNTS[arch]) <= 0.01 * PARAM_COUNTS[arch]
    assert n == PARAM_COUNTS[arch]


def test_width_scales_resnets():
    assert _n_params(_meta("resnet18", width=32)) < _n_params(_meta("resnet18")) / 3
    assert _n_params(_meta("preact-resnet18", width=32)) < _n_params(_meta("preact-resnet18")) / 3


def test_generic_wide_resnet_matches_named():
    named = _meta("wrn-28-10").state_dict()
    generic = _meta("wide-resnet", depth=28, widen_factor=10).state_dict()
    assert {k: v.shape for k, v in named.items()} == {k: v.shape for k, v in generic.items()}
    default = _meta("wide-resnet").state_dict()  # defaults: TRADES' WRN-34-10
    named = _meta("wrn-34-10").state_dict()
    assert {k: v.shape for k, v in named.items()} == {k: v.shape for k, v in default.items()}


@pytest.mark.parametrize("arch", sorted(EXPECTED_KEYS))
def test_state_dict_names_match_public_codebases(arch):
    state = _meta(arch).state_dict()
    assert {"normalize.mean", "normalize.std"} <= set(state)
    assert all(k.startswith(("net.", "normalize.")) for k in state)
    for key, shape in EXPECTED_KEYS[arch].items():
        if shape is None:
            assert key not in state, key
        else:
            assert key in state, key
            assert tuple(state[key].shape) == shape, key
    assert len(state) == STATE_DICT_SIZES[arch]


def test_trades_sub_block1():
    plain = _meta("wrn-34-10").state_dict()
    with_sub = _meta("wrn-34-10", sub_block1=True).state_dict()
    extra = set(with_sub) - set(plain)
    assert extra and all(k.startswith("net.sub_block1.layer.") for k in extra)
    assert set(plain) <= set(with_sub)
    assert tuple(with_sub["net.sub_block1.layer.0.convShortcut.weight"].shape) == (160, 16, 1, 1)
    # the copy is not used by forward: its parameters get no gradient
    torch.manual_seed(0)
    model = models.build("wide-resnet", 10, 3, depth=10, widen_factor=1, sub_block1=True)
    model(torch.rand(2, 3, 8, 8)).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith("net.sub_block1."), name


def test_wrn_dropout_only_in_training():
    torch.manual_seed(0)
    model = models.build("wide-resnet", 10, 3, depth=10, widen_factor=1, dropout=0.5)
    x = torch.rand(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    a = model.net.block1.layer[0](model.net.conv1(x))
    torch.manual_seed(2)
    b = model.net.block1.layer[0](model.net.conv1(x))
    assert not torch.equal(a, b)


def test_wrn_init_follows_original():
    torch.manual_seed(0)
    net = models.build("wide-resnet", 10, 3, depth=16, widen_factor=4).net
    w = net.block2.layer[1].conv1.weight  # 128 -> 128, 3x3: std sqrt(2 / (9 * 128))
    assert abs(w.std().item() / math.sqrt(2 / (9 * 128)) - 1) < 0.05
    assert torch.equal(net.bn1.weight, torch.ones_like(net.bn1.weight))
    assert torch.equal(net.fc.bias, torch.zeros_like(net.fc.bias))


@pytest.mark.parametrize(
    "kwargs", [{"depth": 30}, {"depth": 4}, {"widen_factor": 0}, {"dropout": 1.0}]
)
def test_wide_resnet_rejects_bad_settings(kwargs):
    with pytest.raises(UsageError):
        models.build("wide-resnet", 10, 3, **kwargs)


def test_unknown_architecture():
    with pytest.raises(UsageError):
        models.build("resnet-does-not-exist")


def test_parse_arch_takes_checked_typed_arguments():
    assert models.parse_arch("small-cnn") == ("small-cnn", {})
    assert models.parse_arch("small-cnn:width=8, hidden=16") == (
        "small-cnn", {"width": 8, "hidden": 16}
    )
    assert models.parse_arch("wide-resnet:depth=16,widen_factor=2,dropout=0.1,sub_block1=true") == (
        "wide-resnet", {"depth": 16, "widen_factor": 2, "dropout": 0.1, "sub_block1": True}
    )
    for bad, says in [
        ("small-cnn:depth=3", "'depth=3' is not key=value for small-cnn (width=32, hidden=128)"),
        ("small-cnn:width", "'width' is not key=value"),
        ("small-cnn:width=eight", "width must be int, got 'eight'"),
        ("wide-resnet:sub_block1=maybe", "sub_block1 must be bool"),
        ("nope:width=8", "unknown --arch 'nope'"),
    ]:
        with pytest.raises(UsageError) as err:
            models.parse_arch(bad)
        assert says in str(err.value) and "\n" not in str(err.value)
