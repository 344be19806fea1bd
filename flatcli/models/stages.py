"""What the CIFAR ResNet families share: four stages of residual blocks and the global average
pool. The blocks themselves stay per family: their parameter names are those of the public
codebases whose checkpoints load unchanged (docs/method.md, "Implementation notes")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cifar_stages(
    block: Callable[[int, int, int], nn.Module], width: int, num_blocks: Sequence[int]
) -> list[nn.Sequential]:
    """Four `nn.Sequential` stages of `block(in_planes, planes, stride)`: widths w, 2w, 4w, 8w,
    the first block of stages 2-4 with stride 2 (He et al.'s CIFAR layout). Blocks are built in
    order, so a seeded initialization draws what the original code drew."""
    stages, in_planes = [], width
    for i, (count, stride) in enumerate(zip(num_blocks, (1, 2, 2, 2), strict=True)):
        planes = width * 2**i
        blocks = []
        for s in [stride] + [1] * (count - 1):
            blocks.append(block(in_planes, planes, s))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return stages


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C], the mean over H and W. The originals' `avg_pool2d(out, 4)` (or 8
    for WideResNet) equals it at 32x32 inputs; this one also accepts other sizes."""
    return F.adaptive_avg_pool2d(features, 1).flatten(1)
