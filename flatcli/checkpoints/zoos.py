"""RobustBench entries read from local files (nothing is downloaded): `ROBUSTBENCH`, the one table
of the entries flatcli builds (architecture, arguments, normalization; after RobustBench 1.1.1's
`model_zoo/cifar10.py`), and `UNBUILT`, what each other CIFAR-10 L-inf entry would need. The
README, docs/zoos.md and `--arch`'s help are read from these tables (tests/test_zoos.py checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ZooEntry:
    """How to build one entry: flatcli arch and kwargs, and the input normalization RobustBench's
    class applies in code (a `--normalize` value; "none" when the class has none). `source` is
    the constructor RobustBench calls, for the docs."""

    arch: str
    kwargs: dict = field(default_factory=dict)
    normalize: str = "none"
    source: str = ""


def _wrn(depth: int, widen: int, sub_block1: bool = False, normalize: str = "none",
         cls: str = "WideResNet") -> ZooEntry:
    kwargs = {"depth": depth, "widen_factor": widen}
    if sub_block1:  # TRADES-derived entries carry an unused copy of block1
        kwargs["sub_block1"] = True
    args = f"depth={depth}, widen_factor={widen}" + (", sub_block1=True" if sub_block1 else "")
    return ZooEntry("wide-resnet", kwargs, normalize, f"{cls}({args})")


_PREACT = ZooEntry("preact-resnet18", {"bn_before_fc": False, "out_shortcut": False}, "none",
                   "PreActResNet(PreActBlock, [2, 2, 2, 2])")
_R18 = ZooEntry("resnet18", {}, "none", "ResNet18()")

ROBUSTBENCH: dict[str, ZooEntry] = {  # "<dataset>/<threat>/<entry>" -> how flatcli builds it
    "cifar10/Linf/Andriushchenko2020Understanding": _PREACT,
    "cifar10/Linf/Carmon2019Unlabeled": _wrn(28, 10, True),
    "cifar10/Linf/Sehwag2020Hydra": _wrn(28, 10, True),
    "cifar10/Linf/Wang2020Improving": _wrn(28, 10, True),
    "cifar10/Linf/Hendrycks2019Using": _wrn(28, 10, False, "0.5,0.5", "Hendrycks2019UsingNet"),
    "cifar10/Linf/Rice2020Overfitting": _wrn(34, 20, False, "cifar10", "Rice2020OverfittingNet"),
    "cifar10/Linf/Zhang2019Theoretically": _wrn(34, 10, True),
    "cifar10/Linf/Huang2020Self": _wrn(34, 10, True),
    "cifar10/Linf/Wong2020Fast": ZooEntry(_PREACT.arch, _PREACT.kwargs, "cifar10",
                                          "Wong2020FastNet()"),
    "cifar10/Linf/Zhang2019You": _wrn(34, 10, True),
    "cifar10/Linf/Zhang2020Attacks": _wrn(34, 10, True),
    "cifar10/Linf/Wu2020Adversarial_extra": _wrn(28, 10, True),
    "cifar10/Linf/Wu2020Adversarial": _wrn(34, 10),
    "cifar10/Linf/Sehwag2021Proxy": _wrn(34, 10),
    "cifar10/Linf/Sehwag2021Proxy_R18": _R18,
    "cifar10/Linf/Sitawarin2020Improving": _wrn(34, 10, True),
    "cifar10/Linf/Chen2020Efficient": _wrn(34, 10, True, "cifar10", "Chen2020EfficientNet"),
    "cifar10/Linf/Cui2020Learnable_34_20": _wrn(34, 20, True),
    "cifar10/Linf/Cui2020Learnable_34_10": _wrn(34, 10, True),
    "cifar10/Linf/Zhang2020Geometry": _wrn(28, 10, True),
    "cifar10/Linf/Sridhar2021Robust": _wrn(28, 10, True),
    "cifar10/Linf/Sridhar2021Robust_34_15": _wrn(34, 15, True),
    "cifar10/Linf/Addepalli2021Towards_RN18": _R18,
    "cifar10/Linf/Addepalli2021Towards_WRN34": _wrn(34, 10, True),
    "cifar10/Linf/Chen2021LTD_WRN34_10": _wrn(34, 10),
    "cifar10/Linf/Chen2021LTD_WRN34_20": _wrn(34, 20),
    "cifar10/Linf/Standard": _wrn(28, 10),
    "cifar10/Linf/Jia2022LAS-AT_34_10": _wrn(34, 10),
    "cifar10/Linf/Jia2022LAS-AT_70_16": _wrn(70, 16),
    "cifar10/Linf/Addepalli2022Efficient_RN18": _R18,
    "cifar10/Linf/Addepalli2022Efficient_WRN_34_10": _wrn(34, 10),
    "cifar10/Linf/Cui2023Decoupled_WRN-34-10": _wrn(34, 10),
    "cifar10/Linf/Chen2024Data_WRN_34_10": _wrn(34, 10),
    "cifar10/Linf/Chen2024Data_WRN_34_20": _wrn(34, 20),
}

_DM = "DeepMind's WideResNet-{} ({})"
UNBUILT: dict[str, str] = {  # the other RobustBench 1.1.1 CIFAR-10 L-inf entries -> what they need
    "Engstrom2019Robustness": "ResNet-50",
    "Chen2020Adversarial": "an ensemble of three ResNet-50s",
    "Pang2020Boosting": "BoostingWideResNet-34-20",
    "Ding2020MMA": "WideResNet-28-4 with per-image input standardization",
    "Gowal2020Uncovering_70_16": _DM.format("70-16", "Swish"),
    "Gowal2020Uncovering_70_16_extra": _DM.format("70-16", "Swish"),
    "Gowal2020Uncovering_34_20": _DM.format("34-20", "Swish"),
    "Gowal2020Uncovering_28_10_extra": _DM.format("28-10", "Swish"),
    "Sehwag2021Proxy_ResNest152": "ResNeSt-152",
    "Rebuffi2021Fixing_28_10_cutmix_ddpm": _DM.format("28-10", "Swish"),
    "Rebuffi2021Fixing_106_16_cutmix_ddpm": _DM.format("106-16", "Swish"),
    "Rebuffi2021Fixing_70_16_cutmix_ddpm": _DM.format("70-16", "Swish"),
    "Rebuffi2021Fixing_70_16_cutmix_extra": _DM.format("70-16", "Swish"),
    "Rebuffi2021Fixing_R18_ddpm": "DeepMind's PreActResNet-18 (Swish)",
    "Rade2021Helper_R18_extra": "DeepMind's PreActResNet-18 (Swish)",
    "Rade2021Helper_R18_ddpm": "DeepMind's PreActResNet-18 (Swish)",
    "Rade2021Helper_extra": _DM.format("34-10", "Swish"),
    "Rade2021Helper_ddpm": _DM.format("28-10", "Swish"),
    "Huang2021Exploring": "RobustWideResNet (channels 16-320-640-512)",
    "Huang2021Exploring_ema": "RobustWideResNet (channels 16-320-640-512)",
    "Gowal2021Improving_70_16_ddpm_100m": _DM.format("70-16", "Swish"),
    "Dai2021Parameterizing": "WideResNet-28-10 with PSSiLU",
    "Gowal2021Improving_28_10_ddpm_100m": _DM.format("28-10", "Swish"),
    "Gowal2021Improving_R18_ddpm_100m": "DeepMind's PreActResNet-18 (Swish)",
    "Kang2021Stable": "DeepMind's WideResNet-70-16 with SODEF layers",
    "Pang2022Robustness_WRN28_10": _DM.format("28-10", "Swish"),
    "Pang2022Robustness_WRN70_16": _DM.format("70-16", "Swish"),
    "Debenedetti2022Light_XCiT-S12": "XCiT-S12 (timm)",
    "Debenedetti2022Light_XCiT-M12": "XCiT-M12 (timm)",
    "Debenedetti2022Light_XCiT-L12": "XCiT-L12 (timm)",
    "Huang2022Revisiting_WRN-A4": "WRN-A4 (RobustResNet)",
    "Wang2023Better_WRN-28-10": _DM.format("28-10", "SiLU"),
    "Wang2023Better_WRN-70-16": _DM.format("70-16", "SiLU"),
    "Xu2023Exploring_WRN-28-10": _DM.format("28-10", "SiLU"),
    "Cui2023Decoupled_WRN-28-10": _DM.format("28-10", "SiLU"),
    "Bai2023Improving_edm": "a composite of two models and a policy network",
    "Peng2023Robust": "RaWideResNet-70-16",
    "Bai2024MixedNUTS": "a nonlinearly mixed classifier",
    "Amini2024MeanSparse_Ra_WRN_70_16": "MeanSparse RaWideResNet-70-16",
    "Amini2024MeanSparse_S-WRN-94-16": "MeanSparse WideResNet-94-16",
    "Bartoldson2024Adversarial_WRN-94-16": _DM.format("94-16", "SiLU"),
    "Bartoldson2024Adversarial_WRN-82-8": _DM.format("82-8", "SiLU"),
}


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
    key = "/".join(found)
    return f"robustbench:{key}", ROBUSTBENCH.get(key)


def refusal(zoo: str) -> str:
    """Why `zoo` (`robustbench:<dataset>/<threat>/<Name>`) is not built, in one clause."""
    dataset, threat, name = zoo.split(":", 1)[1].split("/")
    needs = UNBUILT.get(name) if (dataset, threat) == ("cifar10", "Linf") else None
    what = f"needs {needs}, which flatcli does not build" if needs else \
        "is not an entry flatcli builds"
    return f"{zoo} {what} ({served()}, listed in docs/zoos.md)"


def served() -> str:
    """The RobustBench entries flatcli builds, counted per dataset and threat model."""
    counts: dict[str, int] = {}
    for key in ROBUSTBENCH:
        group = key.rsplit("/", 1)[0]
        counts[group] = counts.get(group, 0) + 1
    return "flatcli builds " + ", ".join(f"{n} {g} entries" for g, n in counts.items())


def entry_names() -> list[str]:
    """The entries' names (`Carmon2019Unlabeled`, ...), in the table's order."""
    return [key.rsplit("/", 1)[1] for key in ROBUSTBENCH]


def help_line() -> str:
    """What `--arch`'s help says about RobustBench files (they need no --arch)."""
    return ("RobustBench files in their layout (models/cifar10/Linf/<Name>.pt) need none; "
            f"{served()}: {', '.join(entry_names())}.")


def _arch_text(entry: ZooEntry) -> str:
    args = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in entry.kwargs.items())
    return f"{entry.arch}:{args}" if args else entry.arch


def markdown_table() -> str:
    """The entries as a Markdown table (docs/zoos.md holds it verbatim)."""
    lines = ["| entry | RobustBench builds | flatcli builds | normalization |",
             "|---|---|---|---|"]
    for key, entry in ROBUSTBENCH.items():
        lines.append(f"| `{key}` | `{entry.source}` | `{_arch_text(entry)}` | "
                     f"`{entry.normalize}` |")
    return "\n".join(lines)
