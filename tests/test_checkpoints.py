"""Checkpoint discovery, flatcli's own format, foreign formats and unsafe input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from flatcli import checkpoints as ck
from flatcli import models
from flatcli.data import DATASETS
from flatcli.errors import CheckpointError, UsageError


def _model(arch: str = "tiny", seed: int = 0, mean=(0.5,), std=(0.25,), **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = models.build(arch, 10, 1, mean, std, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so that buffers are checked too
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(7)
    return model


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text
    return text


# ----------------------------------------------------------------------------------- own format


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_own_format_round_trip(tmp_path, suffix):
    model = _model("small-cnn").train()
    path = ck.save_checkpoint(tmp_path / "run1" / f"epoch_0007{suffix}", model, "small-cnn", {},
                              "digits", 7, {"lr": 0.05, "eps": 0.1, "note": ("a", Path("x"))})
    assert path == tmp_path / "run1" / f"epoch_0007{suffix}"
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, "epoch_0007.json"])

    loaded, info = ck.load_model(path)
    assert not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    _assert_same_state(model, loaded)
    assert (info.arch, info.dataset, info.epoch) == ("small-cnn", "digits", 7)
    assert info.format == "flatcli"
    assert info.mean == (0.5,) and info.std == (0.25,) and info.arch_kwargs == {}
    assert info.meta["config"] == {"lr": 0.05, "eps": 0.1, "note": ["a", "x"]}

    # The sidecar is plain JSON.
    side = json.loads((path.parent / "epoch_0007.json").read_text())
    assert side["format"] == "flatcli" and side["format_version"] == 1
    for key in ("arch", "arch_kwargs", "dataset", "mean", "std", "epoch", "config"):
        assert key in side
    assert "flatcli_version" in side
    assert side["arch"] == "small-cnn" and side["epoch"] == 7 and side["std"] == [0.25]
    assert ck.read_sidecar(path) == side == ck.read_sidecar(path.parent / "epoch_0007.json")

    # Self-describing without the sidecar too.
    (path.parent / "epoch_0007.json").unlink()
    if suffix == ".safetensors":  # the header carries the same metadata, readable without torch
        assert ck.read_sidecar(path) == side
    again, info2 = ck.load_model(path)
    _assert_same_state(model, again)
    assert info2.format == "flatcli" and info2.epoch == 7


def test_own_format_arch_kwargs_and_directory_target(tmp_path):
    model = _model("tiny", width=6)
    path = ck.save_checkpoint(tmp_path, model, "tiny", {"width": 6}, "digits", 12)
    assert path.name == ck.checkpoint_name(12) == "epoch_0012.safetensors"
    loaded, info = ck.load_model(path, dataset="digits", arch="tiny", arch_kwargs={"width": 6})
    assert info.arch_kwargs == {"width": 6}
    _assert_same_state(model, loaded)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))


def test_own_format_explicit_options_must_agree(tmp_path):
    path = ck.save_checkpoint(tmp_path / "epoch_0001.safetensors", _model("tiny"), "tiny", {},
                              "digits", 1)
    with pytest.raises(CheckpointError) as err:
        ck.load_model(path, arch="small-cnn")
    assert "tiny" in _one_line(err) and "small-cnn" in str(err.value)
    with pytest.raises(CheckpointError):
        ck.load_model(path, arch_kwargs={"width": 8})
    with pytest.raises(CheckpointError):
        ck.load_model(path, normalize="none")
    ck.load_model(path, normalize="0.5,0.25")  # agrees with the stored normalization


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = _model()
    for epoch in (1, 2):
        ck.save_checkpoint(tmp_path / ck.checkpoint_name(epoch), model, "tiny", {}, "digits", epoch)
    ck.save_checkpoint(tmp_path / ck.checkpoint_name(2), model, "tiny", {}, "digits", 2)  # again
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch_0001.json", "epoch_0001.safetensors", "epoch_0002.json",
                     "epoch_0002.safetensors"]
    with pytest.raises(UsageError):
        ck.save_checkpoint(tmp_path / "model.npz", model, "tiny", {}, "digits", 1)


def test_module_works_without_torch_for_discovery(tmp_path):
    ck.save_checkpoint(tmp_path / "r" / "epoch_0003.safetensors", _model(), "tiny", {}, "digits", 3)
    code = (
        "import sys; from flatcli import checkpoints as ck; "
        f"refs = ck.discover([{str(tmp_path)!r}]); "
        "assert [(r.run, r.epoch) for r in refs] == [('r', 3)], refs; "
        "assert ck.read_sidecar(refs[0].path)['epoch'] == 3; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# ------------------------------------------------------------------------------- foreign formats


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "net", "model_state_dict"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "model.", "module.model."])
def test_foreign_wrappers_and_prefixes(tmp_path, wrapper, prefix):
    model = _model("tiny", seed=1)
    state = {prefix + k: v for k, v in model.net.state_dict().items()}
    obj = state if wrapper is None else {wrapper: state, "epoch": 3, "optimizer": {"lr": 0.1}}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(obj, path)
    loaded, info = ck.load_model(path, arch="tiny", dataset="digits")
    _assert_same_state(model.net, loaded.net)
    assert info.format == "foreign" and info.arch == "tiny" and info.dataset == "digits"
    assert info.mean == (0.0,) and info.std == (1.0,)  # no normalization given: identity
    assert info.epoch == (None if wrapper is None else 3)
    assert info.meta["wrapper"] == wrapper and info.meta["prefix"] == (prefix or None)
    assert not loaded.training


def test_foreign_common_extras_load(tmp_path):
    """numpy scalars/arrays and argparse.Namespace beside the weights are plain data."""
    import argparse

    import numpy as np

    model = _model("tiny")
    obj = {"state_dict": model.net.state_dict(), "best_prec1": np.float64(53.4),
           "curve": np.arange(3), "args": argparse.Namespace(lr=0.1), "epoch": 106}
    path = tmp_path / "model_best.pth.tar"
    torch.save(obj, path)
    loaded, info = ck.load_model(path, arch="tiny", dataset="digits")
    _assert_same_state(model.net, loaded.net)
    assert info.epoch == 106 and info.meta["extras"]["best_prec1"] == pytest.approx(53.4)


def test_foreign_safetensors_legacy_torch_and_fp16(tmp_path):
    from safetensors.torch import save_file

    model = _model("small-cnn")
    state = model.net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model_5.safetensors"))
    torch.save(state, tmp_path / "model_6.t7", _use_new_zipfile_serialization=False)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(half, tmp_path / "model_7.pt")
    for name in ("model_5.safetensors", "model_6.t7"):
        loaded, info = ck.load_model(tmp_path / name, dataset="digits")  # digits' default arch
        assert info.arch == "small-cnn" and info.format == "foreign"
        _assert_same_state(model.net, loaded.net)
    loaded, _ = ck.load_model(tmp_path / "model_7.pt", arch="small-cnn", dataset="digits")
    assert all(v.dtype == torch.float32 for v in loaded.parameters())


def test_foreign_old_checkpoint_without_num_batches_tracked(tmp_path):
    model = _model("tiny")
    state = {k: v for k, v in model.net.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    loaded, _ = ck.load_model(tmp_path / "old.pth", arch="tiny", dataset="digits")
    assert torch.equal(loaded.net[1].running_mean, model.net[1].running_mean)


@pytest.mark.parametrize("names", [("mu", "sigma"), ("mean", "std")])
def test_foreign_normalization_tensors(tmp_path, names):
    model = _model("tiny")
    state = {f"module.{k}": v for k, v in model.net.state_dict().items()}
    state[names[0]] = torch.tensor([0.3]).view(1, 1, 1, 1)
    state[names[1]] = torch.tensor([0.2]).view(1, 1, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "model_1.pth")
    loaded, info = ck.load_model(tmp_path / "model_1.pth", arch="tiny", dataset="digits")
    assert info.mean == pytest.approx((0.3,)) and info.std == pytest.approx((0.2,))
    assert loaded.normalize.mean.item() == pytest.approx(0.3)
    assert loaded.normalize.std.item() == pytest.approx(0.2)
    assert "file" in info.meta["normalization"]
    # An explicit --normalize wins over the stored tensors.
    loaded, info = ck.load_model(tmp_path / "model_1.pth", arch="tiny", dataset="digits",
                                 normalize="0.1,0.5")
    assert info.mean == (0.1,) and info.std == (0.5,)
    assert loaded.normalize.std.item() == pytest.approx(0.5)


def test_foreign_normalize_option_and_channel_check(tmp_path):
    model = _model("tiny")
    torch.save(model.net.state_dict(), tmp_path / "m.pt")
    _, info = ck.load_model(tmp_path / "m.pt", arch="tiny", dataset="digits", normalize="0.4,0.3")
    assert (info.mean, info.std) == ((0.4,), (0.3,))
    _, info = ck.load_model(tmp_path / "m.pt", arch="tiny", dataset="digits", normalize="none")
    assert (info.mean, info.std) == ((0.0,), (1.0,))
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "m.pt", arch="tiny", dataset="digits",
                      normalize="0.1,0.2,0.3,0.4,0.5,0.6")
    assert "3 values" in _one_line(err)


def test_foreign_whole_classifier_state_dict(tmp_path):
    model = _model("tiny", mean=(0.2,), std=(0.7,))
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "m.pth")
    loaded, info = ck.load_model(tmp_path / "m.pth", arch="tiny", dataset="digits")
    _assert_same_state(model, loaded)
    assert info.meta["target"] == "model" and info.mean == pytest.approx((0.2,))


def test_foreign_defaults_to_cifar10(tmp_path):
    spec = DATASETS["cifar10"]
    model = models.build("tiny", spec.num_classes, spec.in_channels)
    torch.save(model.net.state_dict(), tmp_path / "m.pt")
    _, info = ck.load_model(tmp_path / "m.pt", arch="tiny")
    assert info.dataset == "cifar10" and info.mean == (0.0,) * spec.in_channels


# --------------------------------------------------------------------------------- --normalize


def test_parse_normalize():
    assert ck.parse_normalize(None) is None
    assert ck.parse_normalize("none") == ((0.0,), (1.0,))
    assert ck.parse_normalize("0.5,0.25") == ((0.5,), (0.25,))
    assert ck.parse_normalize(" 0.1, 0.2 ,0.3,0.4,0.5,0.6") == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert ck.parse_normalize("0.1,0.2,0.3;0.4,0.5,0.6") == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    for name, spec in DATASETS.items():
        assert ck.parse_normalize(name) == (tuple(spec.mean), tuple(spec.std))
        assert ck.parse_normalize(name.upper()) == (tuple(spec.mean), tuple(spec.std))


@pytest.mark.parametrize("bad", ["", "abc", "0.1,0.2,0.3", "0.5,0", "0.5,-1", "0.1,nan", "1;2,3",
                                 "imagenet21k"])
def test_parse_normalize_rejects(bad):
    with pytest.raises(UsageError) as err:
        ck.parse_normalize(bad)
    _one_line(err)


# ----------------------------------------------------------------------------------- bad input


def test_wrong_arch_gives_one_line_key_diff(tmp_path):
    torch.save(_model("small-cnn").net.state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "ckpt.pt", arch="tiny", dataset="digits")
    text = _one_line(err)
    assert "ckpt.pt" in text and "does not match arch 'tiny'" in text
    assert "missing" in text and "unexpected" in text
    assert "net.0.weight" in text  # a missing name, as in the model
    assert "classifier.1.weight" in text  # an unexpected name, as stored in the file
    assert text.count(",") < 20  # at most a few names per list


def test_wrong_width_gives_one_line_shape_diff(tmp_path):
    torch.save(_model("tiny", width=4).net.state_dict(), tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "ckpt.pt", arch="tiny", dataset="digits", arch_kwargs={"width": 8})
    assert "shape" in _one_line(err) and "0.weight" in str(err.value)


def test_missing_file_and_not_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "nope.pt", arch="tiny", dataset="digits")
    assert "cannot read" in _one_line(err)
    torch.save({"epoch": 3, "acc": 0.5}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "meta.pt", arch="tiny", dataset="digits")
    assert "no weights" in _one_line(err)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError):
        ck.load_model(tmp_path / "list.pt", arch="tiny", dataset="digits")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".t7"])
@pytest.mark.parametrize("keep", [0.5, 0.02, 0.0])
def test_truncated_checkpoint(tmp_path, suffix, keep):
    model = _model("small-cnn")
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        ck.save_checkpoint(full, model, "small-cnn", {}, "digits", 1)
    else:
        torch.save(model.net.state_dict(), full, _use_new_zipfile_serialization=suffix == ".pt")
    data = full.read_bytes()
    cut = tmp_path / f"epoch_0001{suffix}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as err:
        ck.load_model(cut, arch="small-cnn", dataset="digits")
    assert _one_line(err).startswith("cannot read")


@pytest.mark.parametrize("content", [b"this is not a checkpoint\n", b"", b"PK\x03\x04garbage",
                                     pickle.dumps({"a": 1}, protocol=2),
                                     pickle.dumps({"a": 1}, protocol=4)])
def test_garbage_file(tmp_path, content):
    (tmp_path / "model_3.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "model_3.pt", arch="tiny", dataset="digits")
    assert _one_line(err).startswith("cannot read")


def test_pickle_protocol_4_torch_file_is_explained(tmp_path):
    torch.save(_model("tiny").net.state_dict(), tmp_path / "m.pt", pickle_protocol=4)
    with pytest.raises(CheckpointError) as err:
        ck.load_model(tmp_path / "m.pt", arch="tiny", dataset="digits")
    assert "protocol" in _one_line(err)


class _Payload:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_payload_is_live_when_unpickled(tmp_path):
    """Sanity check of the fixture: a plain unpickle really runs the payload."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("how", ["pickle", "pickle0", "torch", "torch-legacy", "torch-wrapped"])
