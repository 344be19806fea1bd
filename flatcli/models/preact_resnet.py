"""Pre-activation ResNet-18 (He et al., 2016), CIFAR layout of Rice et al.'s robust overfitting.

Parameter and buffer names match `preactresnet.py` of locuslab/robust_overfitting, so its
checkpoints load into `Classifier.net` unchanged:

    conv1, layer{1..4}.{0,1}.bn1/conv1/bn2/conv2, layer{2..4}.0.shortcut.0 (1x1 conv), bn, linear

The original pools with `avg_pool2d(out, 4)` (4x4 maps for 32x32 inputs); a global average pool
is the same there and also accepts other input sizes. Initialization is PyTorch's default, as in
the original (Kaiming-uniform for the convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.models import register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; the projection shortcut sees the pre-activated input."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        block = PreActBlock
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.bn = nn.BatchNorm2d(8 * width * block.expansion)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register(
    "preact-resnet18",
    "PreActResNet-18 (robust_overfitting names), ~11.2M parameters; kwargs: width=64",
)
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, width)
