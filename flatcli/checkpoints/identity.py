"""A checkpoint's identity: a digest of its tensors (names, dtypes, shapes and bytes, in name
order), never of the file. Metadata, file format (.safetensors or .pt), path, run name and
flatcli's version do not enter it, so the same weights give the same seeds and result keys
wherever they were trained, copied or renamed. A safetensors file is digested from its header
and byte ranges without torch; other files are read with the weights-only loader and unwrapped
to their state dict first."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from flatcli.checkpoints.safe_load import sniff

# safetensors dtype codes -> torch's names, so both formats spell a dtype the same way
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_CHUNK = 1 << 22
_digests: dict[tuple, str] = {}


class _Digest:
    """sha256 over tensors fed in name order, each as an unambiguous record."""

    def __init__(self):
        self._hash = hashlib.sha256(b"flatcli-tensors-1\0")

    def tensor(self, name: str, dtype: str, shape: Iterable[int], size: int) -> None:
        head = json.dumps([name, dtype, [int(s) for s in shape], int(size)])
        self._hash.update(struct.pack("<Q", len(head)) + head.encode())

    def update(self, data) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def tensor_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of the checkpoint's tensors; "" when the file cannot be read as one (loading
    then says why). Cached per (file, size, mtime, inode) for this process."""
    try:
        stat = os.stat(path)
        real = os.path.realpath(path)
    except OSError:
        return ""
    cache_key = (real, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if cache_key not in _digests:
        digest = _compute(Path(real))
        if not digest:
            return ""
        _digests[cache_key] = digest
    return _digests[cache_key]


def _compute(path: Path) -> str:
    from flatcli.errors import CheckpointError

    kind = sniff(path)
    try:
        if kind == "safetensors":
            return _safetensors_digest(path)
        if kind in ("zip", "legacy", "pickle"):
            return state_digest(_state_dict(path))
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return ""
    return ""


def _safetensors_digest(path: Path) -> str:
    """From the header and the byte ranges it names, without torch."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        start = 8 + size
        end_of_file = os.fstat(fh.fileno()).st_size
        digest = _Digest()
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            begin, end = (int(v) for v in entry["data_offsets"])
            if not 0 <= begin <= end or start + end > end_of_file:
                raise ValueError(f"tensor {name} lies outside the file")
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"], str(entry["dtype"]).lower())
            digest.tensor(name, dtype, entry["shape"], end - begin)
            fh.seek(start + begin)
            left = end - begin
            while left:
                block = fh.read(min(left, _CHUNK))
                if not block:
                    raise ValueError(f"tensor {name} is cut short")
                digest.update(block)
                left -= len(block)
    return digest.hexdigest()


def _state_dict(path: Path) -> Mapping:
    """The tensors of a torch file as `load_model` sees them: flatcli's own `state_dict`, or a
    foreign file unwrapped (`state_dict`, `model`, ...) to its tensors."""
    from flatcli.checkpoints.safe_load import read_checkpoint
    from flatcli.checkpoints.state_dict import unwrap

    obj, _meta = read_checkpoint(path, str(path))
    tensors, _wrapper, _extras = unwrap(obj, str(path))
    return tensors


def state_digest(state: Mapping) -> str:
    """The digest of a state dict in memory (name -> tensor), as `tensor_digest` of a file
    holding it: raw little-endian bytes in C order."""
    import torch

    digest = _Digest()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        raw = tensor.view(torch.uint8) if tensor.numel() else tensor.new_empty(0, dtype=torch.uint8)
        data = raw.numpy()
        digest.tensor(name, str(tensor.dtype).removeprefix("torch."), state[name].shape, data.size)
        digest.update(memoryview(data))
    return digest.hexdigest()