def test_code_payload_is_refused_never_unpickled(tmp_path, how):
    marker = tmp_path / "MARKER"
    payload = _Payload(marker)
    path = tmp_path / "model_1.pth"
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload))
    elif how == "pickle0":
        path.write_bytes(pickle.dumps(payload, protocol=0))
    elif how == "torch":
        torch.save(payload, path)
    elif how == "torch-legacy":
        torch.save({"x": payload}, path, _use_new_zipfile_serialization=False)
    else:
        torch.save({"state_dict": _model("tiny").net.state_dict(), "args": payload}, path)
    with pytest.raises(CheckpointError) as err:
        ck.load_model(path, arch="tiny", dataset="digits")
    text = _one_line(err)
    assert text.startswith("refused:"), text
    assert "weights-only load does not allow" in text and "never unpickled" in text
    assert "system" in text
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_whole_model_pickle_is_refused(tmp_path, legacy):
    torch.save(nn.Linear(2, 2), tmp_path / "lin.pt", _use_new_zipfile_serialization=not legacy)
    torch.save(_model("tiny"), tmp_path / "clf.pt", _use_new_zipfile_serialization=not legacy)
    for name in ("lin.pt", "clf.pt"):
        with pytest.raises(CheckpointError) as err:
            ck.load_model(tmp_path / name, arch="tiny", dataset="digits")
        text = _one_line(err)
        assert text.startswith("refused:") and "never unpickled" in text


