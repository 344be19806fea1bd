"""flatcli's own checkpoint format: safetensors (or weights-only torch) with the metadata
embedded and in a JSON sidecar `<stem>.json`, readable without torch."""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatcli import __version__
from flatcli.checkpoints.names import checkpoint_name, checkpoint_stem
from flatcli.errors import UsageError
from flatcli.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from flatcli.models import Classifier

FORMAT = "flatcli"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointInfo:
    """What `load_model` found out about a checkpoint (and used to build the model)."""

    arch: str
    arch_kwargs: dict
    dataset: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    epoch: int | None
    format: str  # "flatcli" | "foreign"
    meta: dict = field(default_factory=dict)  # own: the metadata as stored; foreign: what was found


def sidecar_path(path: str | os.PathLike) -> Path:
    """`<dir>/<stem>.json` beside a checkpoint (`epoch_0007.safetensors` -> `epoch_0007.json`)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return path
    return path.with_name(checkpoint_stem(path.name) + ".json")


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """flatcli's metadata of a checkpoint without torch: its JSON sidecar (`path` may be the
    sidecar itself), else the copy in a `.safetensors` file's header; None for other files."""
    path = Path(path)
    side = sidecar_path(path)
    try:
        with open(side, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return meta
    if path.name.lower().endswith(".safetensors"):
        return own_meta_from_header(safetensors_header(path))
    return None


def safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file, read without torch; None if it is not one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return None
            (size,) = struct.unpack("<Q", head)
            if size < 2 or size > 100_000_000 or 8 + size > os.fstat(fh.fileno()).st_size:
                return None
            raw = fh.read(size)
    except OSError:
        return None
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def own_meta_from_header(header: dict | None) -> dict | None:
    """flatcli's metadata in a safetensors header (`__metadata__["flatcli"]`), or None."""
    if not header:
        return None
    metadata = header.get("__metadata__") or {}
    try:
        meta = json.loads(metadata[FORMAT]) if FORMAT in metadata else None
    except (TypeError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def jsonable(value: Any) -> Any:
    """Plain JSON values (non-finite floats -> None, tuples -> lists, unknown -> str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=str)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return jsonable(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    return str(value)


def save_checkpoint(
    path: str | os.PathLike,
    model: Classifier,
    arch: str,
    arch_kwargs: dict,
    dataset: str,
    epoch: int | None,
    config: dict | None = None,
) -> Path:
    """Write `model` in flatcli's own format; returns the checkpoint path.

    `path` ending in `.safetensors` (recommended) or `.pt`/`.pth` (a weights-only torch file);
    an existing directory gets `checkpoint_name(epoch)` inside it. The full state dict (input
    normalization and BN buffers included) is stored with the metadata embedded (safetensors
    header / the torch file's `flatcli` entry), plus the sidecar `<stem>.json`:
    {"format", "format_version", "arch", "arch_kwargs", "dataset", "num_classes", "in_channels",
    "mean", "std", "epoch", "config", "flatcli_version"}. Both files are written atomically.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / checkpoint_name(epoch)
    kind = path.suffix.lower()
    if kind not in (".safetensors", ".pt", ".pth"):
        raise UsageError(f"checkpoint file must end in .safetensors, .pt or .pth: {path}")
    mean = tuple(float(v) for v in model.normalize.mean.flatten().tolist())
    std = tuple(float(v) for v in model.normalize.std.flatten().tolist())
    meta = jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "arch_kwargs": dict(arch_kwargs or {}),
            "dataset": dataset,
            "num_classes": _class_count(model),
            "in_channels": len(mean),
            "mean": list(mean),
            "std": list(std),
            "epoch": None if epoch is None else int(epoch),
            "config": config or {},
            "flatcli_version": __version__,
        }
    )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".safetensors":
        from safetensors.torch import save

        header = {"format": "pt", FORMAT: json.dumps(meta, sort_keys=True)}
        raw = canonical_safetensors(save(state, metadata=header))
    else:
        buffer = io.BytesIO()  # a file name would enter the archive's folder name
        torch.save({FORMAT: meta, "state_dict": state}, buffer)
        raw = buffer.getvalue()
    atomic_write(path, lambda tmp: tmp.write_bytes(raw))
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def canonical_safetensors(raw: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header written in sorted key order (the writer
    orders `__metadata__` differently from run to run): the same tensors and metadata give the
    same bytes. The tensor data, and the offsets into it, are kept as they are."""
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the writer keeps it
    return struct.pack("<Q", len(text)) + text + raw[8 + size :]


def _class_count(model: Classifier) -> int | None:
    """The model's own class count, the output width of its last linear layer (the dataset's
    count can be smaller: an npz whose labels do not cover every class)."""
    from torch import nn

    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    return widths[-1] if widths else None
