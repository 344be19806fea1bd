"""Model zoos read from local files (nothing is downloaded): RobustBench entries (the name fixes
architecture and, where the entry normalizes in code, normalization; after
`robustbench/model_zoo/cifar10.py`) and MadryLab `robustness`' doubled network."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ZooEntry:
    """How to build one zoo model: flatcli arch and kwargs; mean/std only when the entry
    normalizes in code (otherwise the file's `mu`/`sigma`, or none)."""

    arch: str
    kwargs: dict = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


_TRADES = {"sub_block1": True}  # TRADES-derived entries carry the unused `sub_block1` copy
_WRN_34_20 = {"depth": 34, "widen_factor": 20}

ROBUSTBENCH_CIFAR10_LINF: dict[str, ZooEntry] = {
    "Standard": ZooEntry("wrn-28-10"),
    "Andriushchenko2020Understanding": ZooEntry("preact-resnet18"),
    "Carmon2019Unlabeled": ZooEntry("wrn-28-10", _TRADES),
    "Sehwag2020Hydra": ZooEntry("wrn-28-10", _TRADES),
    "Wang2020Improving": ZooEntry("wrn-28-10", _TRADES),
    "Hendrycks2019Using": ZooEntry("wrn-28-10", {}, (0.5,), (0.5,)),  # forward: 2x - 1
    "Rice2020Overfitting": ZooEntry("wide-resnet", _WRN_34_20),  # mu/sigma stored in the file
    "Zhang2019Theoretically": ZooEntry("wrn-34-10", _TRADES),
    "Huang2020Self": ZooEntry("wrn-34-10", _TRADES),
    "Wong2020Fast": ZooEntry("preact-resnet18"),  # mu/sigma stored in the file
    "Zhang2019You": ZooEntry("wrn-34-10", _TRADES),
    "Zhang2020Attacks": ZooEntry("wrn-34-10", _TRADES),
    "Wu2020Adversarial_extra": ZooEntry("wrn-28-10", _TRADES),
    "Wu2020Adversarial": ZooEntry("wrn-34-10"),
    "Sehwag2021Proxy": ZooEntry("wrn-34-10"),
    "Sehwag2021Proxy_R18": ZooEntry("resnet18"),
    "Sitawarin2020Improving": ZooEntry("wrn-34-10", _TRADES),
    "Chen2020Efficient": ZooEntry("wrn-34-10", _TRADES),  # mu/sigma stored in the file
    "Cui2020Learnable_34_10": ZooEntry("wrn-34-10", _TRADES),
    "Cui2020Learnable_34_20": ZooEntry("wide-resnet", {**_WRN_34_20, **_TRADES}),
    "Zhang2020Geometry": ZooEntry("wrn-28-10", _TRADES),
    "Sridhar2021Robust": ZooEntry("wrn-28-10", _TRADES),
    "Addepalli2021Towards_RN18": ZooEntry("resnet18"),
    "Addepalli2021Towards_WRN34": ZooEntry("wrn-34-10", _TRADES),
    "Chen2021LTD_WRN34_10": ZooEntry("wrn-34-10"),
    "Chen2021LTD_WRN34_20": ZooEntry("wide-resnet", _WRN_34_20),
    "Addepalli2022Efficient_RN18": ZooEntry("resnet18"),
    "Addepalli2022Efficient_WRN_34_10": ZooEntry("wrn-34-10"),
    "Jia2022LAS-AT_34_10": ZooEntry("wrn-34-10"),
}
_ROBUSTBENCH = {("cifar10", "Linf"): ROBUSTBENCH_CIFAR10_LINF}
_MADRY_COPY = ("module.attacker.", "attacker.")


def robustbench_layout(path: Path) -> tuple[str, str, str] | None:
    """(dataset, threat model, entry name) when `path` sits where RobustBench keeps its models,
    `.../<dataset>/<Linf|L2|corruptions>/<Name>.pt`; None otherwise."""
    threat = path.parent.name
    if path.suffix != ".pt" or threat not in ("Linf", "L2", "corruptions"):
        return None
    return path.parent.parent.name, threat, path.stem


def robustbench_entry(path: Path) -> tuple[str, ZooEntry | None] | None:
    """(`robustbench:<dataset>/<threat>/<Name>`, its entry or None when flatcli cannot build
    it) for a file in RobustBench's layout; None for any other file."""
    found = robustbench_layout(path)
    if found is None:
        return None
    dataset, threat, name = found
    return f"robustbench:{dataset}/{threat}/{name}", _ROBUSTBENCH.get((dataset, threat), {}).get(
        name
    )


def served() -> str:
    """The RobustBench entries flatcli builds, for messages."""
    return ", ".join(f"{d}/{t}: {len(table)} entries" for (d, t), table in _ROBUSTBENCH.items())


def drop_madry_attacker(state: dict) -> bool:
    """Remove MadryLab's second copy of the network (`module.attacker.model.*`,
    `module.attacker.normalizer.*`) when the first (`module.model.*`) is there; True if done."""
    copies = [k for k in state if k.startswith(_MADRY_COPY)]
    if not copies:
        return False
    first = {k.replace("attacker.", "", 1) for k in copies}
    if not first <= set(state):
        return False  # only the attacker's copy: keep it, the prefixes are stripped later
    for key in copies:
        del state[key]
    return True
