"""flatcli.data: digits splits, torchvision layouts (tiny fakes), safe CIFAR unpickling, npz."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch

from flatcli import data
from flatcli.data import readers
from flatcli.errors import DataError, UsageError

N_TRAIN, N_TEST = 24, 510  # the registered datasets hold out the last 500 test examples


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, *shape)).astype(np.uint8)


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, classes, size=n)


def _check_tensors(x: torch.Tensor, y: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert x.shape == shape and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == shape[:1] and y.dtype == torch.int64 and y.is_contiguous()
    assert 0 <= x.min() and x.max() <= 1


# digits ------------------------------------------------------------------------------------


def test_digits_split_sizes_and_determinism():
    sizes = {split: data.split_size("digits", split) for split in data.SPLITS}
    assert sizes == {"train": 1200, "test": 400, "heldout": 197}
    x1, y1 = data.load_split("digits", "test", 50)
    x2, y2 = data.load_split("digits", "test", 50)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    _check_tensors(x1, y1, (50, 1, 8, 8))
    assert data.default_n_examples("digits", "test") == 400
    spec = data.get_spec("digits")
    assert (spec.num_classes, spec.in_channels, spec.image_size, spec.eps) == (10, 1, 8, 0.1)


def test_digits_range_and_splits_are_disjoint_parts_of_test():
    x, y = data.load_split("digits", "train")
    _check_tensors(x, y, (1200, 1, 8, 8))
    assert x.max() == 1.0 and set(y.tolist()) == set(range(10))
    xt, _ = data.load_split("digits", "test")
    xh, _ = data.load_split("digits", "heldout")
    assert xt.shape[0] + xh.shape[0] == 597


def test_digits_returns_fresh_tensors():
    x, y = data.load_split("digits", "test", 5)
    x.zero_()
    y.fill_(-1)
    x2, y2 = data.load_split("digits", "test", 5)
    assert x2.abs().sum() > 0 and (y2 >= 0).all()


def test_bad_requests():
    with pytest.raises(DataError, match="larger than"):
        data.load_split("digits", "test", 401)
    with pytest.raises(UsageError, match="positive"):
        data.load_split("digits", "test", 0)
    with pytest.raises(UsageError, match="unknown split"):
        data.load_split("digits", "validation")
    with pytest.raises(UsageError, match="unknown dataset"):
        data.get_spec("imagenet")


def test_registry_defaults():
    cifar10, cifar100, svhn = (data.get_spec(n) for n in ("cifar10", "cifar100", "svhn"))
    mnist, fashion = data.get_spec("mnist"), data.get_spec("fashion-mnist")
    assert cifar10.mean == (0.4914, 0.4822, 0.4465) and cifar10.std == (0.2471, 0.2435, 0.2616)
    assert cifar100.num_classes == 100 and cifar100.mean == (0.5071, 0.4865, 0.4409)
    assert svhn.std == (0.1980, 0.2010, 0.1970)
    for spec in (cifar10, cifar100, svhn):
        assert spec.eps == 8 / 255 and spec.default_arch == "preact-resnet18"
        assert (spec.in_channels, spec.image_size, spec.heldout) == (3, 32, 500)
    assert (mnist.eps, fashion.eps) == (0.3, 0.1)
    for spec in (mnist, fashion):
        assert spec.default_arch == "small-cnn" and spec.mean == (0.0,) and spec.std == (1.0,)
        assert (spec.in_channels, spec.image_size, spec.heldout) == (1, 28, 500)


# CIFAR ---------------------------------------------------------------------------------------


def _write_pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _fake_cifar10(root, n_train_per_batch=N_TRAIN // 4, n_test=N_TEST):
    """torchvision's cifar-10-batches-py: pickled dicts, b'data' uint8 [N, 3072], b'labels'."""
    folder = root / "cifar-10-batches-py"
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else n_train_per_batch
        batch = {b"batch_label": b"fake", b"data": _images(n, (3072,), i),
                 b"labels": _labels(n, 10, 10 + i).tolist(), b"filenames": [b"x.png"] * n}
        _write_pickle(folder / name, batch)
        batches[name] = batch
    return batches


