"""Datasets as [0, 1] NCHW float tensors with fixed, documented splits.

Splits (PAPER.md's protocol):
- `train`: the training set, in its stored order (the train-side robust loss uses its first n).
- `test`: the test set without its last `heldout` examples (evaluation uses its first n).
- `heldout`: the last `heldout` examples of the test set, for early stopping only.

The embedded default is scikit-learn's bundled handwritten digits (1797 images, 8x8, 16 grey
levels scaled to [0, 1]): a fixed permutation (numpy RandomState(0)) puts 1200 images in train and
597 in the test set, whose last 197 are held out, so `test` has 400 examples.
Other datasets are read from `FLATCLI_DATA_DIR` / `--data-dir` in torchvision's on-disk layouts and
are never downloaded; `npz:PATH` reads a user's arrays.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flatcli.errors import DataError, UsageError

SPLITS = ("train", "test", "heldout")


@dataclass(frozen=True)
class RawData:
    """A dataset as read from disk: images uint8 NHWC or float NCHW in [0, 1]; labels int."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class DatasetSpec:
    """Per-dataset defaults, the one source of truth for them.

    `eps` is the L-inf radius the literature uses for this dataset; `mean`/`std` are the
    normalization constants of the common training codebases (`--normalize <name>`).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    eps: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_arch: str
    heldout: int
    layout: str  # what the user must put under the data directory (for error messages)
    read: Callable[[Path | None], RawData]
    eval_examples: int = 1000  # PAPER.md: the first 1000 test / train examples


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """`--data-dir` if given, else `FLATCLI_DATA_DIR`, else None."""
    value = explicit if explicit is not None else os.environ.get("FLATCLI_DATA_DIR")
    return Path(value).expanduser() if value else None


def _read_digits(_: Path | None) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(labels))
    train, test = order[:1200], order[1200:]
    return RawData(images[train], labels[train], images[test], labels[test])


register(
    DatasetSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        eps=0.1,
        mean=(0.0,),
        std=(1.0,),
        default_arch="small-cnn",
        heldout=197,
        layout="bundled with scikit-learn",
        read=_read_digits,
    )
)


def get_spec(dataset: str) -> DatasetSpec:
    """The spec of a registered dataset, or of `npz:PATH` (a user's arrays)."""
    if dataset.startswith("npz:"):
        return _npz_spec(dataset)
    if dataset not in DATASETS:
        raise UsageError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)} or npz:PATH"
        )
    return DATASETS[dataset]


def _npz_spec(dataset: str) -> DatasetSpec:
    raise UsageError("npz datasets are not supported yet")


@functools.lru_cache(maxsize=8)
def _raw(dataset: str, directory: Path | None) -> RawData:
    return get_spec(dataset).read(directory)


def as_float_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC (0..255) or float NCHW in [0, 1] -> float32 NCHW tensor in [0, 1]."""
    if images.dtype == np.uint8:
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / 255.0
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DataError("float images must lie in [0, 1]")
    return x


def split_size(dataset: str, split: str, directory: str | os.PathLike | None = None) -> int:
    return len(load_split(dataset, split, None, directory)[1])


def load_split(
    dataset: str,
    split: str,
    n: int | None = None,
    directory: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` examples (all if None) of `split`: x float32 [n, C, H, W] in [0, 1], y int64 [n]."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    spec = get_spec(dataset)
    raw = _raw(dataset, data_dir(directory))
    if split == "train":
        images, labels = raw.x_train, raw.y_train
    else:
        cut = len(raw.y_test) - spec.heldout
        sl = slice(0, cut) if split == "test" else slice(cut, None)
        images, labels = raw.x_test[sl], raw.y_test[sl]
    if n is not None:
        if n <= 0:
            raise UsageError(f"--n-examples must be positive, got {n}")
        if n > len(labels):
            raise DataError(
                f"--n-examples {n} is larger than the {dataset} {split} split ({len(labels)} examples)"
            )
        images, labels = images[:n], labels[:n]
    return as_float_nchw(images), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def default_n_examples(dataset: str, split: str, directory=None) -> int:
    """PAPER.md's first 1000 examples, or the whole split when it is smaller."""
    return min(get_spec(dataset).eval_examples, split_size(dataset, split, directory))