def test_nan_weights_load(tmp_path):
    model = _model("tiny")
    with torch.no_grad():
        model.net[0].weight.fill_(float("nan"))
        model.net[5].bias[0] = float("inf")
    own = ck.save_checkpoint(tmp_path / "own" / "epoch_0001.safetensors", model, "tiny", {},
                             "digits", 1)
    torch.save(model.net.state_dict(), tmp_path / "model_1.pth")
    for path in (own, tmp_path / "model_1.pth"):
        loaded, _ = ck.load_model(path, arch="tiny", dataset="digits")
        assert torch.isnan(loaded.net[0].weight).all()
        assert torch.isinf(loaded.net[5].bias[0])


# ----------------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    ("name", "epoch"),
    [
        ("model_5.pth", 5),
        ("model-wideres-epoch76.pt", 76),
        ("ours-model-epoch100.pt", 100),
        ("12_checkpoint.pt", 12),
        ("classifier.pth.tar.30", 30),
        ("model_7.t7", 7),
        ("epoch10", 10),
        ("epoch_0007.safetensors", 7),
        ("ckpt_epoch5.pt", 5),
        ("checkpoint-12.pt", 12),
        ("model_e10.pt", 10),
        ("ep_3.ckpt", 3),
        ("10.pt", 10),
        ("resnet18_e4.pth", 4),
        ("model_best.pth", None),
        ("final.pt", None),
        ("checkpoint.pth.tar", None),
        ("model.safetensors", None),
        ("wrn-28-10.pt", None),
        ("resnet-18.pth", None),
        ("resnet18.pt", None),
        ("cifar10_model.pt", None),
        ("pytorch_model.bin", None),
    ],
)
def test_epoch_from_name(name, epoch):
    assert ck.epoch_from_name(name) == epoch


