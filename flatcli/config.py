"""Frozen configurations per command: the paper's defaults live here, once.

`config_hash` covers only the fields that change results (not device, batch size, output format
or directory), so a rerun on another GPU or with another batch size skips finished work.
Fields marked `meta(hash=False)` are excluded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


def _runtime(default):
    """A field that does not change results: kept out of `config_hash`."""
    return field(default=default, metadata={"hash": False})


@dataclass(frozen=True)
class AttackConfig:
    """`flatcli attack`: PAPER.md's evaluation protocol.

    Robust loss from PGD-20 with 10 restarts (step 0.007 at eps 0.0314), robust error from the
    strongest attack (default: that PGD and APGD-CE + APGD-T); the first `n_examples` of `split`.
    `eps=None` / `n_examples=None` mean the dataset's defaults (resolved before hashing).
    """

    dataset: str | None = None  # None: from the checkpoints' metadata
    split: str = "test"
    n_examples: int | None = None
    eps: float | None = None
    norm: str = "linf"
    attacks: tuple[str, ...] = ("pgd20x10", "aa-lite")
    step_size: float | None = None
    seed: int = 0
    arch: str | None = None
    normalize: str | None = None
    data_dir: str | None = _runtime(None)
    device: str = _runtime("auto")
    batch_size: int = _runtime(512)


def hashed_fields(config) -> dict:
    """The fields of a config dataclass that determine its results."""
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.metadata.get("hash", True)
    }


def config_hash(config) -> str:
    """A stable hex digest of the result-affecting fields (and the config's type)."""
    payload = {"type": type(config).__name__, **hashed_fields(config)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
