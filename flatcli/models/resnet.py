"""ResNet-18 with the parameter names of kuangliu/pytorch-cifar, the layout of many CIFAR
adversarial-training codebases, whose checkpoints load into `Classifier.net` unchanged: conv1,
bn1, layer{1..4}.{0,1}.conv1/bn1/conv2/bn2, layer{2..4}.0.shortcut.{0,1}, linear.
PyTorch's default initialization, as the original."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.models.registry import register
from flatcli.models.stages import cifar_stages, global_pool


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (1x1 conv + BN) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Logits [N, num_classes] of images [N, in_channels, H, W] (normalized by `Classifier`)."""

    def __init__(self, num_blocks: Sequence[int], num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1, self.layer2, self.layer3, self.layer4 = cifar_stages(
            BasicBlock, width, num_blocks
        )
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(global_pool(out))


@register(
    "resnet18",
    "ResNet-18, kuangliu/pytorch-cifar layout, ~11.2M parameters; kwargs: width=64",
)
def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width)
