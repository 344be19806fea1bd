"""Architecture registry: name -> factory of the bare network, and `Classifier`, which wraps it
with its input normalization so that every model takes inputs in [0, 1]. Parameter names follow
the public codebases, so their state dicts load into `model.net` (docs/method.md,
"Implementation notes").
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from flatcli.errors import UsageError
from flatcli.models.registry import ARCHITECTURES, ArchSpec, register  # noqa: F401 (re-exported)

# Each family registers its architectures on import, in this order (the order `--help` lists).
# isort: off
from flatcli.models import small  # noqa: F401
from flatcli.models import preact_resnet, resnet, wide_resnet  # noqa: F401
# isort: on


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean/std as buffers (saved, never perturbed)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        )
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """A network with its input normalization: logits = net(normalize(x)), x in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build(
    arch: str,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> Classifier:
    """A fresh `Classifier` of architecture `arch`; mean/std default to the identity."""
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    net = ARCHITECTURES[arch].factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    mean = [0.0] * in_channels if mean is None else mean
    std = [1.0] * in_channels if std is None else std
    return Classifier(net, mean, std)


def parse_arch(text: str) -> tuple[str, dict]:
    """`name[:key=value,...]` (e.g. `small-cnn:width=8`) -> (name, kwargs), each key checked
    against the factory's signature and its value converted to the type of the key's default
    (int, float, bool as true/false/1/0, str). Bad input: `UsageError` with one line."""
    name, _, args = str(text).partition(":")
    name = name.strip()
    if name not in ARCHITECTURES:
        raise UsageError(f"unknown --arch {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    params = {
        k: p for k, p in inspect.signature(ARCHITECTURES[name].factory).parameters.items()
        if k not in ("num_classes", "in_channels")
    }
    kwargs: dict = {}
    for item in filter(None, (part.strip() for part in args.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in params:
            known = ", ".join(f"{k}={p.default}" for k, p in params.items()) or "none"
            raise UsageError(f"--arch {text}: {item!r} is not key=value for {name} ({known})")
        kwargs[key] = _arch_value(text, key, value, params[key].default)
    return name, kwargs


def arch_defaults(name: str) -> dict:
    """The keyword defaults of an architecture's factory (num_classes, in_channels excluded)."""
    params = inspect.signature(ARCHITECTURES[name].factory).parameters.items()
    return {k: p.default for k, p in params if k not in ("num_classes", "in_channels")}


def _arch_value(text: str, key: str, value: str, default):
    kind = type(default) if default is not inspect.Parameter.empty else str
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        raise UsageError(f"--arch {text}: {key} must be {kind.__name__}, got {value!r}") from None

