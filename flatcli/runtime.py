"""Device choice and sizing of stacked passes, per-work-unit seeded generators, provenance."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os

import torch

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
