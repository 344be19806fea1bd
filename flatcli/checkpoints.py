"""Checkpoints: discovery, safe loading of common formats, and flatcli's self-describing format.

Discovery (`discover`) turns files and directories into `CheckpointRef(run, epoch, path)`:
- A run is the directory holding the checkpoint; when that directory is itself named like a
  snapshot (`checkpoint-500/`, `epoch_7/`) its number is the epoch and its parent is the run.
- The epoch comes from flatcli's own metadata (JSON sidecar, else the safetensors header), else
  from the file name (`epoch_from_name`), else the parent directory name; `None` if unknown.
- Optimizer/scheduler states saved next to the weights (`opt_5.pth`, `ours-opt-epoch5.pt`),
  JSON sidecars, `run.json`, tables and hidden files/directories are not checkpoints.

Loading (`load_model`) never runs code from a file: safetensors, or `torch.load(weights_only=True)`
(with numpy scalars/arrays and `argparse.Namespace` additionally allowed, which old training
scripts store next to the weights). Before `torch.load`, the pickle's imports are listed without
unpickling it and anything outside torch and those few types is refused outright.

Foreign checkpoints (anything without flatcli's metadata) have no self-description, so:
- dataset: `dataset`, else `DEFAULT_FOREIGN_DATASET` ('cifar10', the paper's setting); it fixes
  num_classes and in_channels;
- arch: `arch`, else the dataset's `default_arch`;
- normalization: `normalize`, else `mu`/`sigma` (or `mean`/`std`, `normalize.mean`/`.std`) tensors
  found in the state dict, else the identity (inputs in [0, 1] go to the network unchanged);
- the state dict is unwrapped from `state_dict`/`model_state_dict`/`model`/`net`, and the prefixes
  `module.model.`, `module.`, `_orig_mod.`, `model.` are stripped while every key carries one;
  it is then loaded strictly into `model.net` (or into the whole `Classifier` when its keys are
  `net.*`/`normalize.*`). Only `num_batches_tracked` may be missing (files from torch < 0.4.1).

For flatcli's own format the metadata decides; an explicit `arch`, `arch_kwargs` or `normalize`
must agree with it, an explicit `dataset` must have the same number of classes and channels
(`CheckpointInfo.dataset` stays the dataset the checkpoint was trained on).

This module imports torch only inside the functions that need it: `discover`, `read_sidecar`,
`epoch_from_name` and `checkpoint_name` work without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatcli import __version__
from flatcli.errors import CheckpointError, UsageError
from flatcli.files import atomic_write

if TYPE_CHECKING:
    from flatcli.models import Classifier

FORMAT = "flatcli"
FORMAT_VERSION = 1
DEFAULT_FOREIGN_DATASET = "cifar10"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
PREFIXES = ("module.model.", "module.", "_orig_mod.", "model.")
NORMALIZATION_KEYS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"))
CHECKPOINT_PATTERNS = "*.safetensors, *.pt, *.pth, *.pth.tar[.N], *.t7, *.ckpt, *.bin"

# A checkpoint extension, optionally followed by a number (`classifier.pth.tar.10`).
_EXT_RE = re.compile(r"\.(?:safetensors|pth\.tar|pth|pt|t7|ckpt|bin)(?:\.(\d+))?$", re.IGNORECASE)
_IGNORED_SUFFIXES = {
    ".json", ".parquet", ".csv", ".txt", ".log", ".md", ".html", ".png", ".pdf", ".svg",
    ".yaml", ".yml", ".toml", ".npz", ".npy", ".py", ".tmp", ".lock", ".out", ".err",
}
# Optimizer / scheduler / RNG states saved beside the weights by common training scripts.
_AUX_STATE_RE = re.compile(
    r"(?:^|[_\-.])(?:opt|optim|optimizer|sched|scheduler|rng_state|training_args|trainer_state)"
    r"(?=$|[_\-.]|\d)",
    re.IGNORECASE,
)
_EPOCH_WORD_RE = re.compile(r"epoch[_\-.=]?(\d+)")
_EPOCH_SHORT_RE = re.compile(r"(?:^|[_\-.])(?:ep|e)[_\-]?(\d+)(?=$|[_\-.])")
_TRAILING_RE = re.compile(r"[_\-.](\d+)$")
_LEADING_RE = re.compile(r"^(\d+)[_\-.]")
_ARCH_TAIL_RE = re.compile(
    r"(?:wrn|wide[_\-]?resnet|resnet|preact[_\-]?resnet|vgg|densenet|lenet|mobilenet)"
    r"[_\-]?\d+(?:[_\-]\d+)?$"
)
_SNAPSHOT_DIR_RE = re.compile(r"^(?:epoch|ep|checkpoint|ckpt|snapshot|iter|step)[_\-.]?(\d+)$",
                              re.IGNORECASE)
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickle of torch's magic number
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# ---------------------------------------------------------------------------------------------
# References and discovery


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint to evaluate: its run (directory name), epoch (or None) and file."""

    run: str
    epoch: int | None
    path: Path

    @property
    def key(self) -> str:
        """File-name-safe unique key: `<run>__e<epoch:04d>`, or `<run>__<stem>` without epoch."""
        tail = f"e{self.epoch:04d}" if self.epoch is not None else checkpoint_stem(self.path.name)
        return safe_name(f"{self.run}__{tail}")


