"""How big each run's model is, for the report's table: its width (run.json, else the
checkpoint's metadata) and its parameter count (read from a checkpoint's safetensors header,
without torch: trainable tensors only, BN statistics and input normalization left out)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from flatcli.checkpoints.format import read_sidecar, safetensors_header

_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked")
_NORMALIZATION = ("normalize.mean", "normalize.std")


def parameter_count(path: str | Path) -> int | None:
    """Parameters of the model in a `.safetensors` checkpoint; None for other files."""
    header = safetensors_header(Path(path))
    if not header:
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        if name.endswith(_NOT_PARAMETERS) or name.endswith(_NORMALIZATION):
            continue
        total += math.prod(entry.get("shape") or [])
    return total or None


def _width(config: dict, checkpoint) -> int | None:
    width = config.get("width")
    if width is None and isinstance(checkpoint, str):
        meta = read_sidecar(checkpoint) or {}
        width = (meta.get("arch_kwargs") or {}).get("width")
    return int(width) if isinstance(width, (int, float)) else None


def capacity(df: pd.DataFrame, configs: dict[str, dict]) -> pd.DataFrame:
    """run -> width, n_params, from each run's config and its last checkpoint on disk."""
    rows = []
    for run, group in df.groupby("run", sort=False):
        paths = [p for p in group.sort_values("epoch").checkpoint.dropna() if Path(p).is_file()]
        last = paths[-1] if paths else None
        rows.append(
            {
                "run": run,
                "width": _width(configs.get(run, {}), last),
                "n_params": parameter_count(last) if last else None,
            }
        )
    return pd.DataFrame(rows, columns=["run", "width", "n_params"])
