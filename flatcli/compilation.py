"""The compile policy: when `torch.compile` wraps a model, decided in one place.

`auto` compiles on CUDA only (on CPU the one-off compile, tens of seconds, outweighs what the
small models of the tests and the demo gain); `on` on any device; `off` never. Results equal
eager up to float rounding, so the choice is runtime (not in `config_hash`); docs/method.md.
"""

from __future__ import annotations

import sys
import weakref

import torch
from torch import nn

from flatcli.errors import UsageError

COMPILE_CHOICES = ("auto", "on", "off")
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # wrapper -> its backend
# torch's own compile timers: a frame's compile (forward graphs) and the lazy backward compile.
_COMPILE_TIMERS = ("_compile.compile_inner", "backward._backward_impl")


def enabled(policy: str, device: torch.device) -> bool:
    """Whether `policy` (auto | on | off) compiles on `device`."""
    if policy not in COMPILE_CHOICES:
        raise UsageError(f"--compile {policy!r}: choose {', '.join(COMPILE_CHOICES)}")
    return policy == "on" or (policy == "auto" and torch.device(device).type == "cuda")


def compiled(
    model: nn.Module, policy: str, device: torch.device, backend: str = "inductor"
) -> nn.Module:
    """`model` wrapped by `torch.compile` (static shapes) when `policy` says so on `device`,
    else `model` itself (also when it is compiled already). The wrapper shares the model's
    parameters, and torch keeps the compiled code with the model class's `forward`: another
    instance of the same architecture, or other weights loaded in place, reuse it without a
    recompile as long as shapes, dtypes and grad mode match. `backend` is for tests
    ("aot_eager" compiles in a second)."""
    if not enabled(policy, device) or is_compiled(model):
        return model
    wrapper = torch.compile(model, dynamic=False, backend=backend)
    _BACKENDS[wrapper] = backend
    return wrapper


_FUNCTIONS: dict = {}  # (function, backend) -> its compiled wrapper, one per process


def compiled_function(fn, policy: str, device: torch.device, backend: str = "inductor"):
    """`fn` wrapped by `torch.compile` (static shapes) when `policy` says so on `device`, else
    `fn` itself; one wrapper per (fn, backend), so every call shares its compiled code. A model
    passed to `fn` is guarded by identity: pass one instance per architecture
    (`evaluation.SharedModels`) to avoid a recompile per checkpoint."""
    if not enabled(policy, device):
        return fn
    key = (fn, backend)
    if key not in _FUNCTIONS:
        _FUNCTIONS[key] = torch.compile(fn, dynamic=False, backend=backend)
    return _FUNCTIONS[key]


def compiled_like(module: nn.Module, model: nn.Module) -> nn.Module:
    """`module` compiled as `model` is (its backend; torch.compile's default inductor for a
    model compiled outside flatcli), or `module` itself when `model` is eager."""
    if not is_compiled(model):
        return module
    return compiled(module, "on", torch.device("cpu"), _BACKENDS.get(model, "inductor"))


def is_compiled(model: nn.Module) -> bool:
    """Whether `model` is a `torch.compile` wrapper (its batches should keep static shapes)."""
    # Without torch._dynamo loaded nothing is compiled; checking first spares eager runs its import.
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(model, dynamo.OptimizedModule)


def eager(model: nn.Module) -> nn.Module:
    """The model behind a `torch.compile` wrapper (or `model` itself), for code that calls it
    with a new shape each time (a recompile per call would cost more than it gains)."""
    return model._orig_mod if is_compiled(model) else model


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (torch's compile timers); the difference
    across a call is that call's compile time."""
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(compilation_time_metrics.get(key, ())) for key in _COMPILE_TIMERS)