def safe_name(text: str) -> str:
    """`text` reduced to [A-Za-z0-9._-] (other runs of characters become '_'), never hidden."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    return "_" + name[1:] if name.startswith(".") else name or "_"


def checkpoint_name(epoch: int | None) -> str:
    """flatcli's file name for the snapshot of `epoch` (`model.safetensors` when None)."""
    return "model.safetensors" if epoch is None else f"epoch_{int(epoch):04d}.safetensors"


def checkpoint_stem(name: str) -> str:
    """The file name without its checkpoint extension (`classifier.pth.tar` -> `classifier`)."""
    match = _EXT_RE.search(name)
    if match and match.start() > 0:
        return name[: match.start()]
    return Path(name).stem or name


def epoch_from_name(name: str) -> int | None:
    """The epoch a checkpoint file name states, or None (`model_best.pth`, `final.pt`).

    Recognized: `epoch_0007.safetensors`, `model-wideres-epoch76.pt`, `ckpt_epoch5.pt`,
    `model_e10.pt`, `classifier.pth.tar.30`, `12_checkpoint.pt`, `model_5.pth`, `model_7.t7`,
    `checkpoint-12.pt`, `10.pt`, extension-less `epoch10`. A trailing architecture name such as
    `wrn-28-10` or `resnet-18` is not an epoch.
    """
    base = Path(name).name
    match = _EXT_RE.search(base)
    if match:
        if match.group(1) is not None:
            return int(match.group(1))
        base = base[: match.start()]
    else:
        base = re.sub(r"\.[A-Za-z][A-Za-z0-9]*$", "", base)
    base = base.lower()
    for regex in (_EPOCH_WORD_RE, _EPOCH_SHORT_RE):
        found = regex.search(base)
        if found:
            return int(found.group(1))
    if base.isdigit():
        return int(base)
    found = _TRAILING_RE.search(base)
    if found and not _ARCH_TAIL_RE.search(base):
        return int(found.group(1))
    found = _LEADING_RE.match(base)
    if found:
        return int(found.group(1))
    return None


def _ignored(name: str) -> bool:
    if name.startswith("."):
        return True
    lower = name.lower()
    if any(lower.endswith(s) for s in _IGNORED_SUFFIXES):
        return True
    return bool(_AUX_STATE_RE.search(checkpoint_stem(name)))


