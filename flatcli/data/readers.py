"""Readers of datasets on disk: digits from scikit-learn, torchvision's layouts under the data
directory (CIFAR pickles, SVHN .mat, MNIST idx) with the official md5 checks, and a user's npz
arrays; each checks what it read. Never downloads: a missing file is a `DataError` naming its
path. Layouts and sums: docs/data.md."""

from __future__ import annotations

import functools
import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatcli.checkpoints.safe_load import Refused, RestrictedUnpickler
from flatcli.errors import DataError, one_line

NO_DOWNLOAD = "--data-dir or FLATCLI_DATA_DIR sets DATA_DIR; flatcli never downloads"


@dataclass(frozen=True)
class RawData:
    """A dataset as read from disk: images uint8 NHWC or float NCHW in [0, 1]; labels int."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# What a user puts under the data directory for each dataset read from disk (error messages and
# `--help` quote it through each DatasetSpec's `layout`).
LAYOUTS = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch} (torchvision CIFAR10)",
    "cifar100": "cifar-100-python/{train,test} (torchvision CIFAR100)",
    "svhn": "{train_32x32.mat,test_32x32.mat} (torchvision SVHN; also accepted under svhn/)",
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision MNIST)",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
    "(torchvision FashionMNIST)",
}


def read_digits(_: Path | None) -> RawData:
    """scikit-learn's 1797 digits in [0, 1], split 1200 / 597 by a fixed permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(labels))
    train, test = order[:1200], order[1200:]
    return RawData(images[train], labels[train], images[test], labels[test])


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


def labels_array(labels, n: int, where: str) -> np.ndarray:
    """`labels` as int64 [n], checked: integers, one per image, none negative (DataError)."""
    try:
        arr = np.asarray(labels)
    except Exception as err:  # a ragged or odd object
        raise DataError(f"{where}: labels are not an integer array ({one_line(err)})") from None
    if arr.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers, got {arr.dtype}")
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{where}: expected {n} labels of shape [N], got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {arr.min()}")
    return arr.astype(np.int64)


def image_geometry(images: np.ndarray, where: str) -> tuple[int, int, int]:
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
    return images, labels_array(entry[label_key], len(images), str(path))


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


def read_cifar(name: str, directory: Path | None) -> RawData:
    """CIFAR-10 (`labels`) or CIFAR-100 (`fine_labels`) batches as uint8 NHWC."""
    folder, train_files, test_files, label_key, official = _CIFAR[name]
    layout = LAYOUTS[name]
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
    labels = labels_array(labels, images.shape[3], str(path))
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10, as torchvision maps it
    return images.transpose(3, 0, 1, 2), labels  # [H, W, C, N] -> NHWC


def read_svhn(directory: Path | None) -> RawData:
    """SVHN's train and test `.mat` files as uint8 NHWC, label 10 read as 0."""
    layout = LAYOUTS["svhn"]
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


_IDX_FILES = {"x_train": ("train-images-idx3-ubyte", 3), "y_train": ("train-labels-idx1-ubyte", 1),
              "x_test": ("t10k-images-idx3-ubyte", 3), "y_test": ("t10k-labels-idx1-ubyte", 1)}
_MNIST_OFFICIAL = {"x_train": 60000, "y_train": 60000, "x_test": 10000, "y_test": 10000}
# md5 of each official idx file's content, unpacked: a `.gz` is checked after gunzip, so a file
# compressed again (Debian's dataset-fashion-mnist ships such .gz files) is checked the same way
# (docs/data.md gives the sources).
IDX_CONTENT_MD5 = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion-mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                      "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                      "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
}


def _idx_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {one_line(err)}") from None


