"""Checkpoint file names: epochs stated in names, flatcli's own names, natural sort, safe keys."""

from __future__ import annotations

import re
from pathlib import Path

# A checkpoint extension, optionally followed by a number (`classifier.pth.tar.10`).
# MadryLab `robustness` adds `.best` / `.latest` (`checkpoint.pt.best`).
_EXT_RE = re.compile(
    r"\.(?:safetensors|pth\.tar|pth|pt|t7|ckpt|bin)(?:\.(\d+)|\.(best|latest))?$", re.IGNORECASE
)
_EPOCH_WORD_RE = re.compile(r"epoch[_\-.=]?(\d+)")
_EPOCH_SHORT_RE = re.compile(r"(?:^|[_\-.])(?:ep|e)[_\-]?(\d+)(?=$|[_\-.])")
_TRAILING_RE = re.compile(r"[_\-.](\d+)$")
_LEADING_RE = re.compile(r"^(\d+)[_\-.]")
_ARCH_TAIL_RE = re.compile(
    r"(?:wrn|wide[_\-]?resnet|resnet|preact[_\-]?resnet|vgg|densenet|lenet|mobilenet)"
    r"[_\-]?\d+(?:[_\-]\d+)?$"
)


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
        tag = f"_{match.group(2)}" if match.group(2) else ""
        return name[: match.start()] + tag
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


def natural(text: str) -> list:
    """Sort key: digit runs compare as numbers (`run2` before `run10`)."""
    parts = re.split(r"(\d+)", text.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]