def _is_checkpoint_file(path: Path) -> bool:
    """By name; extension-less files (`epoch10`) only if named like a snapshot and their first
    bytes are those of a torch or safetensors file (reading a few bytes runs nothing)."""
    name = path.name
    if _ignored(name):
        return False
    if _EXT_RE.search(name):
        return True
    suffix = Path(name).suffix
    if (suffix == "" or suffix[1:].isdigit()) and epoch_from_name(name) is not None:
        kind = _sniff(path)
        if kind == "zip":
            return _torch_zip(path)
        return kind in ("legacy", "safetensors")
    return False


def _torch_zip(path: Path) -> bool:
    """Whether a zip file is a torch checkpoint (has a `data.pkl`), from its directory only."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _walk(root: Path) -> tuple[list[Path], bool]:
    """Checkpoint files under `root` (recursively) and whether `root` holds any file at all."""
    found: list[Path] = []
    any_file = False

    def fail(err: OSError) -> None:
        raise UsageError(f"cannot read directory {err.filename}: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        any_file = any_file or bool(filenames)
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if _is_checkpoint_file(path):
                found.append(path)
    return found, any_file


@dataclass
class _Found:
    path: Path
    run_dir: Path  # absolute, symlinks not resolved
    run: str
    epoch: int | None


def _natural(text: str) -> list:
    parts = re.split(r"(\d+)", text.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _ref_epoch_and_run(path: Path) -> tuple[int | None, Path]:
    parent = path.absolute().parent
    meta = read_sidecar(path)
    if meta is not None and isinstance(meta.get("epoch"), int):
        return meta["epoch"], parent
    epoch = epoch_from_name(path.name)
    if epoch is not None:
        return epoch, parent
    snapshot = _SNAPSHOT_DIR_RE.match(parent.name)
    if snapshot and parent.parent != parent:
        return int(snapshot.group(1)), parent.parent
    return None, parent


def discover(paths: Sequence[str | os.PathLike]) -> list[CheckpointRef]:
    """Checkpoints in files and directories (recursively), naturally sorted by (run, epoch, path).

    Raises `UsageError` (one line) for a missing path, an empty directory, or a directory without
    checkpoint files. Keys are unique: runs with the same directory name get as many parent
    directory names as needed (`a-run1`, `b-run1`); when two files of one directory share an
    epoch, every run of that directory gets its file-name pattern (`run1-model.pt`,
    `run1-model.pth`). Duplicates (the same file reached twice) are dropped.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UsageError("no checkpoint paths given")
    files: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise UsageError(f"no such file or directory: {given}")
        if path.is_dir():
            found, any_file = _walk(path)
            if not found:
                if not any_file:
                    raise UsageError(f"{given}: empty directory, no checkpoints in it")
                raise UsageError(
                    f"{given}: no checkpoint files in this directory "
                    f"(looked for {CHECKPOINT_PATTERNS}, recursively)"
                )
            files.extend(found)
        elif not _ignored(path.name):
            files.append(path)
    if not files:
        raise UsageError(f"no checkpoint files among the given paths ({CHECKPOINT_PATTERNS})")

    seen: set[Path] = set()
    items: list[_Found] = []
    for path in files:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        epoch, run_dir = _ref_epoch_and_run(path)
        items.append(_Found(path, run_dir, run_dir.name or "root", epoch))
    _make_keys_unique(items)
    items.sort(
        key=lambda f: (_natural(f.run), f.epoch is None, f.epoch or 0, _natural(str(f.path)))
    )
    return [CheckpointRef(f.run, f.epoch, f.path) for f in items]


def _key(item: _Found) -> str:
    return CheckpointRef(item.run, item.epoch, item.path).key


def _collisions(items: list[_Found]) -> list[list[_Found]]:
    groups: dict[str, list[_Found]] = {}
    for item in items:
        groups.setdefault(_key(item), []).append(item)
    return [g for g in groups.values() if len(g) > 1]


