"""Model zoos from local files: RobustBench's layout and entries, MadryLab `robustness` files."""

from pathlib import Path

import pytest
import torch
from torch import nn

from flatcli import checkpoints as ck
from flatcli import models
from flatcli.checkpoints import zoos
from flatcli.errors import CheckpointError

CIFAR_MU, CIFAR_SIGMA = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _net(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    net = models.build(arch, 10, 3, **kwargs).net
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
    return net


def _same_weights(model, net: nn.Module) -> None:
    for key, value in net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key


def _zoo_file(root: Path, name: str) -> Path:
    path = root / "models" / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_robustbench_entry_sets_arch_and_the_files_mu_sigma(tmp_path):
    net = _net("preact-resnet18", width=8)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state["module.mu"] = torch.tensor(CIFAR_MU).view(1, 3, 1, 1)
    state["module.sigma"] = torch.tensor(CIFAR_SIGMA).view(1, 3, 1, 1)
    path = _zoo_file(tmp_path, "Wong2020Fast")
    torch.save({"state_dict": state}, path)
    model, info = ck.load_model(path, arch_kwargs={"width": 8})  # arch from the entry
    assert (info.arch, info.dataset, info.meta["zoo"]) == (
        "preact-resnet18", "cifar10", "robustbench:cifar10/Linf/Wong2020Fast"
    )
    assert info.mean == pytest.approx(CIFAR_MU) and info.std == pytest.approx(CIFAR_SIGMA)
    _same_weights(model, net)
    x = torch.rand(2, 3, 32, 32)
    mu, sigma = state["module.mu"], state["module.sigma"]
    torch.testing.assert_close(model(x), net.eval()((x - mu) / sigma))


def test_robustbench_entry_normalizing_in_code_and_unknown_entries(tmp_path):
    net = _net("wide-resnet", depth=10, widen_factor=1)
    path = _zoo_file(tmp_path, "Hendrycks2019Using")  # forward: 2x - 1, nothing stored
    torch.save(net.state_dict(), path)
    model, info = ck.load_model(path, arch="wide-resnet:depth=10,widen_factor=1")
    assert info.mean == (0.5,) * 3 and info.std == (0.5,) * 3
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net.eval()(2 * x - 1))
    resnet50 = _zoo_file(tmp_path, "Engstrom2019Robustness")
    torch.save(net.state_dict(), resnet50)
    with pytest.raises(CheckpointError, match="Engstrom2019Robustness is not an entry flatcli"):
        ck.load_model(resnet50)


def test_every_robustbench_entry_names_a_buildable_architecture():
    for name, entry in zoos.ROBUSTBENCH_CIFAR10_LINF.items():
        assert entry.arch in models.ARCHITECTURES, name
        assert set(entry.kwargs) <= set(models.arch_defaults(entry.arch)), name
        assert (entry.mean is None) == (entry.std is None), name


def _madry_state(net: nn.Module, mean, std) -> dict:
    """MadryLab `robustness`' AttackerModel state: the net twice, the normalizer twice."""
    state = {}
    for owner in ("module.", "module.attacker."):
        state[f"{owner}normalizer.new_mean"] = torch.tensor(mean).view(3, 1, 1)
        state[f"{owner}normalizer.new_std"] = torch.tensor(std).view(3, 1, 1)
        state.update({f"{owner}model.{k}": v for k, v in net.state_dict().items()})
    return state


def test_madrylab_robustness_checkpoints_load_with_their_normalizer(tmp_path):
    net = _net("resnet18", width=8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    run = tmp_path / "madry"
    run.mkdir()
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    for name, epoch in (("checkpoint.pt.best", 61), ("checkpoint.pt.latest", 149)):
        torch.save({"model": _madry_state(net, mean, std), "optimizer": optimizer,
                    "schedule": None, "epoch": epoch}, run / name)
    refs = ck.discover([run])
    assert [r.path.name for r in refs] == ["checkpoint.pt.best", "checkpoint.pt.latest"]
    assert len({r.key for r in refs}) == 2
    model, info = ck.load_model(refs[0].path, arch="resnet18:width=8")
    assert info.meta["zoo"] == "madrylab-robustness" and info.epoch == 61
    assert info.mean == pytest.approx(mean) and info.std == pytest.approx(std)
    _same_weights(model, net)
    x = torch.rand(2, 3, 32, 32)
    norm = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net.eval()(norm))
