"""Device choice, per-work-unit seeded generators, provenance columns."""

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