def _make_keys_unique(items: list[_Found]) -> None:
    by_dir: dict[Path, list[_Found]] = {}
    for item in items:
        by_dir.setdefault(item.run_dir, []).append(item)
    # 1. Different directories with the same name: prefix parent directory names, as few as needed.
    depth: dict[Path, int] = {}
    for _ in range(256):
        clashing = {
            item.run_dir for group in _collisions(items) if len({i.run_dir for i in group}) > 1
            for item in group
        }
        grown = False
        for run_dir in clashing:
            parts = [p for p in run_dir.parts if p not in (run_dir.anchor, "")] or ["root"]
            d = min(depth.get(run_dir, 1) + 1, len(parts))
            grown = grown or d != depth.get(run_dir, 1)
            depth[run_dir] = d
            for item in by_dir[run_dir]:
                item.run = "-".join(parts[-d:])
        if not grown:
            break
    # 2. Files of one directory that share a key (`model_4.pt` and `model_4.pth`): name every run
    #    of that directory after its file-name pattern (`run3-model.pt`, `run3-model.pth`).
    same_dir = {g[0].run_dir for g in _collisions(items) if len({i.run_dir for i in g}) == 1}
    for run_dir in same_dir:
        for item in by_dir[run_dir]:
            family = re.sub(r"[_\-.]*\d+", "", item.path.name).strip("_-.") or "model"
            item.run = f"{item.run}-{family}"
    remaining = _collisions(items)
    if remaining:
        names = ", ".join(str(i.path) for i in remaining[0][:3])
        raise UsageError(f"two checkpoints of the same run and epoch: {names}; pass one of them")


# ---------------------------------------------------------------------------------------------
# flatcli's own format


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
        return _own_meta_from_header(_safetensors_header(path))
    return None


def _safetensors_header(path: Path) -> dict | None:
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


