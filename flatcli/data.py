"""Datasets as [0, 1] NCHW float tensors with fixed, documented splits.

Splits (PAPER.md's protocol):
- `train`: the training set, in its stored order (the train-side robust loss uses its first n).
- `test`: the test set without its last `heldout` examples (evaluation uses its first n).
- `heldout`: the last `heldout` examples of the test set, for early stopping only.

The embedded default is scikit-learn's bundled handwritten digits (1797 images, 8x8, 16 grey
levels scaled to [0, 1]): a fixed permutation (numpy RandomState(0)) puts 1200 images in train and
597 in the test set, whose last 197 are held out, so `test` has 400 examples.

Other datasets are read from the data directory (`--data-dir`, else `FLATCLI_DATA_DIR`) in
torchvision's on-disk layouts, so a folder torchvision downloaded works as is. flatcli never
downloads; a missing file is a `DataError` naming the expected path.

    cifar10        DATA_DIR/cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch}
    cifar100       DATA_DIR/cifar-100-python/{train, test}          (fine labels)
    svhn           DATA_DIR/{train_32x32.mat, test_32x32.mat}       (or under DATA_DIR/svhn/)
    mnist          DATA_DIR/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    fashion-mnist  DATA_DIR/FashionMNIST/raw/...                    (same file names as MNIST)

CIFAR batches are Python pickles. They are read with the restricted unpickler checkpoints share
(`flatcli.checkpoints.safe_load`), which resolves only plain data (numpy arrays, dtypes, scalars,
containers, `_codecs.encode` for latin-1 only); any other global (`os.system`, ...) is refused
with a `DataError` before anything is called. SVHN's `.mat` files are read with
`scipy.io.loadmat` as torchvision does (label 10 -> 0); MNIST's idx files are parsed from their
headers, gzipped or not.

Checksum rule: a file that holds exactly as many examples as the official file of that name
(10000 per CIFAR-10 batch, 50000/10000 for CIFAR-100, 73257/26032 for SVHN, 60000/10000 for
MNIST and Fashion-MNIST) presents itself as the official download, so its md5 must equal the one
torchvision publishes (`torchvision.datasets.CIFAR10.train_list`, `SVHN.split_list`,
`MNIST.resources`, ...); a mismatch is a `DataError` (a corrupt or altered download). Files with
other counts (subsets, your own data in these layouts, test fixtures) are not the official files
and are read without an md5 check. torchvision publishes md5s only for MNIST's `.gz` files, so
uncompressed idx files are checked by their headers and sizes only. Every dataset's structure is
validated on read either way: image geometry, label range, and a test set larger than `heldout`.

`npz:PATH` reads a user's arrays `x_train`, `y_train`, `x_test`, `y_test` from `np.load(PATH)`
(no pickles): images uint8 NHWC (0..255) or float NCHW in [0, 1] (N x H x W means one channel),
square, integer labels >= 0. Its spec is derived from the file: num_classes = max label + 1,
channels and size from the images, eps 8/255 for every npz dataset (pass `--eps` otherwise), mean
0 / std 1, default arch preact-resnet18 from 32 px up (small-cnn below), and the last
min(500, len(x_test) // 5) test examples held out.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flatcli.checkpoints.safe_load import Refused, RestrictedUnpickler
from flatcli.errors import DataError, UsageError, one_line

SPLITS = ("train", "test", "heldout")

NO_DOWNLOAD = "--data-dir or FLATCLI_DATA_DIR sets DATA_DIR; flatcli never downloads"


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


# ---------------------------------------------------------------------------------------------
# digits (bundled)


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


# ---------------------------------------------------------------------------------------------
# files under the data directory


def _root(name: str, layout: str, directory: Path | None) -> Path:
    if directory is None:
        raise DataError(f"{name}: no data directory; expected DATA_DIR/{layout}; {NO_DOWNLOAD}")
    return Path(directory)


def _missing(name: str, layout: str, path: Path) -> DataError:
    return DataError(f"{name}: {path} not found; expected DATA_DIR/{layout}; {NO_DOWNLOAD}")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_md5(name: str, path: Path, expected: str) -> None:
    actual = _md5(path)
    if actual != expected:
        raise DataError(
            f"{name}: {path} has the official example count but md5 {actual}, not torchvision's "
            f"{expected}: the download is corrupt or altered; replace it"
        )


def _labels_array(labels, n: int, where: str) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except Exception as err:  # a ragged or odd object
        raise DataError(f"{where}: labels are not an integer array ({one_line(err)})") from None
    if arr.dtype.kind not in "iu" or arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"{where}: expected {n} integer labels, got {arr.dtype} array of shape {arr.shape}"
        )
    return arr.astype(np.int64)


# CIFAR pickles -------------------------------------------------------------------------------


def _unpickle_restricted(path: Path):
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, encoding="latin1").load()
        except Refused as err:
            raise DataError(f"refusing to unpickle {path}: {one_line(str(err))}") from None
        except Exception as err:  # truncated or not a pickle at all
            raise DataError(f"cannot read {path} as a CIFAR batch: {one_line(err)}") from None


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One torchvision-format CIFAR batch -> (uint8 NHWC [N, 32, 32, 3], int64 labels [N])."""
    entry = _unpickle_restricted(path)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        keys = sorted(map(str, entry))
        raise DataError(f"{path}: expected keys 'data' and {label_key!r}, got {keys}")
    images = entry["data"]
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim < 1
        or images.size != len(images) * 3072
    ):
        shape = getattr(images, "shape", None)
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape [N, 3072], got "
            f"{getattr(images, 'dtype', type(images).__name__)} {shape}"
        )
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # as torchvision: HWC
    return images, _labels_array(entry[label_key], len(images), str(path))


