"""MadryLab `robustness` checkpoints, as its `train.py` writes them: `{"model", "optimizer",
"schedule", "epoch", ...}` where `model` is the state of `DataParallel(AttackerModel)`: the
classifier twice (`module.model.*`, `module.attacker.model.*`) and its input normalization twice
(`module.normalizer.new_mean/new_std`, `module.attacker.normalize.new_mean/new_std`). flatcli
keeps the first copies and builds the CIFAR ResNet-18 (`robustness.cifar_models.ResNet18`,
kuangliu's names, any width); other architectures are refused by name."""

from __future__ import annotations

import re

_COPY = {"module.attacker.model.": "module.model.", "module.attacker.normalize.":
         "module.normalizer.", "attacker.model.": "model.", "attacker.normalize.": "normalizer."}
_RESNETS = {("basic", (2, 2, 2, 2)): "ResNet-18", ("basic", (3, 4, 6, 3)): "ResNet-34",
            ("bottleneck", (3, 4, 6, 3)): "ResNet-50", ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
            ("bottleneck", (3, 8, 36, 3)): "ResNet-152"}
BUILT = "ResNet-18"


def is_madry(state: dict) -> bool:
    """The state of a `robustness` AttackerModel: its attacker copy or its `normalizer`."""
    return any(k.startswith(("module.attacker.", "attacker.", "module.normalizer.new_"))
               for k in state)


def drop_attacker(state: dict) -> None:
    """Remove the attacker's copies (`*attacker.model.*`, `*attacker.normalize.*`) when the
    first copies are there; otherwise rename them to the first copies' names."""
    for key in [k for k in state if k.startswith(tuple(_COPY))]:
        prefix = next(p for p in _COPY if key.startswith(p))
        first = _COPY[prefix] + key[len(prefix):]
        value = state.pop(key)
        state.setdefault(first, value)


def architecture(state: dict) -> tuple[str, int | None]:
    """(the network's name, e.g. "ResNet-50", and its base width) from the classifier's keys;
    ("an unrecognised architecture", None) when they are not one of `robustness`' CIFAR
    ResNets."""
    net = {re.sub(r"^(module\.)?model\.", "", k): v for k, v in state.items()
           if re.match(r"^(module\.)?model\.", k)}
    blocks: dict[int, set[int]] = {}
    for key in net:
        found = re.match(r"layer([1-4])\.(\d+)\.", key)
        if found:
            blocks.setdefault(int(found[1]), set()).add(int(found[2]))
    kind = "bottleneck" if any(".conv3." in k for k in net) else "basic"
    counts = tuple(len(blocks.get(i, ())) for i in (1, 2, 3, 4))
    name = _RESNETS.get((kind, counts))
    conv1 = net.get("conv1.weight")
    if name is None or conv1 is None or "linear.weight" not in net:
        return "an unrecognised architecture", None
    return name, int(conv1.shape[0])
