"""WideResNet (Zagoruyko & Komodakis, 2016) with the parameter names of the TRADES / MART / AWP
codebases, whose checkpoints load into `Classifier.net` unchanged: conv1,
block{1,2,3}.layer.{i}.bn1/conv1/bn2/conv2, block{1,2,3}.layer.0.convShortcut, bn1, fc.
Depth 6n + 4; initialization as the original. `sub_block1`: see `WideResNet`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flatcli.errors import UsageError
from flatcli.models.registry import register
from flatcli.models.stages import global_pool


class BasicBlock(nn.Module):
    """Pre-activation block; where the width changes, the shortcut sees the pre-activated input.
    The same computation as `PreActBlock` (dropout aside), kept apart for the TRADES names."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One group of `nb_layers` blocks under `.layer` (the TRADES name)."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0
    ):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    dropout,
                )
                for i in range(nb_layers)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Logits [N, num_classes] of images [N, in_channels, H, W] (normalized by `Classifier`).

    TRADES' `wideresnet.py` also builds `sub_block1`, a copy of `block1` that `forward` never
    uses, and its checkpoints carry those tensors: `sub_block1=True` adds the same unused module
    so that they load (it takes no part in the output and gets no gradient).
    """

    def __init__(self, depth: int, num_classes: int, widen_factor: int, dropout: float,
                 in_channels: int, sub_block1: bool):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise UsageError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34); got {depth}"
            )
        if widen_factor < 1:
            raise UsageError(f"WideResNet widen_factor must be >= 1; got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"dropout must be in [0, 1); got {dropout}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, dropout)
        if sub_block1:
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1, dropout)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, dropout)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes)
        self.n_channels = channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(global_pool(self.relu(self.bn1(out))))


@register(
    "wide-resnet",
    "WideResNet (TRADES/MART/AWP names); kwargs: depth=34, widen_factor=10, dropout=0, "
    "sub_block1=False",
)
def wide_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    depth: int = 34,
    widen_factor: int = 10,
    dropout: float = 0.0,
    sub_block1: bool = False,
) -> nn.Module:
    return WideResNet(depth, num_classes, widen_factor, dropout, in_channels, sub_block1)


def _wrn_10(depth: int):
    """The factory of WRN-`depth`-10: depth and width fixed, so `--arch` cannot change them."""

    def factory(
        num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0, sub_block1: bool = False
    ) -> nn.Module:
        return WideResNet(depth, num_classes, 10, dropout, in_channels, sub_block1)

    return factory


for _depth, _size in ((28, "36.5M"), (34, "46.2M")):
    register(
        f"wrn-{_depth}-10",
        f"WideResNet-{_depth}-10 (TRADES/MART/AWP names), ~{_size} parameters; kwargs: dropout=0, "
        "sub_block1=False",
    )(_wrn_10(_depth))