def _touch_torch(path: Path, value: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.full((2,), value)}, path)
    return path


def test_discover_nested_sorted_and_filtered(tmp_path):
    root = tmp_path / "exp"
    for epoch in (10, 2, 1):
        _touch_torch(root / "runB" / f"model_{epoch}.pth")
        _touch_torch(root / "runB" / f"opt_{epoch}.pth")  # optimizer state, not a model
    _touch_torch(root / "runB" / "model_best.pth")
    ck.save_checkpoint(root / "deep" / "runA" / "epoch_0003.safetensors", _model(), "tiny", {},
                       "digits", 3)
    ck.save_checkpoint(root / "deep" / "runA" / "last.safetensors", _model(), "tiny", {},
                       "digits", 11)  # own metadata gives the epoch, not the name
    _touch_torch(root / "runC" / "checkpoint-500" / "pytorch_model.bin")
    _touch_torch(root / "runC" / "checkpoint-40" / "pytorch_model.bin")
    _touch_torch(root / "runC" / "epoch9")  # extension-less torch file
    (root / "runC" / "epoch8").write_text("not a checkpoint")  # extension-less, not torch
    (root / "runB" / "run.json").write_text("{}")
    (root / "runB" / "attack.parquet").write_bytes(b"PAR1")
    _touch_torch(root / "runB" / ".model_99.pth.tmp")
    _touch_torch(root / ".hidden" / "model_1.pth")
    _touch_torch(root / "runB" / ".git" / "model_1.pth")

    refs = ck.discover([root])
    got = [(r.run, r.epoch, r.path.name) for r in refs]
    assert got == [
        ("runA", 3, "epoch_0003.safetensors"),
        ("runA", 11, "last.safetensors"),
        ("runB", 1, "model_1.pth"),
        ("runB", 2, "model_2.pth"),
        ("runB", 10, "model_10.pth"),
        ("runB", None, "model_best.pth"),
        ("runC", 9, "epoch9"),
        ("runC", 40, "pytorch_model.bin"),
        ("runC", 500, "pytorch_model.bin"),
    ]
    keys = [r.name_key for r in refs]
    assert len(set(keys)) == len(keys)
    assert keys[0] == "runA__e0003" and keys[5] == "runB__model_best"
    assert refs[0].key == f"runA__e0003__{ck.content_digest(refs[0].path)[:8]}"
    assert all(k.replace("_", "").replace("-", "").replace(".", "").isalnum() for k in keys)


