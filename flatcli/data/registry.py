"""The registry of dataset specs: each dataset's defaults, once, its reader, and the spec of a
user's `npz:PATH` arrays. Files and layouts: docs/data.md."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flatcli.data.readers import (
    LAYOUTS,
    NPZ_KEYS,
    RawData,
    image_geometry,
    npz_classes,
    read_cifar,
    read_digits,
    read_mnist,
    read_npz,
    read_svhn,
)
from flatcli.errors import DataError, UsageError


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
    eval_examples: int = 1000  # docs/method.md: the first 1000 test / train examples
    classes_from_labels: bool = False  # num_classes is max label + 1: a model may have more


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS[spec.name] = spec
    return spec


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """`--data-dir` if given, else `FLATCLI_DATA_DIR`, else None."""
    value = explicit if explicit is not None else os.environ.get("FLATCLI_DATA_DIR")
    return Path(value).expanduser() if value else None


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
        read=read_digits,
    )
)

_RGB_DEFAULTS = dict(in_channels=3, image_size=32, eps=8 / 255, default_arch="preact-resnet18",
                     heldout=500)
_GREY_DEFAULTS = dict(in_channels=1, image_size=28, mean=(0.0,), std=(1.0,),
                      default_arch="small-cnn", heldout=500)

register(DatasetSpec(
    name="cifar10", num_classes=10, **_RGB_DEFAULTS,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    layout=LAYOUTS["cifar10"],
    read=functools.partial(read_cifar, "cifar10"),
))
register(DatasetSpec(
    name="cifar100", num_classes=100, **_RGB_DEFAULTS,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    layout=LAYOUTS["cifar100"],
    read=functools.partial(read_cifar, "cifar100"),
))
register(DatasetSpec(
    name="svhn", num_classes=10, **_RGB_DEFAULTS,
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
    layout=LAYOUTS["svhn"],
    read=read_svhn,
))
register(DatasetSpec(
    name="mnist", num_classes=10, eps=0.3, **_GREY_DEFAULTS,
    layout=LAYOUTS["mnist"],
    read=functools.partial(read_mnist, "mnist", "MNIST"),
))
register(DatasetSpec(
    name="fashion-mnist", num_classes=10, eps=0.1, **_GREY_DEFAULTS,
    layout=LAYOUTS["fashion-mnist"],
    read=functools.partial(read_mnist, "fashion-mnist", "FashionMNIST"),
))


def get_spec(dataset: str) -> DatasetSpec:
    """The spec of a registered dataset, or of `npz:PATH` (a user's arrays)."""
    if dataset.startswith("npz:"):
        return _npz_spec(dataset)
    if dataset not in DATASETS:
        raise UsageError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)} or npz:PATH"
        )
    return DATASETS[dataset]


def _npz_path(dataset: str) -> Path:
    text = dataset[len("npz:"):]
    if not text:
        raise UsageError("npz dataset needs a path: npz:PATH")
    return Path(text).expanduser()


def _read_npz(key: tuple[Path, int, int], _: Path | None) -> RawData:
    return read_npz(*key)


@functools.lru_cache(maxsize=4)
def _npz_spec_for(dataset: str, key: tuple[Path, int, int]) -> DatasetSpec:
    """The spec of a user's arrays. The class count belongs to the model: without `n_classes`
    in the file, max label + 1 is only a lower bound (`classes_from_labels`)."""
    raw = read_npz(*key)
    channels, size, _ = image_geometry(raw.x_train, dataset)
    labelled = int(max(raw.y_train.max(), raw.y_test.max())) + 1
    stated = npz_classes(*key)
    if stated is not None and stated < labelled:
        raise DataError(f"{key[0]}: n_classes is {stated} but a label is {labelled - 1}")
    return DatasetSpec(
        name=dataset,
        num_classes=labelled if stated is None else stated,
        classes_from_labels=stated is None,
        in_channels=channels,
        image_size=size,
        eps=8 / 255,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        default_arch="preact-resnet18" if size >= 32 else "small-cnn",
        heldout=min(500, len(raw.y_test) // 5),
        layout=f"{', '.join(NPZ_KEYS)} in {key[0]}",
        read=functools.partial(_read_npz, key),
    )


def _npz_spec(dataset: str) -> DatasetSpec:
    path = _npz_path(dataset)
    try:
        stat = path.resolve().stat()
    except OSError:
        raise DataError(
            f"npz dataset file {path} not found (arrays {', '.join(NPZ_KEYS)}); "
            "flatcli never downloads"
        ) from None
    if not path.is_file():
        raise DataError(f"npz dataset {path} is not a file")
    return _npz_spec_for(dataset, (path.resolve(), stat.st_mtime_ns, stat.st_size))


def check_eps(eps: float, norm: str, dataset: str) -> float:
    """eps must be a finite radius inside the [0, 1] box: <= 1 for L-inf, <= sqrt(dim) for L2."""
    spec = get_spec(dataset)
    limit = 1.0 if norm == "linf" else math.sqrt(spec.in_channels * spec.image_size**2)
    if not math.isfinite(eps) or eps < 0 or eps > limit:
        raise UsageError(
            f"--eps {eps:g} is outside [0, {limit:g}] for {norm} on {dataset} ([0, 1] images)"
        )
    return eps