def _own_meta_from_header(header: dict | None) -> dict | None:
    if not header:
        return None
    metadata = header.get("__metadata__") or {}
    try:
        meta = json.loads(metadata[FORMAT]) if FORMAT in metadata else None
    except (TypeError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _jsonable(value: Any) -> Any:
    """Plain JSON values (non-finite floats -> None, tuples -> lists, unknown -> str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(v) for v in value), key=str)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
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
    num_classes = None
    try:
        from flatcli.data import get_spec

        num_classes = get_spec(dataset).num_classes
    except UsageError:
        pass
    meta = _jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "arch_kwargs": dict(arch_kwargs or {}),
            "dataset": dataset,
            "num_classes": num_classes,
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
        from safetensors.torch import save_file

        header = {"format": "pt", FORMAT: json.dumps(meta)}
        atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=header))
    else:
        atomic_write(path, lambda tmp: torch.save({FORMAT: meta, "state_dict": state}, tmp))
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


# ---------------------------------------------------------------------------------------------
# Normalization


def parse_normalize(value: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`--normalize`: None (not given), 'none' (identity), a dataset name, 'MEAN,STD' or
    'm1,m2,m3,s1,s2,s3' (also 'm1,m2,m3;s1,s2,s3') -> (mean, std). Bad input: `UsageError`."""
    if value is None:
        return None
    text = str(value).strip()
    lower = text.lower()
    if lower in ("none", "identity"):
        return (0.0,), (1.0,)
    from flatcli.data import DATASETS, get_spec

    if lower in DATASETS:
        spec = get_spec(lower)
        return tuple(float(v) for v in spec.mean), tuple(float(v) for v in spec.std)
    hint = (f"--normalize must be none, a dataset ({', '.join(DATASETS)}), MEAN,STD or "
            f"m1,m2,m3,s1,s2,s3; got {text!r}")
    try:
        if ";" in text:
            left, right = text.split(";", 1)
            mean = [float(v) for v in left.split(",")]
            std = [float(v) for v in right.split(",")]
        else:
            numbers = [float(v) for v in text.split(",")]
            if len(numbers) % 2:
                raise ValueError
            mean, std = numbers[: len(numbers) // 2], numbers[len(numbers) // 2 :]
    except ValueError:
        raise UsageError(hint) from None
    if not mean or len(mean) != len(std) or not all(map(math.isfinite, mean + std)):
        raise UsageError(hint)
    if any(s <= 0 for s in std):
        raise UsageError(f"--normalize: every std must be positive, got {text!r}")
    return tuple(mean), tuple(std)


def _channels(values: Sequence[float], in_channels: int, what: str, label: str) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) == 1 and in_channels > 1:
        values = values * in_channels
    if len(values) != in_channels:
        raise CheckpointError(
            f"{label}: normalization {what} has {len(values)} values, the model "
            f"{in_channels} input channel(s)"
        )
    return values


# ---------------------------------------------------------------------------------------------
# Reading files safely


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(_ANSI_RE.sub("", str(text)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(err: BaseException) -> str:
    lines = [ln.strip() for ln in _ANSI_RE.sub("", str(err)).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return _one_line(text.split(". ")[0], 160)


def _sniff(path: Path) -> str:
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
    if _safetensors_header(path) is not None:  # before the pickle test: its size may start 0x80
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


# Besides torch's own weights-only allowlist: plain data that old training scripts pickle.
_NUMPY_NAMES = {"scalar", "_reconstruct", "dtype", "ndarray"}
_PLAIN_GLOBALS = {"collections.OrderedDict", "argparse.Namespace", "_codecs.encode"} | {
    f"{module}.{name}" for module in ("builtins", "__builtin__")
    for name in ("set", "frozenset", "bytearray", "slice", "complex", "range")
}


def _pre_allowed(name: str) -> bool:
    """Imports that may go on to torch's weights-only unpickler (which decides about torch.*)."""
    module, _, attr = name.rpartition(".")
    if name.startswith("torch."):
        return True
    if name in _PLAIN_GLOBALS or module == "numpy.dtypes":
        return True
    numpy_modules = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
    return module in numpy_modules and attr in _NUMPY_NAMES


@functools.lru_cache(maxsize=1)
def _extra_safe_globals() -> tuple:
    import argparse

    extras: list = [argparse.Namespace]
    try:
        import numpy as np

        multiarray = getattr(np, "_core", None) or np.core
        multiarray = multiarray.multiarray
        for name in ("scalar", "_reconstruct"):
            obj = getattr(multiarray, name)
            extras += [obj, (obj, f"numpy.core.multiarray.{name}"),
                       (obj, f"numpy._core.multiarray.{name}")]
        extras += [np.dtype, np.ndarray]
        extras += [t for t in vars(np.dtypes).values() if isinstance(t, type)]
    except (ImportError, AttributeError):
        pass
    return tuple(extras)


def _refused(label: str, names: Sequence[str]) -> CheckpointError:
    listed = ", ".join(dict.fromkeys(names).keys()) if names else ""
    shown = _one_line(listed, 160)
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


def _torch_load(path: Path, kind: str, label: str) -> Any:
    import torch

    names = _file_globals(path, kind)
    blocked = [n for n in names if not _pre_allowed(n)]
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
            raise CheckpointError(f"cannot read {label}: corrupt file ({_short(err)})") from None
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
            and not (_pre_allowed(n) and not n.startswith("torch."))
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
            f"cannot read {label}: truncated or corrupt file ({_short(err)})"
        ) from None


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def _read(path: Path, label: str) -> tuple[Any, dict | None]:
    """(object as stored, flatcli metadata embedded in the file or None)."""
    kind = _sniff(path)
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
                f"cannot read {label}: truncated or corrupt safetensors file ({_short(err)})"
            ) from None
        return tensors, _own_meta_from_header({"__metadata__": metadata})
    obj = _torch_load(path, kind, label)
    if isinstance(obj, Mapping) and isinstance(obj.get(FORMAT), Mapping):
        meta = dict(obj[FORMAT])
        if meta.get("format") == FORMAT and isinstance(obj.get("state_dict"), Mapping):
            return obj["state_dict"], meta
    return obj, None


# ---------------------------------------------------------------------------------------------
# Fitting a state dict to a model


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _unwrap(obj: Any, label: str) -> tuple[dict, str | None, dict]:
    """(tensors, wrapper key path or None, JSON-able scalars found beside them)."""
    wrapper: list[str] = []
    extras: dict = {}
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = None
        for key in WRAPPER_KEYS:
            value = obj.get(key)
            if isinstance(value, Mapping) and _holds_tensors(value):
                inner = key
                break
        if inner is None:
            break
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, (int, float, str, bool)) and k not in extras:
                extras[k] = _jsonable(v)
            elif isinstance(k, str) and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
                extras.setdefault(k, _jsonable(v))
        wrapper.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label}: not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
    if not tensors:
        keys = ", ".join(str(k) for k in list(obj)[:5])
        raise CheckpointError(f"{label}: no weights found (top-level keys: {keys or 'none'})")
    return tensors, "/".join(wrapper) or None, extras


