"""`flatcli train`: adversarial training with the methods docs/method.md compares.

- `registry.py`: the methods by name, their options and help (torch-free)
- `methods.py`: their objectives (clean, AT, TRADES, MART, AT-AWP) on the one PGD
- `config.py`: `resolve_config`, every default filled in and validated
- `rundir.py`: run.json, the resume state, resuming and extending a run
- `distributed.py`: DDP set-up; `loop.py`: the epochs
- `regularizers.py`: augmentation, label noise, weight clipping, Entropy-SGD, extra data
- `schedules.py`: learning rates as pure functions of the step

Importing this package imports nothing heavy; `train` and friends load torch when first used.
Digits defaults (`flatcli.config.TRAIN_DEFAULTS["digits"]`) and their measured robust
overfitting: see the README's training section.
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
