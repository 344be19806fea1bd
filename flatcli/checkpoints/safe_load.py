"""Reading checkpoint files without running code from them, and the one restricted unpickler
(`RestrictedUnpickler`, also used for CIFAR's pickled batches). The rule: docs/method.md,
"Implementation notes"."""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flatcli.checkpoints.format import FORMAT, own_meta_from_header, safetensors_header
from flatcli.errors import CheckpointError, first_sentence, one_line

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickle of torch's magic number


def sniff(path: Path) -> str:
    """'safetensors', 'zip' (torch >= 1.6), 'legacy' (older torch), 'pickle', 'empty' or
    'unknown', from the first bytes (nothing is executed)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return "unknown"
    if not head:
        return "empty"
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "legacy"
    if safetensors_header(path) is not None:  # before the pickle test: its size may start 0x80
        return "safetensors"
    if head.startswith(b"\x80"):
        return "pickle"
    return "unknown"


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}
_NO_PUSH_OPS = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO", "STOP"}


def _pickle_globals(stream: io.BufferedIOBase | io.BytesIO, max_pickles: int) -> list[str]:
    """The `module.name` imports a pickle stream asks for, read with `pickletools` (nothing is
    executed or constructed). An import whose name cannot be followed is listed as '?'."""
    names: list[str] = []
    for _ in range(max_pickles):
        pushed: list[str | None] = []
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _pos in pickletools.genops(stream):
                kind = op.name
                if kind in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                    pushed.append(None)
                elif kind == "STACK_GLOBAL":
                    module, name = (pushed[-2], pushed[-1]) if len(pushed) >= 2 else (None, None)
                    names.append(f"{module}.{name}" if module and name else "?")
                    pushed.append(None)
                elif kind in _STRING_OPS:
                    pushed.append(arg if isinstance(arg, str) else None)
                elif kind == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif kind in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif kind in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif kind not in _NO_PUSH_OPS:
                    pushed.append(None)
        except Exception:  # not (or no longer) a pickle: stop listing
            break
    return names


def _file_globals(path: Path, kind: str) -> list[str]:
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                return [g for n in pkls for g in _pickle_globals(io.BytesIO(zf.read(n)), 1)]
        with open(path, "rb") as fh:
            return _pickle_globals(fh, 5 if kind == "legacy" else 1)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []



class Refused(pickle.UnpicklingError):
    """A global outside the allow-list: the file is refused before anything was called."""


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode` as Python 3 protocol-2 pickles use it for bytes (latin-1 only)."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise Refused("_codecs.encode is allowed for latin-1 text only")
    return codecs.encode(text, "latin1")


@functools.lru_cache(maxsize=1)
def plain_globals() -> dict[str, object]:
    """`module.name` -> object for the plain data old training scripts and CIFAR pickle: numpy
    arrays, dtypes and scalars, OrderedDict, argparse.Namespace, builtin containers, bytes."""
    import argparse
    import builtins
    import collections

    import numpy as np

    probe = np.zeros(1, dtype=np.uint8)
    allowed: dict[str, object] = {
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "_codecs.encode": _latin1_encode,
        "collections.OrderedDict": collections.OrderedDict,
        "argparse.Namespace": argparse.Namespace,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray._reconstruct"] = probe.__reduce__()[0]
        allowed[f"{core}.multiarray.scalar"] = np.uint8(0).__reduce__()[0]
        allowed[f"{core}.multiarray.dtype"] = np.dtype
        allowed[f"{core}.multiarray.ndarray"] = np.ndarray
        allowed[f"{core}.numeric._frombuffer"] = probe.__reduce_ex__(5)[0]
    allowed["numpy.core.multiarray.scalar"] = allowed["numpy._core.multiarray.scalar"]
    for module in ("builtins", "__builtin__"):
        for name in ("set", "frozenset", "bytearray", "slice", "complex", "range"):
            allowed[f"{module}.{name}"] = getattr(builtins, name)
    dtypes = getattr(np, "dtypes", None)
    for name, value in vars(dtypes).items() if dtypes else ():
        if isinstance(value, type):
            allowed[f"numpy.dtypes.{name}"] = value
    return allowed


def allowed_global(name: str) -> bool:
    """Imports that may reach torch's weights-only unpickler (which decides about torch.*)."""
    return name.startswith("torch.") or name in plain_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, bytes and `plain_globals()`; refuses every other
    global and every persistent id (raises `Refused`, nothing was called)."""

    def find_class(self, module: str, name: str):
        found = plain_globals().get(f"{module}.{name}")
        if found is None:
            raise Refused(f"global {module}.{name} is not allowed (plain data only)")
        return found

    def persistent_load(self, pid):
        raise Refused("persistent ids are not allowed")


@functools.lru_cache(maxsize=1)
def _extra_safe_globals() -> tuple:
    """`plain_globals()` in the form `torch.serialization.safe_globals` takes."""
    extras: list = []
    for name, obj in plain_globals().items():
        if name.startswith(("builtins.", "__builtin__.", "_codecs.")):
            continue
        extras.append((obj, name) if _global_name(obj) != name else obj)
    return tuple(extras)

def _refused(label: str, names: Sequence[str]) -> CheckpointError:
    listed = ", ".join(dict.fromkeys(names).keys()) if names else ""
    shown = one_line(listed, 160)
    whole = " (a whole pickled model? load it where it was made and save its state_dict)"
    hint = whole if any(".nn.modules." in n or "models" in n for n in names) else ""
    what = f" ({shown}; never unpickled)" if shown else " (never unpickled)"
    return CheckpointError(
        f"refused: {label} contains Python objects that a weights-only load does not allow"
        f"{what}{hint}"
    )


_BENIGN_TORCH = re.compile(r"^torch\.(?:_utils\._rebuild_\w+|_tensor\._rebuild_\w+|\w*Storage|"
                           r"Size|device|float\w*|int\w*|bfloat16|half|double|long|bool|uint8|"
                           r"nn\.parameter\.Parameter|storage\.\w+|serialization\.\w+)$")


def torch_load(path: Path, kind: str, label: str) -> Any:
    import torch

    names = _file_globals(path, kind)
    blocked = [n for n in names if not allowed_global(n)]
    if blocked:  # refuse before any unpickler sees the file
        raise _refused(label, blocked)
    try:
        allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        extra = allow(list(_extra_safe_globals())) if allow else contextlib.nullcontext()
        with warnings.catch_warnings(), extra:
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if "weights only load failed" not in message.lower():
            raise CheckpointError(
                f"cannot read {label}: corrupt file ({first_sentence(err)})"
            ) from None
        unsafe: list[str] = []
        if kind == "zip":
            try:
                unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # a damaged archive: fall back to our own listing
                unsafe = []
        allowed = {_global_name(g) for g in _extra_safe_globals()}
        unsafe = [
            n for n in (unsafe or names)
            if n not in allowed and not _BENIGN_TORCH.match(n)
            and not (allowed_global(n) and not n.startswith("torch."))
        ]
        if unsafe:
            raise _refused(label, unsafe) from None
        if "Unsupported operand" in message:
            if kind in ("zip", "legacy"):
                raise CheckpointError(
                    f"cannot read {label}: written with a pickle protocol that torch's "
                    "weights-only loader does not support (re-save it with the default protocol)"
                ) from None
            raise CheckpointError(
                f"cannot read {label}: not a torch or safetensors checkpoint (a plain pickle?)"
            ) from None
        raise _refused(label, []) from None
    except Exception as err:  # whatever a damaged file makes the reader raise
        if kind in ("unknown", "pickle"):
            plain = " (a plain pickle?)" if kind == "pickle" else ""
            raise CheckpointError(
                f"cannot read {label}: not a torch or safetensors checkpoint{plain}"
            ) from None
        raise CheckpointError(
            f"cannot read {label}: truncated or corrupt file ({first_sentence(err)})"
        ) from None


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def read_checkpoint(path: Path, label: str) -> tuple[Any, dict | None]:
    """(object as stored, flatcli metadata embedded in the file or None)."""
    kind = sniff(path)
    if kind == "empty":
        raise CheckpointError(f"cannot read {label}: empty file")
    if kind == "safetensors" or path.name.lower().endswith(".safetensors"):
        if kind != "safetensors":
            raise CheckpointError(f"cannot read {label}: truncated or corrupt safetensors file")
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(
                f"cannot read {label}: truncated or corrupt safetensors file "
                f"({first_sentence(err)})"
            ) from None
        return tensors, own_meta_from_header({"__metadata__": metadata})
    obj = torch_load(path, kind, label)
    if isinstance(obj, Mapping) and isinstance(obj.get(FORMAT), Mapping):
        meta = dict(obj[FORMAT])
        if meta.get("format") == FORMAT and isinstance(obj.get("state_dict"), Mapping):
            return obj["state_dict"], meta
    return obj, None