def _holds_tensors(mapping: Mapping, depth: int = 0) -> bool:
    for value in mapping.values():
        if _is_tensor(value):
            return True
        if depth < 2 and isinstance(value, Mapping) and _holds_tensors(value, depth + 1):
            return True
    return False


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
                break
    return key


def _pop_normalization(state: dict) -> tuple[tuple, tuple, str] | None:
    """Remove and return stored normalization tensors (`mu`/`sigma`, `mean`/`std`, ...)."""
    by_base = {_strip_prefix(k): k for k in state}
    for mean_key, std_key in NORMALIZATION_KEYS:
        if mean_key in by_base and std_key in by_base:
            mean_t, std_t = state[by_base[mean_key]], state[by_base[std_key]]
            if mean_t.numel() > 64 or std_t.numel() > 64:
                continue
            del state[by_base[mean_key]], state[by_base[std_key]]
            mean = tuple(float(v) for v in mean_t.detach().float().flatten().tolist())
            std = tuple(float(v) for v in std_t.detach().float().flatten().tolist())
            return mean, std, f"{by_base[mean_key]}/{by_base[std_key]}"
    return None


def _prefix_candidates(state: dict) -> list[tuple[str, dict[str, str]]]:
    """(prefix stripped, {stripped key: key in the file}) for every all-keys prefix level."""
    current = {k: k for k in state}
    out = [("", current)]
    stripped = ""
    while True:
        for prefix in PREFIXES:
            if current and all(k.startswith(prefix) for k in current):
                current = {k[len(prefix) :]: orig for k, orig in current.items()}
                stripped += prefix
                out.append((stripped, current))
                break
        else:
            return out


def _names(keys: set[str] | list[str], limit: int = 5) -> str:
    ordered = sorted(keys, key=_natural)
    shown = ", ".join(ordered[:limit])
    return shown + (", ..." if len(ordered) > limit else "")