def test_cifar10_layout_values_and_splits(tmp_path):
    batches = _fake_cifar10(tmp_path)
    x, y = data.load_split("cifar10", "train", directory=tmp_path)
    _check_tensors(x, y, (5 * (N_TRAIN // 4), 3, 32, 32))
    first = batches["data_batch_1"]
    expected = torch.from_numpy(first[b"data"][0].reshape(3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(x[0], expected)
    assert y[: N_TRAIN // 4].tolist() == first[b"labels"]
    assert y[N_TRAIN // 4].item() == batches["data_batch_2"][b"labels"][0]
    xt, yt = data.load_split("cifar10", "test", directory=tmp_path)
    xh, yh = data.load_split("cifar10", "heldout", directory=tmp_path)
    test = batches["test_batch"]
    assert len(yt) == N_TEST - 500 and len(yh) == 500
    assert yt.tolist() == test[b"labels"][:10] and yh.tolist() == test[b"labels"][10:]
    last = torch.from_numpy(test[b"data"][-1].reshape(3, 32, 32).astype(np.float32)) / 255
    assert torch.equal(xh[-1], last)
    assert data.default_n_examples("cifar10", "test", tmp_path) == 10


def test_cifar_str_keys_and_protocol5(tmp_path):
    """Pickles with str keys (as real, Python-2 written batches load) and protocol 5 arrays."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = N_TEST if name == "test_batch" else 2
        batch = {"data": _images(n, (3072,), i), "labels": np.arange(n) % 10}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=5 if i % 2 else 2))
    x, y = data.load_split("cifar10", "train", directory=tmp_path)
    _check_tensors(x, y, (10, 3, 32, 32))
    assert y.tolist() == [0, 1] * 5


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = {b"data": _images(N_TRAIN, (3072,), 0),
             b"fine_labels": _labels(N_TRAIN, 100, 1).tolist(), b"coarse_labels": [0] * N_TRAIN}
    test = {b"data": _images(N_TEST, (3072,), 2),
            b"fine_labels": _labels(N_TEST, 100, 3).tolist(), b"coarse_labels": [0] * N_TEST}
    _write_pickle(folder / "train", train)
    _write_pickle(folder / "test", test)
    x, y = data.load_split("cifar100", "train", directory=tmp_path)
    _check_tensors(x, y, (N_TRAIN, 3, 32, 32))
    assert y.tolist() == train[b"fine_labels"]
    assert data.split_size("cifar100", "heldout", tmp_path) == 500


def test_env_var_and_explicit_directory(tmp_path, monkeypatch):
    env_root, explicit_root = tmp_path / "env", tmp_path / "explicit"
    _fake_cifar10(env_root, n_train_per_batch=1)
    _fake_cifar10(explicit_root, n_train_per_batch=2)
    monkeypatch.setenv("FLATCLI_DATA_DIR", str(env_root))
    assert data.split_size("cifar10", "train") == 5
    assert data.split_size("cifar10", "train", explicit_root) == 10  # --data-dir wins
    monkeypatch.delenv("FLATCLI_DATA_DIR")
    with pytest.raises(DataError, match="FLATCLI_DATA_DIR") as err:
        data.load_split("cifar10", "test")
    assert "never downloads" in str(err.value) and "\n" not in str(err.value)


def test_missing_folder_names_expected_path(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_split("cifar10", "test", directory=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "--data-dir" in message and "FLATCLI_DATA_DIR" in message and "\n" not in message
    _fake_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(DataError, match="test_batch not found"):
        data.load_split("cifar10", "test", directory=tmp_path)
    for name in ("cifar100", "svhn", "mnist", "fashion-mnist"):
        with pytest.raises(DataError, match=str(tmp_path)):
            data.load_split(name, "test", directory=tmp_path)


def test_too_small_test_set_and_bad_labels(tmp_path):
    _fake_cifar10(tmp_path, n_test=500)
    with pytest.raises(DataError, match="more than the 500 held out"):
        data.load_split("cifar10", "test", directory=tmp_path)
    root = tmp_path / "labels"
    batches = _fake_cifar10(root)
    batches["data_batch_3"][b"labels"][0] = 10
    _write_pickle(root / "cifar-10-batches-py" / "data_batch_3", batches["data_batch_3"])
    with pytest.raises(DataError, match="out of range"):
        data.load_split("cifar10", "train", directory=root)


def _py2_string(text: str) -> bytes:
    raw = text.encode("latin1")
    return b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING, as Python 2's cPickle wrote str


def test_python2_written_batch(tmp_path):
    """The official batches were pickled by Python 2 with numpy.core names and str payloads."""
    array_state = (b"(K\x01K\x02K\x03\x86cnumpy\ndtype\n" + _py2_string("u1") + b"K\x00K\x01\x87R"
                   b"(K\x03" + _py2_string("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                   b"I00\n" + _py2_string("\x01\x02\x03\x04\x05\xff") + b"tb")
    payload = (b"\x80\x02}(" + _py2_string("data") + b"cnumpy.core.multiarray\n_reconstruct\n"
               b"cnumpy\nndarray\nK\x00\x85" + _py2_string("b") + b"\x87R" + array_state
               + _py2_string("labels") + b"](K\x01K\x02eu.")
    (tmp_path / "batch").write_bytes(payload)
    entry = readers._unpickle_restricted(tmp_path / "batch")
    assert entry["labels"] == [1, 2]
    assert entry["data"].dtype == np.uint8 and entry["data"].tolist() == [[1, 2, 3], [4, 5, 255]]


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("where", ["value", "top"])
def test_malicious_cifar_pickle_is_refused_not_executed(tmp_path, where):
    _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = _Evil(f"touch {marker}")
    payload = {b"data": evil, b"labels": [0]} if where == "value" else evil
    _write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2", payload)
    with pytest.raises(DataError, match="refusing to unpickle.*system") as err:
        data.load_split("cifar10", "train", directory=tmp_path)
    assert "data_batch_2" in str(err.value)
    assert not marker.exists()


def test_corrupt_cifar_pickle(tmp_path):
    _fake_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot read"):
        data.load_split("cifar10", "test", directory=tmp_path)
    _write_pickle(path, {b"data": np.zeros((510, 100), np.uint8), b"labels": [0] * 510})
    with pytest.raises(DataError, match=r"\[N, 3072\]"):
        data.load_split("cifar10", "test", directory=tmp_path)


def test_official_sized_file_must_match_torchvision_md5(tmp_path, monkeypatch):
    """A batch with the official 10000 examples claims to be the real download: md5 checked."""
    _fake_cifar10(tmp_path / "a", n_test=10000)
    with pytest.raises(DataError, match="test_batch has the official example count but md5"):
        data.load_split("cifar10", "test", directory=tmp_path / "a")
    _fake_mnist(tmp_path / "b", gz=True, n_test=10000)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz has the official example "
                       r"count but its content \(after gunzip\) has md5"):
        data.load_split("mnist", "test", directory=tmp_path / "b")
    # the same file passes when its md5 is the published one (stand-in list)
    batch = tmp_path / "a" / "cifar-10-batches-py" / "test_batch"
    published = {"test_batch": readers._md5(batch)}
    monkeypatch.setattr(readers, "_cifar_official_md5", lambda name: published)
    assert data.split_size("cifar10", "test", tmp_path / "a") == 9500


# MNIST / Fashion-MNIST --------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes((0, 0, 0x08, array.ndim)) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fake_mnist(root, folder="MNIST", gz=False, n_train=N_TRAIN, n_test=N_TEST, flat=False):
    raw = root if flat else root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _images(n_train, (28, 28), 0),
        "train-labels-idx1-ubyte": _labels(n_train, 10, 1),
        "t10k-images-idx3-ubyte": _images(n_test, (28, 28), 2),
        "t10k-labels-idx1-ubyte": _labels(n_test, 10, 3),
    }
    for name, array in arrays.items():
        if gz:
            with gzip.open(raw / f"{name}.gz", "wb", compresslevel=1) as f:
                f.write(_idx_bytes(array))
        else:
            (raw / name).write_bytes(_idx_bytes(array))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_layouts(tmp_path, gz, name, folder):
    arrays = _fake_mnist(tmp_path, folder, gz)
    x, y = data.load_split(name, "train", directory=tmp_path)
    _check_tensors(x, y, (N_TRAIN, 1, 28, 28))
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32)) / 255
    assert torch.equal(x[:, 0], expected)
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    xh, yh = data.load_split(name, "heldout", directory=tmp_path)
    assert len(yh) == 500 and yh.tolist() == arrays["t10k-labels-idx1-ubyte"][10:].tolist()
    assert data.split_size(name, "test", tmp_path) == 10


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("below", ["", "fashion-mnist"])
def test_idx_files_directly_in_the_data_directory(tmp_path, gz, below):
    """The files as distributed (Debian's dataset-fashion-mnist: /usr/share/datasets/
    fashion-mnist/*.gz), in DATA_DIR itself or in DATA_DIR/fashion-mnist/."""
    arrays = _fake_mnist(tmp_path / below, gz=gz, flat=True)
    x, y = data.load_split("fashion-mnist", "test", directory=tmp_path)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:10].astype(np.float32)) / 255
    assert torch.equal(x[:, 0], expected)
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"][:10].tolist()
    assert data.split_size("fashion-mnist", "train", tmp_path) == N_TRAIN


def test_torchvision_layout_wins_and_a_missing_file_names_torchvisions_path(tmp_path):
    _fake_mnist(tmp_path, flat=True, n_train=5)
    _fake_mnist(tmp_path, folder="FashionMNIST", n_train=7)
    assert data.split_size("fashion-mnist", "train", tmp_path) == 7
    with pytest.raises(DataError, match=r"MNIST/raw/train-images-idx3-ubyte not found"):
        data.load_split("mnist", "train", directory=tmp_path / "empty")


def test_official_count_idx_content_md5_gz_or_not(tmp_path, monkeypatch):
    """The content md5 is checked on the unpacked bytes: a file gzipped again passes."""
    arrays = _fake_mnist(tmp_path / "a", n_test=10000, flat=True)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte has the official example count"):
        data.load_split("fashion-mnist", "test", directory=tmp_path / "a")
    content = {f: readers.hashlib.md5(_idx_bytes(a)).hexdigest() for f, a in arrays.items()}
    monkeypatch.setitem(readers.IDX_CONTENT_MD5, "fashion-mnist", content)
    assert data.split_size("fashion-mnist", "test", tmp_path / "a") == 9500
    _fake_mnist(tmp_path / "b", n_test=10000, flat=True, gz=True)
    assert data.split_size("fashion-mnist", "test", tmp_path / "b") == 9500
    with pytest.raises(DataError, match="content .after gunzip. has md5"):  # not mnist's content
        data.load_split("mnist", "test", directory=tmp_path / "b")


DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_package():
    """The real files (re-gzipped by Debian: their .gz md5 differ from the published ones, their
    content does not): 60000 + 10000 images, balanced classes."""
    x, y = data.load_split("fashion-mnist", "test", 1000, directory=DEBIAN_FASHION)
    _check_tensors(x, y, (1000, 1, 28, 28))
    assert data.split_size("fashion-mnist", "train", DEBIAN_FASHION) == 60000
    assert data.split_size("fashion-mnist", "heldout", DEBIAN_FASHION) == 500
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the published first test labels


def test_mnist_bad_idx(tmp_path):
    _fake_mnist(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        data.load_split("mnist", "test", directory=tmp_path)
    path.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an idx file"):
        data.load_split("mnist", "test", directory=tmp_path)


# SVHN ----------------------------------------------------------------------------------------


def _fake_svhn(folder, n_train=N_TRAIN, n_test=N_TEST):
    """torchvision's SVHN files: X uint8 [32, 32, 3, N], y [N, 1] with 10 for the digit 0."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images = _images(n, (32, 32, 3), seed)  # NHWC
        digits = np.arange(n) % 10
        stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(folder / f"{split}_32x32.mat",
                         {"X": images.transpose(1, 2, 3, 0), "y": stored})
        out[split] = images, digits
    return out


@pytest.mark.parametrize("subfolder", [False, True])
def test_svhn_layout_and_label_mapping(tmp_path, subfolder):
    arrays = _fake_svhn(tmp_path / "svhn" if subfolder else tmp_path)
    x, y = data.load_split("svhn", "train", directory=tmp_path)
    _check_tensors(x, y, (N_TRAIN, 3, 32, 32))
    images, digits = arrays["train"]
    assert y.tolist() == digits.tolist() and y.min() == 0 and y.max() == 9
    expected = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)) / 255
    assert torch.equal(x, expected)
    assert data.split_size("svhn", "heldout", tmp_path) == 500


def test_svhn_bad_file(tmp_path):
    tmp_path.joinpath("train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="loadmat"):
        data.load_split("svhn", "train", directory=tmp_path)


# npz -----------------------------------------------------------------------------------------


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_uint8_nhwc(tmp_path):
    x_train, x_test = _images(40, (32, 32, 3), 0), _images(60, (32, 32, 3), 1)
    y_train, y_test = _labels(40, 7, 2), _labels(60, 7, 3)
    y_test[0] = 6
    name = _npz(tmp_path / "rgb.npz", x_train=x_train, y_train=y_train.astype(np.int32),
                x_test=x_test, y_test=y_test.astype(np.uint8))
    spec = data.get_spec(name)
    assert spec is data.get_spec(name)  # cached: same object, hashable
    hash(spec)
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (7, 3, 32)
    assert spec.eps == 8 / 255 and spec.heldout == 12 and spec.default_arch == "preact-resnet18"
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    x, y = data.load_split(name, "train")
    _check_tensors(x, y, (40, 3, 32, 32))
    assert torch.equal(x, torch.from_numpy(x_train.transpose(0, 3, 1, 2).astype(np.float32)) / 255)
    assert y.tolist() == y_train.tolist()
    assert data.split_size(name, "test") == 48 and data.split_size(name, "heldout") == 12


def test_npz_float_nchw(tmp_path):
    rng = np.random.RandomState(0)
    x_train = rng.rand(30, 1, 12, 12).astype(np.float32)
    x_test = rng.rand(10, 1, 12, 12)  # float64 is fine too
    name = _npz(tmp_path / "grey.npz", x_train=x_train, y_train=np.arange(30) % 3,
                x_test=x_test, y_test=np.arange(10) % 3)
    spec = data.get_spec(name)
    assert (spec.num_classes, spec.in_channels, spec.image_size, spec.heldout) == (3, 1, 12, 2)
    assert spec.default_arch == "small-cnn"
    x, y = data.load_split(name, "train", 5)
    _check_tensors(x, y, (5, 1, 12, 12))
    assert torch.equal(x, torch.from_numpy(x_train[:5]))
    xh, _ = data.load_split(name, "heldout")
    assert torch.allclose(xh, torch.from_numpy(x_test[-2:]).float())


def _good_arrays():
    return dict(x_train=_images(10, (8, 8, 3), 0), y_train=np.arange(10) % 2,
                x_test=_images(10, (8, 8, 3), 1), y_test=np.arange(10) % 2)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(y_test=None), "lacks array.*y_test"),
        (dict(y_train=np.arange(10.0)), "labels must be integers"),
        (dict(y_train=np.arange(9)), "expected 10 labels"),
        (dict(y_train=-np.arange(10)), ">= 0"),
        (dict(x_train=np.zeros((10, 8, 8, 3), np.int16)), "uint8 NHWC"),
        (dict(x_train=np.zeros((10, 3, 8, 8), np.uint8)), "square"),
        (dict(x_train=np.full((10, 3, 8, 8), 1.5, np.float32)), r"\[0, 1\]"),
        (dict(x_train=np.full((10, 3, 8, 8), np.nan, np.float32)), r"\[0, 1\]"),
        (dict(x_test=_images(10, (8, 8, 1), 0)), "CxHxW"),
        (dict(x_test=_images(0, (8, 8, 3), 0), y_test=np.arange(0)), "empty"),
    ],
)
def test_npz_errors(tmp_path, change, match):
    arrays = {**_good_arrays(), **change}
    name = _npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError, match=match) as err:
        data.load_split(name, "train")
    assert "\n" not in str(err.value)


def test_npz_unreadable(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.get_spec(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        data.get_spec(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(DataError, match="single array"):
        data.get_spec(f"npz:{tmp_path / 'single.npy'}")
    arrays = {**_good_arrays(), "y_train": np.array([object()] * 10)}
    np.savez(tmp_path / "objects.npz", **arrays)  # an object array needs pickle: refused
    with pytest.raises(DataError, match="cannot read"):
        data.get_spec(f"npz:{tmp_path / 'objects.npz'}")