_CIFAR = {
    # name: (folder, train files, test files, label key, official examples per file)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        {**{f"data_batch_{i}": 10000 for i in range(1, 6)}, "test_batch": 10000},
    ),
    "cifar100": ("cifar-100-python", ("train",), ("test",), "fine_labels",
                 {"train": 50000, "test": 10000}),
}


def _cifar_official_md5(name: str) -> dict[str, str]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    return {file: md5 for file, md5 in cls.train_list + cls.test_list}


def _read_cifar(name: str, directory: Path | None) -> RawData:
    folder, train_files, test_files, label_key, official = _CIFAR[name]
    layout = DATASETS[name].layout
    base = _root(name, layout, directory) / folder
    for file in train_files + test_files:
        if not (base / file).is_file():
            raise _missing(name, layout, base / file)
    parts = {file: _read_cifar_batch(base / file, label_key) for file in train_files + test_files}
    claimed = [file for file, (_, y) in parts.items() if len(y) == official[file]]
    if claimed:
        md5s = _cifar_official_md5(name)
        for file in claimed:
            _verify_md5(name, base / file, md5s[file])

    def join(files):
        return (np.concatenate([parts[f][0] for f in files]),
                np.concatenate([parts[f][1] for f in files]))

    (x_train, y_train), (x_test, y_test) = join(train_files), join(test_files)
    return RawData(x_train, y_train, x_test, y_test)


# SVHN ----------------------------------------------------------------------------------------

_SVHN_OFFICIAL = {"train": 73257, "test": 26032}


def _read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as err:  # not a .mat, truncated, or MATLAB v7.3 (HDF5)
        raise DataError(f"cannot read {path} with scipy.io.loadmat: {one_line(err)}") from None
    images, labels = mat.get("X"), mat.get("y")
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{path}: 'X' must be an array of shape [32, 32, 3, N], got "
            f"{getattr(images, 'shape', None)}"
        )
    if images.dtype != np.uint8:
        raise DataError(f"{path}: 'X' must be uint8, got {images.dtype}")
    if not isinstance(labels, np.ndarray) or labels.size != images.shape[3]:
        raise DataError(
            f"{path}: 'y' must hold {images.shape[3]} labels, got {getattr(labels, 'shape', None)}"
        )
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    labels = _labels_array(labels, images.shape[3], str(path))
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10, as torchvision maps it
    return images.transpose(3, 0, 1, 2), labels  # [H, W, C, N] -> NHWC