def _fit_state(model: Classifier, state: dict, label: str, arch: str, hint: str) -> dict:
    """Load `state` strictly into `model.net` or into the whole model; returns how it matched."""
    net_state = model.net.state_dict()
    full_state = model.state_dict()

    def optional(key: str) -> bool:
        return key.endswith("num_batches_tracked") or key.startswith("normalize.")

    best = None
    for prefix, mapping in _prefix_candidates(state):
        keys = set(mapping)
        targets = [("net", net_state)]
        if any(k.startswith(("net.", "normalize.")) for k in keys):
            targets.insert(0, ("model", full_state))
        for target, expected in targets:
            skip = optional if target == "model" else lambda k: k.endswith("num_batches_tracked")
            missing = {k for k in set(expected) - keys if not skip(k)}
            unexpected = keys - set(expected)
            score = len(missing) + len(unexpected)
            if best is None or score < best[0]:
                best = (score, prefix, mapping, target, expected, missing, unexpected)
            if score == 0:
                break
        if best[0] == 0:
            break
    score, prefix, mapping, target, expected, missing, unexpected = best
    if score:
        shown_prefix = "" if target == "model" else "net."
        missing_names = {shown_prefix + k for k in missing}
        unexpected_names = {mapping[k] for k in unexpected}
        for limit in (5, 3, 2, 1):  # as many names as fit one readable line
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} ({_names(missing_names, limit)})")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} ({_names(unexpected_names, limit)})")
            text = f"{label}: does not match arch '{arch}': {', '.join(parts)}"
            if len(text) - len(label) <= 280:
                break
        raise CheckpointError(_one_line(text, 400))
    bad_shapes = [
        f"{mapping[k]} {list(state[mapping[k]].shape)} vs {list(expected[k].shape)}"
        for k in sorted(mapping, key=_natural)
        if tuple(state[mapping[k]].shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        more = ", ..." if len(bad_shapes) > 3 else ""
        raise CheckpointError(_one_line(
            f"{label}: does not match arch '{arch}': {len(bad_shapes)} shape(s) differ, file vs "
            f"model ({', '.join(bad_shapes[:3])}{more}){hint}", 400))
    loaded = {k: state[orig] for k, orig in mapping.items()}
    for key, value in expected.items():  # optional entries the file does not carry
        loaded.setdefault(key, value)
    module = model if target == "model" else model.net
    try:
        module.load_state_dict(loaded, strict=True)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{label}: does not load into arch '{arch}' ({_short(err)})"
        ) from None
    return {"prefix": prefix or None, "target": target}


# ---------------------------------------------------------------------------------------------
# Loading


def _build(arch: str, num_classes: int, in_channels: int, mean, std, kwargs: dict, label: str,
           own: bool) -> Classifier:
    from flatcli import models

    try:
        return models.build(arch, num_classes, in_channels, mean, std, **kwargs)
    except UsageError as err:
        if own:
            raise CheckpointError(f"{label}: {err}") from None
        raise
    except TypeError as err:
        raise CheckpointError(
            f"{label}: cannot build arch '{arch}' with {kwargs} ({_short(err)})"
        ) from None


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    normalize: str | tuple | None = None,
    dataset: str | None = None,
    arch_kwargs: dict | None = None,
    device: Any = "cpu",
) -> tuple[Classifier, CheckpointInfo]:
    """A model from a checkpoint: eval mode, on `device`, float32; and what was learned about it.

    `normalize` is a `--normalize` string (or an already parsed (mean, std) pair). See the module
    docstring for the rules for flatcli's own format and for foreign checkpoints. Every problem
    with the file raises `CheckpointError` with one line; unknown names given explicitly
    (`arch`, `dataset`, `normalize`) raise `UsageError`.
    """
    import torch

    path = Path(path)
    label = str(path)
    explicit_norm = parse_normalize(normalize) if isinstance(normalize, str) or normalize is None \
        else (tuple(normalize[0]), tuple(normalize[1]))
    if not path.is_file():
        raise CheckpointError(f"cannot read {label}: no such file")
    obj, embedded = _read(path, label)
    meta = embedded or read_sidecar(path)
    if meta is not None:
        model, info = _load_own(path, label, obj, meta, arch, explicit_norm, dataset, arch_kwargs)
    else:
        model, info = _load_foreign(path, label, obj, arch, explicit_norm, dataset, arch_kwargs)
    model = model.to(device=device, dtype=torch.float32).eval()
    return model, info


