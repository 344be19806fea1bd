"""How and where the work runs: device, stacking, seeded generators, provenance, compiling.

Device choice and sizing of stacked passes, per-work-unit seeded generators, provenance columns,
and the compile policy (when `torch.compile` wraps a model, decided in one place). `auto`
compiles on CUDA only (on CPU the one-off compile, tens of seconds, outweighs what the small
models of the tests and the demo gain); `on` on any device; `off` never. Compiled
results equal eager up to float rounding, so the choice is runtime (not in `config_hash`);
docs/method.md."""

from __future__ import annotations

import ctypes
import datetime as _dt
import hashlib
import os
import platform
import sys
import weakref

import torch
from torch import nn

from flatcli import __version__
from flatcli.errors import UsageError


def resolve_device(name: str | None = None) -> torch.device:
    """`auto` (or None, or `$FLATCLI_DEVICE`) -> cuda if available else cpu; `cuda[:N]`, `cpu`."""
    name = name or os.environ.get("FLATCLI_DEVICE") or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def unit_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from the user's seed and a work unit's identity (run, epoch, ...)."""
    text = "\x1f".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator for one work unit: the same draws whatever batch size, shard or device."""
    return torch.Generator().manual_seed(unit_seed(seed, *keys))


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device}:{torch.cuda.get_device_name(device)}"
    return "cpu"


def provenance(device: torch.device, dtype: str = "float32") -> dict:
    """Columns every row carries about where and how it was computed."""
    return {
        "flatcli_version": __version__,
        "torch_version": torch.__version__,
        "device": device_label(device),
        "dtype": dtype,
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


CPU_SETTINGS = 1  # on CPU stacking measured no faster (compute-bound), and RAM is not sized
_FREE_SHARE = 0.5  # of the free device memory a stacked pass may plan to use
_ACTIVATION_FACTOR = 4  # forward activations kept for backward, their gradients, the attack's


def activation_bytes(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module of `model` on `example` [1, ...] (one forward
    pass without gradients): the activation memory of one example."""
    total = [0]

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def settings_per_pass(model: torch.nn.Module, example: torch.Tensor, rows: int, limit: int) -> int:
    """How many weight settings (samples, restarts, grid points) one stacked pass holds, in
    [1, limit]: on CUDA as many as fit in half the free memory (`torch.cuda.mem_get_info`), each
    setting costing a float32 copy of the weights and the activations of `rows` examples
    (forward and backward, measured on `example` [1, ...]); on CPU `CPU_SETTINGS`. The batch
    loops' out-of-memory halving stays the safety net."""
    limit = max(1, int(limit))
    device = next(model.parameters()).device
    if device.type != "cuda":
        return min(limit, CPU_SETTINGS)
    free, _ = torch.cuda.mem_get_info(device)
    weight_bytes = sum(4 * p.numel() for p in model.parameters())
    example_bytes = activation_bytes(model, example.to(device))
    return settings_that_fit(free, weight_bytes, example_bytes, rows, limit)


def settings_that_fit(
    free_bytes: int, weight_bytes: int, example_bytes: int, rows: int, limit: int
) -> int:
    """Settings in [1, limit] whose float32 weight copies and activations (`example_bytes` per
    row, times forward/backward/attack buffers) fit in half of `free_bytes`."""
    per_setting = weight_bytes + rows * _ACTIVATION_FACTOR * example_bytes
    return max(1, min(int(limit), int(_FREE_SHARE * free_bytes) // max(1, per_setting)))


def attack_settings_per_pass(
    model: torch.nn.Module, x: torch.Tensor, attack, batch_size: int, limit: int
) -> int:
    """`settings_per_pass` for the engine's stacked pass (`engine.robust_losses_at`) of `attack`
    (None: clean only) on batches of `batch_size` of x: 1 for an attack that drops rows (APGD-T,
    ensembles cannot stack); PGD's restarts multiply the rows."""
    if attack is not None and not getattr(attack, "keeps_rows", False):
        return 1
    rows = min(batch_size, len(x)) * max(1, getattr(attack, "restarts", 1) or 1)
    return settings_per_pass(model, x[:1], rows, limit)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_memory() -> bool:
    """With FLATCLI_MALLOC=kept, ask glibc's malloc to serve large allocations from the heap and
    to keep what is freed (mallopt: no mmap, trim only above 2 GiB free). By default every tensor
    above 32 MiB is mapped fresh and unmapped when freed, and on CPU the page faults of an
    attack's stacked restarts cost more system time than its arithmetic costs user time; kept,
    attacks and training ran 1.5-2.4x faster, with 1.4-1.8x the peak memory, the same numbers
    (README, "The cost of a study"). Opt-in, because a Slurm job sized by its memory limit could
    be killed. True when the setting took effect; False, nothing done, without it or off glibc."""
    if os.environ.get("FLATCLI_MALLOC") != "kept" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


# ---------------------------------------------------------------------------------------------
# The compile policy

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