def _read_svhn(directory: Path | None) -> RawData:
    layout = DATASETS["svhn"].layout
    root = _root("svhn", layout, directory)
    base = next((d for d in (root, root / "svhn") if (d / "train_32x32.mat").is_file()), root)
    out = []
    for split in ("train", "test"):
        path = base / f"{split}_32x32.mat"
        if not path.is_file():
            raise _missing("svhn", layout, path)
        images, labels = _read_svhn_mat(path)
        if len(labels) == _SVHN_OFFICIAL[split]:
            from torchvision.datasets import SVHN

            _verify_md5("svhn", path, SVHN.split_list[split][2])
        out += [images, labels]
    return RawData(*out)


# MNIST / Fashion-MNIST -----------------------------------------------------------------------

_IDX_FILES = {"x_train": ("train-images-idx3-ubyte", 3), "y_train": ("train-labels-idx1-ubyte", 1),
              "x_test": ("t10k-images-idx3-ubyte", 3), "y_test": ("t10k-labels-idx1-ubyte", 1)}
_MNIST_OFFICIAL = {"x_train": 60000, "y_train": 60000, "x_test": 10000, "y_test": 10000}


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's MNIST format), optionally gzipped."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {one_line(err)}") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes((0, 0, 0x08, ndim)):
        raise DataError(
            f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s) "
            f"(magic {raw[:4].hex() or 'missing'}, expected 000008{ndim:02x})"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but the file holds {body.size} bytes of data")
    return body.reshape(dims).copy()


def _read_mnist(name: str, folder: str, directory: Path | None) -> RawData:
    layout = DATASETS[name].layout
    raw_dir = _root(name, layout, directory) / folder / "raw"
    arrays: dict[str, np.ndarray] = {}
    for key, (file, ndim) in _IDX_FILES.items():
        path = raw_dir / file
        if not path.is_file():
            path = raw_dir / f"{file}.gz"
            if not path.is_file():
                raise _missing(name, layout, raw_dir / file)
        arrays[key] = _read_idx(path, ndim)
        if path.suffix == ".gz" and len(arrays[key]) == _MNIST_OFFICIAL[key]:
            from torchvision.datasets import MNIST, FashionMNIST

            cls = MNIST if name == "mnist" else FashionMNIST
            _verify_md5(name, path, dict(cls.resources)[path.name])
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_x != n_y:
            raise DataError(f"{name}: {split} has {n_x} images but {n_y} labels in {raw_dir}")
    return RawData(arrays["x_train"], arrays["y_train"].astype(np.int64),
                   arrays["x_test"], arrays["y_test"].astype(np.int64))


# registry ------------------------------------------------------------------------------------

_RGB_DEFAULTS = dict(in_channels=3, image_size=32, eps=8 / 255, default_arch="preact-resnet18",
                     heldout=500)
_GREY_DEFAULTS = dict(in_channels=1, image_size=28, mean=(0.0,), std=(1.0,),
                      default_arch="small-cnn", heldout=500)