def _load_own(path, label, obj, meta, arch, explicit_norm, dataset, arch_kwargs):
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{label}: written by a newer flatcli (format_version {version})")
    stored_arch = meta.get("arch")
    if not isinstance(stored_arch, str):
        raise CheckpointError(f"{label}: flatcli metadata without an arch")
    if arch is not None and arch != stored_arch:
        raise CheckpointError(f"{label}: saved as arch '{stored_arch}', not '{arch}' (drop --arch)")
    kwargs = dict(meta.get("arch_kwargs") or {})
    for key, value in (arch_kwargs or {}).items():
        if kwargs.get(key) != value:
            raise CheckpointError(
                f"{label}: saved with {key}={kwargs.get(key)!r}, not {value!r} (drop the option)"
            )
    stored_dataset = meta.get("dataset")
    num_classes, in_channels = meta.get("num_classes"), meta.get("in_channels")
    if num_classes is None or in_channels is None:
        from flatcli.data import get_spec

        try:
            spec = get_spec(stored_dataset)
        except (UsageError, AttributeError, TypeError):
            raise CheckpointError(
                f"{label}: metadata lacks num_classes and its dataset {stored_dataset!r} is unknown"
            ) from None
        num_classes = spec.num_classes if num_classes is None else num_classes
        in_channels = spec.in_channels if in_channels is None else in_channels
    if dataset is not None and dataset != stored_dataset:
        from flatcli.data import get_spec

        spec = get_spec(dataset)
        if (spec.num_classes, spec.in_channels) != (num_classes, in_channels):
            raise CheckpointError(
                f"{label}: trained on {stored_dataset!r} ({num_classes} classes, {in_channels} "
                f"channel(s)); {dataset!r} has {spec.num_classes} and {spec.in_channels}"
            )
    state, _, _ = _unwrap(obj, label)
    if meta.get("mean") is not None and meta.get("std") is not None:
        mean, std = meta["mean"], meta["std"]
    elif "normalize.mean" in state and "normalize.std" in state:
        mean = state["normalize.mean"].flatten().tolist()
        std = state["normalize.std"].flatten().tolist()
    else:
        mean, std = [0.0], [1.0]
    mean = _channels(mean, in_channels, "mean", label)
    std = _channels(std, in_channels, "std", label)
    if explicit_norm is not None:
        want = (_channels(explicit_norm[0], in_channels, "mean", label),
                _channels(explicit_norm[1], in_channels, "std", label))
        if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                   for a, b in zip(want[0] + want[1], mean + std, strict=True)):
            raise CheckpointError(
                f"{label}: saved with its own normalization mean={list(mean)} std={list(std)}; "
                "--normalize disagrees (drop it)"
            )
    model = _build(stored_arch, num_classes, in_channels, mean, std, kwargs, label, own=True)
    _fit_state(model, state, label, stored_arch, "")
    epoch = meta.get("epoch")
    if not isinstance(epoch, int):
        epoch = epoch_from_name(path.name)
    info = CheckpointInfo(stored_arch, kwargs, stored_dataset or dataset, mean, std, epoch,
                          FORMAT, dict(meta))
    return model, info


def _load_foreign(path, label, obj, arch, explicit_norm, dataset, arch_kwargs):
    from flatcli.data import get_spec

    state, wrapper, extras = _unwrap(obj, label)
    defaulted = dataset is None
    dataset = dataset or DEFAULT_FOREIGN_DATASET
    spec = get_spec(dataset)
    arch = arch or spec.default_arch
    kwargs = dict(arch_kwargs or {})
    found = _pop_normalization(state)
    if explicit_norm is not None:
        mean, std, source = explicit_norm[0], explicit_norm[1], "--normalize"
    elif found is not None:
        mean, std, source = found[0], found[1], f"file ({found[2]})"
    else:
        mean, std, source = (0.0,), (1.0,), "identity (default)"
    mean = _channels(mean, spec.in_channels, "mean", label)
    std = _channels(std, spec.in_channels, "std", label)
    if any(s <= 0 or not math.isfinite(s) for s in std):
        raise CheckpointError(f"{label}: normalization std must be positive, got {list(std)}")
    model = _build(arch, spec.num_classes, spec.in_channels, mean, std, kwargs, label, own=False)
    hint = (f" (num_classes {spec.num_classes} and {spec.in_channels} channel(s) of default "
            f"dataset '{dataset}'; pass --dataset)") if defaulted else ""
    fit = _fit_state(model, state, label, arch, hint)
    epoch = epoch_from_name(path.name)
    stored_epoch = extras.get("epoch")
    if epoch is None and isinstance(stored_epoch, int) and not isinstance(stored_epoch, bool):
        epoch = stored_epoch
    meta = {"wrapper": wrapper, **fit, "normalization": source, "extras": extras}
    return model, CheckpointInfo(arch, kwargs, dataset, mean, std, epoch, "foreign", meta)
