"""Finding checkpoints: files and directories -> `CheckpointRef(run, epoch, path, digest)`, runs
named after their own directory (made distinct when two share a name). How runs and digests are
chosen: docs/method.md, "Implementation notes"."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flatcli.checkpoints.format import read_sidecar
from flatcli.checkpoints.identity import tensor_digest
from flatcli.checkpoints.names import (
    _EXT_RE,
    checkpoint_stem,
    epoch_from_name,
    natural,
    safe_name,
)
from flatcli.checkpoints.safe_load import sniff
from flatcli.errors import UsageError

CHECKPOINT_PATTERNS = "*.safetensors, *.pt, *.pth, *.pth.tar[.N], *.t7, *.ckpt, *.bin"
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
_SNAPSHOT_DIR_RE = re.compile(r"^(?:epoch|ep|checkpoint|ckpt|snapshot|iter|step)[_\-.]?(\d+)$",
                              re.IGNORECASE)


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint to evaluate: its run, epoch (or None), file and content digest.

    `digest` is filled from the file when not given (`content_digest`); `note` says why the run
    name differs from the directory name (empty when it does not).
    """

    run: str
    epoch: int | None
    path: Path
    digest: str = ""
    note: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.digest:
            object.__setattr__(self, "digest", content_digest(self.path))

    @property
    def name_key(self) -> str:
        """`<run>__e<epoch:04d>`, or `<run>__<stem>` without epoch: the name, not the content."""
        tail = f"e{self.epoch:04d}" if self.epoch is not None else checkpoint_stem(self.path.name)
        return safe_name(f"{self.run}__{tail}")

    @property
    def key(self) -> str:
        """File-name-safe unique key of this content under this name: `<name_key>__<digest8>`."""
        return f"{self.name_key}__{self.digest[:DIGEST_CHARS] or 'nodigest'}"


DIGEST_CHARS = 8  # of the digest in keys and part names; the full digest is in every row


def ref_of(unit) -> CheckpointRef:
    """The checkpoint ref behind a work unit (a landscape's (checkpoint, direction) units wrap
    one as `.ref`)."""
    return getattr(unit, "ref", unit)


def content_digest(path: str | os.PathLike) -> str:
    """The checkpoint's identity: sha256 of its tensors (`identity.tensor_digest`), "" when the
    file cannot be read (loading then says why). Metadata, format, path and name do not enter it.
    """
    return tensor_digest(path)


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
        kind = sniff(path)
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
    note: str = ""


def _ref_epoch_and_run(path: Path) -> tuple[int | None, Path]:
    """(epoch, run directory): flatcli's metadata, else the file name, else a snapshot folder
    (`epoch_7/`, whose parent is then the run)."""
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


def _files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The checkpoint files among `paths` (directories searched recursively); `UsageError` for
    a missing path, an empty directory, or none found."""
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
    return files


def discover(paths: Sequence[str | os.PathLike]) -> list[CheckpointRef]:
    """Checkpoints in files and directories (recursively), naturally sorted by (run, epoch, path).

    Raises `UsageError` (one line) for a missing path, an empty directory, or a directory without
    checkpoint files. A run is named after its own directory, however the paths were given; runs
    of different directories with the same name get as many parent names as needed (`a-run1`,
    `b-run1`) and a `note` saying so; two files of one directory with the same epoch name every
    run of that directory after its file pattern (`run1-model.pt`). The same file reached twice
    is kept once.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    seen: set[Path] = set()
    items: list[_Found] = []
    for path in _files(paths):
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        epoch, run_dir = _ref_epoch_and_run(path)
        items.append(_Found(path, run_dir, run_dir.name or "root", epoch))
    _make_keys_unique(items)
    items.sort(key=lambda f: (natural(f.run), f.epoch is None, f.epoch or 0, natural(str(f.path))))
    return [CheckpointRef(f.run, f.epoch, f.path, note=f.note) for f in items]


def _name_key(item: _Found) -> str:
    return CheckpointRef(item.run, item.epoch, item.path, digest="-").name_key


def _collisions(items: list[_Found]) -> list[list[_Found]]:
    groups: dict[str, list[_Found]] = {}
    for item in items:
        groups.setdefault(_name_key(item), []).append(item)
    return [g for g in groups.values() if len(g) > 1]


def _prefix_parents(items: list[_Found], by_dir: dict[Path, list[_Found]]) -> None:
    """Runs of different directories with one name: prefix parent directory names, as few as
    make them distinct (`a-run1`, `b-run1`)."""
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
            return


def _make_keys_unique(items: list[_Found]) -> None:
    """Rename runs until no two items share a key; `UsageError` when renaming cannot help."""
    by_dir: dict[Path, list[_Found]] = {}
    for item in items:
        by_dir.setdefault(item.run_dir, []).append(item)
    _prefix_parents(items, by_dir)
    # Files of one directory that share a key (`model_4.pt` and `model_4.pth`): every run of
    # that directory is named after its file-name pattern (`run3-model.pt`, `run3-model.pth`).
    same_dir = {g[0].run_dir for g in _collisions(items) if len({i.run_dir for i in g}) == 1}
    for run_dir in same_dir:
        for item in by_dir[run_dir]:
            family = re.sub(r"[_\-.]*\d+", "", item.path.name).strip("_-.") or "model"
            item.run = f"{item.run}-{family}"
    remaining = _collisions(items)
    if remaining:
        names = ", ".join(str(i.path) for i in remaining[0][:3])
        raise UsageError(f"two checkpoints of the same run and epoch: {names}; pass one of them")
    for item in items:
        if item.run != (item.run_dir.name or "root"):
            item.note = (
                f"run named {item.run!r}: other checkpoints given here are also in a run called "
                f"{item.run_dir.name or 'root'!r}"
            )
