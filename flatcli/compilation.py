"""The compile policy (issue 11): when `torch.compile` wraps a model, decided in one place.

`auto` compiles on CUDA only (on CPU the one-off compile, tens of seconds, outweighs what the
small models of the tests and the demo gain); `on` compiles on any device; `off` never. A
compiled model gives the same results as the eager one up to float rounding, so the choice is
runtime (not hashed into `config_hash`).
"""

from __future__ import annotations

import torch
from torch import nn

from flatcli.errors import UsageError

COMPILE_CHOICES = ("auto", "on", "off")


def enabled(policy: str, device: torch.device) -> bool:
    """Whether `policy` (auto | on | off) compiles on `device`."""
    if policy not in COMPILE_CHOICES:
        raise UsageError(f"--compile {policy!r}: choose {', '.join(COMPILE_CHOICES)}")
    return policy == "on" or (policy == "auto" and torch.device(device).type == "cuda")


def compiled(model: nn.Module, policy: str, device: torch.device) -> nn.Module:
    """`model` wrapped by `torch.compile` (static shapes) when `policy` says so on `device`,
    else `model` itself. The wrapper shares the model's parameters: loading another
    checkpoint's weights into `model` in place reuses the compiled code without recompiling."""
    if not enabled(policy, device):
        return model
    return torch.compile(model, dynamic=False)
