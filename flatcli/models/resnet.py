"""ResNet-18 for 32x32 inputs in the kuangliu/pytorch-cifar layout, used by many CIFAR AT codebases.

Parameter and buffer names match that layout, so such checkpoints load into `Classifier.net`:

    conv1 (3x3, stride 1), bn1, layer{1..4}.{0,1}.conv1/bn1/conv2/bn2,
    layer{2..4}.0.shortcut.0 (1x1 conv) / shortcut.1 (BN), linear

The original pools with `avg_pool2d(out, 4)`; a global average pool is the same for 32x32 inputs
and also accepts other sizes. Initialization is PyTorch's default, as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.models import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        block = BasicBlock
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register(
    "resnet18",
    "ResNet-18, kuangliu/pytorch-cifar layout, ~11.2M parameters; kwargs: width=64",
)
def resnet18(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width)