def test_discover_files_and_duplicates(tmp_path):
    a = _touch_torch(tmp_path / "r" / "model_2.pt")
    b = _touch_torch(tmp_path / "r" / "model_1.pt")
    refs = ck.discover([str(a), b, tmp_path / "r"])  # the same files twice
    assert [(r.run, r.epoch) for r in refs] == [("r", 1), ("r", 2)]
    assert isinstance(refs[0].path, Path)


def test_discover_errors(tmp_path):
    with pytest.raises(UsageError) as err:
        ck.discover([tmp_path / "missing"])
    assert "missing" in _one_line(err)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as err:
        ck.discover([tmp_path / "empty"])
    assert "empty" in _one_line(err)
    junk = tmp_path / "junk"
    (junk / "sub").mkdir(parents=True)
    (junk / "notes.txt").write_text("hi")
    (junk / "sub" / "run.json").write_text("{}")
    (junk / "table.parquet").write_bytes(b"PAR1")
    with pytest.raises(UsageError) as err:
        ck.discover([junk])
    assert "no checkpoint files" in _one_line(err)
    with pytest.raises(UsageError):
        ck.discover([])
    with pytest.raises(UsageError):
        ck.discover([junk / "notes.txt"])


def test_discover_keys_unique_for_duplicate_run_names(tmp_path):
    for group in ("a", "b"):
        for epoch in (1, 2):
            _touch_torch(tmp_path / group / "seed0" / "run1" / f"model_{epoch}.pt")
    _touch_torch(tmp_path / "c" / "run2" / "model_1.pt")
    _touch_torch(tmp_path / "c" / "run2" / "final.pt")
    _touch_torch(tmp_path / "d" / "run2" / "final.pt")
    refs = ck.discover([tmp_path])
    keys = [r.key for r in refs]
    assert len(set(keys)) == len(keys) == 7
    runs = {r.run for r in refs}
    assert {"a-seed0-run1", "b-seed0-run1", "c-run2", "d-run2"} == runs
    # Two files of one run with the same epoch (a copy in another format).
    for name in ("model_4.pt", "model_4.pth", "model_5.pt", "model_6.pt"):
        _touch_torch(tmp_path / "e" / "run3" / name)
    refs = ck.discover([tmp_path / "e"])
    assert len({r.key for r in refs}) == 4
    assert [(r.run, r.epoch) for r in refs] == [
        ("run3-model.pt", 4), ("run3-model.pt", 5), ("run3-model.pt", 6), ("run3-model.pth", 4)
    ]


def test_checkpoint_ref_key():
    assert ck.CheckpointRef("run 1", 7, Path("x/model_7.pt")).name_key == "run_1__e0007"
    assert ck.CheckpointRef("r", None, Path("x/model_best.pth")).name_key == "r__model_best"
    assert ck.CheckpointRef(".r", None, Path("x/classifier.pth.tar")).name_key == "_r__classifier"
    assert ck.CheckpointRef("r", 7, Path("x/missing.pt")).key == "r__e0007__nodigest"
    assert ck.CheckpointRef("r", 7, Path("x"), digest="0123456789ab").key == "r__e0007__01234567"
