"""Splits as [0, 1] NCHW float tensors: train, test and heldout (the last examples of the test
set, for early stopping) of a registered dataset, read once per process and kept as read (uint8
for image files) until a caller asks for examples. docs/data.md; design notes: docs/method.md,
"Implementation notes"."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from flatcli.config.commands import SPLITS
from flatcli.data.readers import RawData, image_geometry, labels_array
from flatcli.data.registry import DatasetSpec, data_dir, get_spec
from flatcli.errors import DataError, UsageError


def _check_raw(spec: DatasetSpec, raw: RawData) -> RawData:
    """`raw` when its images have the spec's geometry, its labels fit the spec's classes, and
    its test set is larger than the held-out part; DataError otherwise."""
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        where = f"{spec.name} {split}"
        geometry = image_geometry(x, where)
        expected = (spec.in_channels, spec.image_size, spec.image_size)
        if geometry != expected:
            raise DataError(f"{where}: images are CxHxW {geometry}, expected {expected}")
        labels_array(y, len(x), where)
        if len(y) and y.max() >= spec.num_classes:
            raise DataError(
                f"{where}: label {y.max()} is out of range for {spec.num_classes} classes"
            )
    if len(raw.y_train) == 0:
        raise DataError(f"{spec.name}: the training set is empty")
    if len(raw.y_test) <= spec.heldout:
        raise DataError(
            f"{spec.name}: the test set has {len(raw.y_test)} examples; it needs more than the "
            f"{spec.heldout} held out for early stopping"
        )
    return raw


@functools.lru_cache(maxsize=8)
def _raw(dataset: str, directory: Path | None) -> RawData:
    spec = get_spec(dataset)
    return _check_raw(spec, spec.read(directory))


def as_float_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (0..255) or float NCHW in [0, 1] -> float32 NCHW tensor in [0, 1].

    The result is a fresh contiguous tensor (it never shares memory with `images`).
    """
    if images.dtype == np.uint8:
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), order="C")).float() / 255.0
    x = torch.from_numpy(np.array(images, dtype=np.float32, order="C"))
    if x.ndim == 3:
        x = x[:, None]
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise DataError("float images must lie in [0, 1]")
    return x


def _split(dataset: str, split: str, directory) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    spec = get_spec(dataset)
    raw = _raw(dataset, data_dir(directory))
    if split == "train":
        return raw.x_train, raw.y_train
    cut = len(raw.y_test) - spec.heldout
    sl = slice(0, cut) if split == "test" else slice(cut, None)
    return raw.x_test[sl], raw.y_test[sl]


def split_size(dataset: str, split: str, directory: str | os.PathLike | None = None) -> int:
    """The number of examples in `split` of `dataset`."""
    return len(_split(dataset, split, directory)[1])


def load_split(
    dataset: str,
    split: str,
    n: int | None = None,
    directory: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` examples (all if None) of `split`.

    Returns x float32 [n, C, H, W] in [0, 1] and y int64 [n], both fresh contiguous tensors
    (the process keeps the data set itself as read, uint8 for image files).
    """
    images, labels = _subset(dataset, split, n, directory)
    return as_float_nchw(images), torch.tensor(np.asarray(labels), dtype=torch.int64)


def check_examples(dataset: str, split: str, n: int | None, directory=None) -> None:
    """What `load_split` would refuse (no data, a bad split, too many examples), without
    making float copies."""
    _subset(dataset, split, n, directory)


def _subset(dataset: str, split: str, n: int | None, directory) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _split(dataset, split, directory)
    if n is not None:
        if n <= 0:
            raise UsageError(f"--n-examples must be positive, got {n}")
        if n > len(labels):
            raise DataError(
                f"--n-examples {n} is larger than the {dataset} {split} split "
                f"({len(labels)} examples)"
            )
        images, labels = images[:n], labels[:n]
    return images, labels


def default_n_examples(dataset: str, split: str, directory=None) -> int:
    """docs/method.md's first 1000 examples, or the whole split when it is smaller."""
    return min(get_spec(dataset).eval_examples, split_size(dataset, split, directory))
