"""The architecture registry: name -> factory of the bare network. Each family module registers
its architectures with `register` when `flatcli.models` imports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    name: str
    factory: Callable[..., nn.Module]
    description: str


ARCHITECTURES: dict[str, ArchSpec] = {}


def register(name: str, description: str):
    """Decorator: register `factory(num_classes, in_channels, **kwargs) -> nn.Module` as `name`."""

    def wrap(factory):
        ARCHITECTURES[name] = ArchSpec(name, factory, description)
        return factory

    return wrap