def _read_idx(path: Path, ndim: int, name: str | None = None) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's MNIST format), optionally gzipped; the content of
    a file with the official example count of `name`'s file must have the official md5."""
    raw = _idx_bytes(path)
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
    stem = path.name.removesuffix(".gz")
    key = next((k for k, (file, _) in _IDX_FILES.items() if file == stem), None)
    if name in IDX_CONTENT_MD5 and key is not None and dims[0] == _MNIST_OFFICIAL[key]:
        expected = IDX_CONTENT_MD5[name][stem]
        actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if actual != expected:
            packed = " (after gunzip)" if path.suffix == ".gz" else ""
            raise DataError(
                f"{name}: {path} has the official example count but its content{packed} has "
                f"md5 {actual}, not the official {expected}: the file is corrupt, altered or "
                "another dataset's; replace it"
            )
    return body.reshape(dims).copy()


def _idx_folder(name: str, folder: str, root: Path) -> Path:
    """Where the idx files lie: torchvision's `<folder>/raw/`, the data directory itself (the
    files as distributed, e.g. Debian's /usr/share/datasets/fashion-mnist), or `<name>/` in it
    (DATA_DIR=/usr/share/datasets). The first holding the training images wins."""
    candidates = (root / folder / "raw", root, root / name)
    for base in candidates:
        file = _IDX_FILES["x_train"][0]
        if (base / file).is_file() or (base / f"{file}.gz").is_file():
            return base
    return candidates[0]


def read_mnist(name: str, folder: str, directory: Path | None) -> RawData:
    """MNIST or Fashion-MNIST idx files (gzipped or not) as uint8 NHW."""
    layout = LAYOUTS[name]
    raw_dir = _idx_folder(name, folder, _root(name, layout, directory))
    arrays: dict[str, np.ndarray] = {}
    for key, (file, ndim) in _IDX_FILES.items():
        path = raw_dir / file
        if not path.is_file():
            path = raw_dir / f"{file}.gz"
            if not path.is_file():
                raise _missing(name, layout, raw_dir / file)
        arrays[key] = _read_idx(path, ndim, name)
    for split in ("train", "test"):
        n_x, n_y = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
        if n_x != n_y:
            raise DataError(f"{name}: {split} has {n_x} images but {n_y} labels in {raw_dir}")
    return RawData(arrays["x_train"], arrays["y_train"].astype(np.int64),
                   arrays["x_test"], arrays["y_test"].astype(np.int64))


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_images(x: np.ndarray, where: str) -> tuple[int, int, int]:
    """(C, H, W) of a user's images, checked: not empty, square, floats in [0, 1]."""
    c, h, w = image_geometry(x, where)
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
    return c, h, w


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
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
            return {key: archive[key] for key in NPZ_KEYS}
        except Exception as err:  # a corrupt member, an object array (pickles are refused)
            raise DataError(f"cannot read npz dataset {path}: {one_line(err)}") from None


@functools.lru_cache(maxsize=4)
def read_npz(path: Path, mtime_ns: int, size: int) -> RawData:
    """A user's `x_train, y_train, x_test, y_test` from `np.load(path)` (no pickles), checked;
    the stat values key the cache, so an edited file is read again."""
    arrays = _npz_arrays(path)
    geometry = {
        split: _npz_images(arrays[f"x_{split}"], f"{path} x_{split}") for split in ("train", "test")
    }
    if geometry["train"] != geometry["test"]:
        raise DataError(
            f"{path}: x_train images are CxHxW {geometry['train']} but x_test {geometry['test']}"
        )
    y_train, y_test = (
        labels_array(arrays[f"y_{s}"], len(arrays[f"x_{s}"]), f"{path} y_{s}")
        for s in ("train", "test")
    )
    return RawData(arrays["x_train"], y_train, arrays["x_test"], y_test)


@functools.lru_cache(maxsize=4)
def npz_classes(path: Path, mtime_ns: int, size: int) -> int | None:
    """The npz's `n_classes` scalar, or None when it has none."""
    with np.load(path, allow_pickle=False) as archive:
        if "n_classes" not in archive.files:
            return None
        value = archive["n_classes"]
    if value.shape != () or value.dtype.kind not in "iu" or int(value) < 1:
        raise DataError(f"{path}: n_classes must be a positive integer scalar, got {value!r}")
    return int(value)
