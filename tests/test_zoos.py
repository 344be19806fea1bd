"""Model zoos from local files, against the originals: each fixture in tests/fixtures/zoo was
made with the original package (robustbench 1.1.1, robustness 1.2.1.post2; make_fixtures.py
there), and holds the file's nesting, key names, shapes and dtypes, the seed of its tensors and
the original model's logits. The tests rebuild the file and compare flatcli's logits."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatcli import checkpoints as ck
from flatcli import models
from flatcli.checkpoints import madry, zoos
from flatcli.errors import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "zoo"
_spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)
ENTRY_LAYOUTS = make.read_case(FIXTURES / "robustbench_entries.json")
CASES = {p.stem: make.read_case(p) for p in sorted(FIXTURES.glob("*.json"))
         if p.name != "robustbench_entries.json"}


def _rebuild(tmp_path: Path, case: dict) -> Path:
    path = tmp_path / case["path"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(make.build(case["layout"], case["seed"]), path)
    return path


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def _params(slow: bool):
    return [pytest.param(name, marks=[pytest.mark.slow] if slow else [])
            for name, case in CASES.items()
            if case["logits"] is not None and case["slow"] == slow]


def _check_logits(tmp_path, name):
    case = CASES[name]
    path = _rebuild(tmp_path, case)
    model, info = ck.load_model(path, **case["load"])
    with torch.no_grad():
        got = model(make.inputs(case["seed"]))
    assert _relative_error(got, torch.tensor(case["logits"])) <= 1e-5, case["original"]
    return info


@pytest.mark.parametrize("name", _params(slow=False))
def test_zoo_files_give_the_original_logits(tmp_path, name):
    info = _check_logits(tmp_path, name)
    case = CASES[name]
    if case["format"] == "robustbench":
        entry = zoos.ROBUSTBENCH[f"cifar10/Linf/{case['entry']}"]
        assert info.meta["zoo"] == f"robustbench:cifar10/Linf/{case['entry']}"
        assert info.arch == entry.arch
        assert ck.normalization_name(info.mean, info.std) == entry.normalize
    if case["format"] == "madrylab":
        assert info.meta["zoo"] == "madrylab-robustness" and info.epoch == 150
        assert ck.normalization_name(info.mean, info.std) != "none"


@pytest.mark.parametrize("name", _params(slow=True))
def test_full_size_robustbench_entries_give_the_original_logits(tmp_path, name):
    _check_logits(tmp_path, name)


def test_fixtures_cover_the_entries_that_need_their_own_handling():
    entries = {c.get("entry") for c in CASES.values()}
    assert {"Carmon2019Unlabeled", "Zhang2019Theoretically", "Rice2020Overfitting",
            "Chen2020Efficient", "Wong2020Fast", "Andriushchenko2020Understanding",
            "Sehwag2021Proxy_R18"} <= entries
    assert {c["format"] for c in CASES.values()} == {"robustbench", "madrylab",
                                                     "robust_overfitting"}


def test_normalizing_entries_are_wrong_without_their_normalization(tmp_path):
    """The check can fail: the same Rice2020Overfitting file without the entry's normalization
    (outside RobustBench's layout) does not give RobustBench's logits."""
    case = CASES["rb_rice2020"]
    path = _rebuild(tmp_path, {**case, "path": "elsewhere/Rice2020Overfitting.pt"})
    model, info = ck.load_model(path, arch="wide-resnet:depth=10,widen_factor=2")
    assert ck.normalization_warning(info, str(path)) is not None
    with torch.no_grad():
        got = model(make.inputs(case["seed"]))
    assert _relative_error(got, torch.tensor(case["logits"])) > 1e-3


def test_both_last_and_best_load_last(tmp_path):
    path = _rebuild(tmp_path, CASES["rb_andriushchenko2020"])
    _, info = ck.load_model(path)
    assert info.meta["wrapper"] == "last"
    assert info.arch_kwargs == {"bn_before_fc": False, "out_shortcut": False}


def test_madrylab_files_are_found_and_a_resnet50_is_refused_by_name(tmp_path):
    _rebuild(tmp_path, CASES["madry_resnet18"])
    refs = ck.discover([tmp_path / "madrylab"])
    assert [r.path.name for r in refs] == ["checkpoint.pt.latest"]
    path = _rebuild(tmp_path, CASES["madry_resnet50"])
    for arch in (None, "resnet18"):
        with pytest.raises(CheckpointError) as err:
            ck.load_model(path, arch=arch)
        message = str(err.value)
        assert "\n" not in message and len(message) < 300
        assert "ResNet-50 (MadryLab robustness): flatcli builds resnet18" in message


def test_madrylab_attacker_copy_is_dropped_and_the_architecture_named():
    state = make.build(CASES["madry_resnet18"]["layout"], 0)["model"]
    assert madry.is_madry(state) and madry.architecture(state) == ("ResNet-18", 2)
    madry.drop_attacker(state)
    assert not any("attacker" in k for k in state)
    assert "module.normalizer.new_mean" in state


def test_unbuilt_robustbench_entries_are_refused_by_entry_and_architecture(tmp_path):
    state = make.build(CASES["rb_wong2020"]["layout"], 0)
    for name, needs in (("Engstrom2019Robustness", "needs ResNet-50"),
                        ("Gowal2020Uncovering_70_16", "needs DeepMind's WideResNet-70-16"),
                        ("Made2099Up", "is not an entry flatcli builds")):
        path = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state if name != "Made2099Up" else {}, path)  # the name decides first
        with pytest.raises(CheckpointError) as err:
            ck.load_model(path)
        assert f"robustbench:cifar10/Linf/{name} {needs}" in str(err.value)
        assert "\n" not in str(err.value)


def test_plain_state_dicts_without_normalization_get_a_warning(tmp_path):
    net = models.build("preact-resnet18", width=4).net
    path = tmp_path / "run" / "model_3.pth"
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    _, info = ck.load_model(path, arch="preact-resnet18:width=4")
    line = ck.normalization_warning(info, str(path))
    assert "--normalize cifar10" in line and "--normalize none" in line and "\n" not in line
    for normalize in ("none", "cifar10"):
        _, info = ck.load_model(path, arch="preact-resnet18:width=4", normalize=normalize)
        assert ck.normalization_warning(info, str(path)) is None
        assert ck.normalization_name(info.mean, info.std) == normalize
    grey = tmp_path / "grey" / "model_3.pth"
    grey.parent.mkdir()
    torch.save(models.build("preact-resnet18", 10, 1, width=4).net.state_dict(), grey)
    _, info = ck.load_model(grey, arch="preact-resnet18:width=4", dataset="digits")
    assert ck.normalization_warning(info, str(grey)) is None  # its checkpoints do not normalize


def test_every_listed_entry_has_robustbench_s_names_shapes_and_dtypes():
    """Each entry built by flatcli from the table holds exactly the tensors RobustBench's own
    constructor holds (at full size, on the meta device: nothing is allocated)."""
    assert set(ENTRY_LAYOUTS) == set(zoos.ROBUSTBENCH)
    built: dict = {}
    for key, entry in zoos.ROBUSTBENCH.items():
        how = (entry.arch, tuple(sorted(entry.kwargs.items())))
        if how not in built:
            with torch.device("meta"):
                state = models.build(entry.arch, 10, 3, **entry.kwargs).net.state_dict()
            built[how] = (len(state), make.keys_digest(state))
        assert built[how] == (ENTRY_LAYOUTS[key]["keys"], ENTRY_LAYOUTS[key]["digest"]), key


def test_every_robustbench_entry_is_buildable_and_every_other_one_named():
    for key, entry in zoos.ROBUSTBENCH.items():
        assert entry.arch in models.ARCHITECTURES, key
        assert set(entry.kwargs) <= set(models.arch_defaults(entry.arch)), key
        ck.parse_normalize(entry.normalize)
    assert not set(zoos.entry_names()) & set(zoos.UNBUILT)
    assert len(zoos.ROBUSTBENCH) + len(zoos.UNBUILT) == 76  # robustbench 1.1.1's cifar10 Linf


def test_readme_docs_and_help_read_the_entry_table():
    readme = " ".join((ROOT / "README.md").read_text().split())
    names = ", ".join(f"`{n}`" for n in zoos.entry_names())
    assert names in readme
    assert zoos.markdown_table() in (ROOT / "docs" / "zoos.md").read_text()
    env = {**os.environ, "COLUMNS": "300", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "flatcli", "attack", "--help"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert zoos.help_line() in " ".join(out.replace("│", " ").split())


def test_the_missing_normalization_line_reaches_on_note_and_rows_record_it(tmp_path, capsys):
    from types import SimpleNamespace

    from flatcli import evaluation
    from flatcli.cli import main

    net = models.build("preact-resnet18", width=4).net
    path = tmp_path / "plain" / "model_3.pth"
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    ref = ck.discover([path.parent])[0]
    for normalize, expected in ((None, 1), ("none", 0)):
        config = SimpleNamespace(arch="preact-resnet18:width=4", normalize=normalize,
                                 dataset="cifar10")
        notes = []
        evaluation.SharedModels(notes.append).load(ref, config, torch.device("cpu"))
        assert len(notes) == expected
        assert all("--normalize cifar10 or --normalize none" in n for n in notes)
    own = models.build("tiny", 10, 1)
    ck.save_checkpoint(tmp_path / "run" / "epoch_0001.safetensors", own, "tiny", {}, "digits", 1)
    with pytest.raises(SystemExit):
        main(["attack", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--attacks",
              "pgd3x2", "--n-examples", "8", "-q", "-f", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["input_normalization"] for r in rows] == ["none"]
