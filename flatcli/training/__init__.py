"""`flatcli train`: adversarial training with the methods docs/method.md compares.

`registry` (methods by name, torch-free), `methods` (objectives), `config` (resolve_config),
`rundir` (run directory, resume), `distributed` (DDP), `loop` (epochs), `batches` (data on the
device), `step` (one update), `regularizers`, `schedules`. Importing this package imports
nothing heavy; `train` and friends load torch when first used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "TrainEvent": "loop",
    "TrainResult": "loop",
    "TrainingDiverged": "loop",
    "train": "loop",
    "read_run": "rundir",
    "resolve_config": "config",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"flatcli.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flatcli.training' has no attribute {name!r}")
