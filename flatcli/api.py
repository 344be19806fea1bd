"""A small public Python API for notebooks and scripts.

from flatcli.api import load_model, load_examples, read_table
model = load_model("sample_checkpoints/at/epoch_0010.safetensors")   # eval mode, inputs in [0, 1]
x, y = load_examples("digits", "test", 200)
df = read_table("out", "attack")
"""

from __future__ import annotations

import os

from flatcli import checkpoints, data, tables


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    normalize: str | None = None,
    dataset: str | None = None,
    device: str = "cpu",
):
    """The model of a checkpoint (flatcli's own or a foreign format), in eval mode on `device`.

    It takes inputs in [0, 1] and owns its normalization; `arch`/`normalize`/`dataset` are needed
    only for foreign checkpoints (see `flatcli attack --help`).
    """
    model, _ = checkpoints.load_model(
        path, arch=arch, normalize=normalize, dataset=dataset, device=device
    )
    return model


def load_examples(
    dataset: str = "digits",
    split: str = "test",
    n: int | None = None,
    data_dir: str | os.PathLike | None = None,
):
    """The first `n` examples of a split: x float32 [n, C, H, W] in [0, 1], y int64 [n]."""
    return data.load_split(dataset, split, n, data_dir)


def read_table(out: str | os.PathLike, name: str):
    """A whole flatcli table (e.g. "attack") under the output directory `out`, as a DataFrame."""
    return tables.read_table(out, name)
