"""Pre-activation ResNet-18 (He et al., 2016) with the parameter names of locuslab/
robust_overfitting's `preactresnet.py`, whose checkpoints load into `Classifier.net` unchanged:
conv1, layer{1..4}.{0,1}.bn1/conv1/bn2/conv2, layer{2..4}.0.shortcut.0, bn, linear.
RobustBench's `PreActResNet(PreActBlock, [2, 2, 2, 2])` (Wong2020Fast,
Andriushchenko2020Understanding) differs in two places, both arguments here: no BN-ReLU before
the classifier (`bn_before_fc=False`) and projection shortcuts fed the block's raw input
(`out_shortcut=False`). PyTorch's default initialization, as the original."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.models.registry import register
from flatcli.models.stages import cifar_stages, global_pool


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the projection shortcut sees the pre-activated input.
    Kept apart from WideResNet's block of the same shape: the two codebases name the layers
    differently (`shortcut.0` vs `convShortcut`), and their checkpoints must load as saved."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, out_shortcut: bool = True):
        super().__init__()
        self.out_shortcut = out_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(out if self.out_shortcut else x)
        else:
            shortcut = x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Logits [N, num_classes] of images [N, in_channels, H, W] (normalized by `Classifier`)."""

    def __init__(self, num_blocks: Sequence[int], num_classes: int, in_channels: int, width: int,
                 bn_before_fc: bool = True, out_shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = cifar_stages(
            functools.partial(PreActBlock, out_shortcut=out_shortcut), width, num_blocks
        )
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(8 * width)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        if hasattr(self, "bn"):
            out = F.relu(self.bn(out))
        return self.linear(global_pool(out))


@register(
    "preact-resnet18",
    "PreActResNet-18 (robust_overfitting names), ~11.2M parameters; kwargs: width=64, "
    "bn_before_fc=True, out_shortcut=True (both False: RobustBench's PreActResNet)",
)
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64,
                    bn_before_fc: bool = True, out_shortcut: bool = True) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width, bn_before_fc, out_shortcut)