register(DatasetSpec(
    name="cifar10", num_classes=10, **_RGB_DEFAULTS,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
    layout="cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch} (torchvision CIFAR10)",
    read=functools.partial(_read_cifar, "cifar10"),
))
register(DatasetSpec(
    name="cifar100", num_classes=100, **_RGB_DEFAULTS,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    layout="cifar-100-python/{train,test} (torchvision CIFAR100)",
    read=functools.partial(_read_cifar, "cifar100"),
))
register(DatasetSpec(
    name="svhn", num_classes=10, **_RGB_DEFAULTS,
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970),
    layout="{train_32x32.mat,test_32x32.mat} (torchvision SVHN; also accepted under svhn/)",
    read=_read_svhn,
))
register(DatasetSpec(
    name="mnist", num_classes=10, eps=0.3, **_GREY_DEFAULTS,
    layout="MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision MNIST)",
    read=functools.partial(_read_mnist, "mnist", "MNIST"),
))
register(DatasetSpec(
    name="fashion-mnist", num_classes=10, eps=0.1, **_GREY_DEFAULTS,
    layout="FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
           "(torchvision FashionMNIST)",
    read=functools.partial(_read_mnist, "fashion-mnist", "FashionMNIST"),
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


# ---------------------------------------------------------------------------------------------
# validation shared by every dataset


def _geometry(images: np.ndarray, where: str) -> tuple[int, int, int]:
    """(C, H, W) of uint8 NHWC / NHW or float NCHW / NHW images; DataError otherwise."""
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4) or (
        images.dtype != np.uint8 and images.dtype.kind != "f"
    ):
        raise DataError(
            f"{where}: images must be uint8 NHWC (0..255) or float NCHW in [0, 1], got "
            f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        )
    if images.ndim == 3:
        return 1, images.shape[1], images.shape[2]
    if images.dtype == np.uint8:
        return images.shape[3], images.shape[1], images.shape[2]
    return images.shape[1], images.shape[2], images.shape[3]


def _check_labels(labels: np.ndarray, n_images: int, where: str) -> None:
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        kind = getattr(labels, "dtype", type(labels).__name__)
        raise DataError(f"{where}: labels must be integers, got {kind}")
    if labels.ndim != 1 or len(labels) != n_images:
        raise DataError(
            f"{where}: expected {n_images} labels of shape [N], got shape {labels.shape}"
        )
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {labels.min()}")


def _check_raw(spec: DatasetSpec, raw: RawData) -> RawData:
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        where = f"{spec.name} {split}"
        geometry = _geometry(x, where)
        expected = (spec.in_channels, spec.image_size, spec.image_size)
        if geometry != expected:
            raise DataError(f"{where}: images are CxHxW {geometry}, expected {expected}")
        _check_labels(y, len(x), where)
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


# ---------------------------------------------------------------------------------------------
# npz: a user's arrays

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_path(dataset: str) -> Path:
    text = dataset[len("npz:"):]
    if not text:
        raise UsageError("npz dataset needs a path: npz:PATH")
    return Path(text).expanduser()


@functools.lru_cache(maxsize=4)
def _load_npz(path: Path, mtime_ns: int, size: int) -> RawData:
    """Read and validate `path` (the stat values key the cache, so an edited file is re-read)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise DataError(f"cannot read npz dataset {path}: {one_line(err)}") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{path} holds a single array; expected an .npz with {', '.join(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DataError(
                f"{path} lacks array(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}"
            )
        try:
            arrays = {key: archive[key] for key in NPZ_KEYS}
        except Exception as err:  # a corrupt member, an object array (pickles are refused)
            raise DataError(f"cannot read npz dataset {path}: {one_line(err)}") from None
    geometry = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{path} x_{split}"
        c, h, w = geometry[split] = _geometry(x, where)
        if len(x) == 0:
            raise DataError(f"{where} is empty")
        if h != w:
            layout = "NHWC" if x.dtype == np.uint8 else "NCHW"
            raise DataError(
                f"{where}: images must be square, got {h}x{w} with {c} channel(s) reading "
                f"{x.dtype} shape {x.shape} as {layout} (uint8 must be NHWC, float NCHW)"
            )
        if x.dtype.kind == "f" and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DataError(f"{where}: float images must lie in [0, 1] (found values outside)")
        _check_labels(y, len(x), f"{path} y_{split}")
    if geometry["train"] != geometry["test"]:
        raise DataError(
            f"{path}: x_train images are CxHxW {geometry['train']} but x_test {geometry['test']}"
        )
    return RawData(arrays["x_train"], arrays["y_train"].astype(np.int64),
                   arrays["x_test"], arrays["y_test"].astype(np.int64))


def _read_npz(key: tuple[Path, int, int], _: Path | None) -> RawData:
    return _load_npz(*key)


@functools.lru_cache(maxsize=4)
def _npz_spec_for(dataset: str, key: tuple[Path, int, int]) -> DatasetSpec:
    raw = _load_npz(*key)
    channels, size, _ = _geometry(raw.x_train, dataset)
    return DatasetSpec(
        name=dataset,
        num_classes=int(max(raw.y_train.max(), raw.y_test.max())) + 1,
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


# ---------------------------------------------------------------------------------------------
# splits


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
    return len(_split(dataset, split, directory)[1])


def load_split(
    dataset: str,
    split: str,
    n: int | None = None,
    directory: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` examples (all if None) of `split`.

    Returns x float32 [n, C, H, W] in [0, 1] and y int64 [n], both fresh contiguous tensors.
    """
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
    return as_float_nchw(images), torch.tensor(np.asarray(labels), dtype=torch.int64)


def default_n_examples(dataset: str, split: str, directory=None) -> int:
    """PAPER.md's first 1000 examples, or the whole split when it is smaller."""
    return min(get_spec(dataset).eval_examples, split_size(dataset, split, directory))
