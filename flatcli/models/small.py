"""Small networks for the bundled digits data, MNIST and tests."""

from __future__ import annotations

from torch import nn

from flatcli.models.registry import register


@register("tiny", "test model: one conv + BN + linear (a few hundred parameters)")
def tiny(num_classes: int = 10, in_channels: int = 1, width: int = 4) -> nn.Module:
    return _tiny(num_classes, in_channels, width, nn.BatchNorm2d(width))


@register("tiny-nobn", "test model: tiny without BN (a DDP step equals one process's step)")
def tiny_nobn(num_classes: int = 10, in_channels: int = 1, width: int = 4) -> nn.Module:
    return _tiny(num_classes, in_channels, width, nn.Identity())


def _tiny(num_classes: int, in_channels: int, width: int, norm: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        norm,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


class SmallCNN(nn.Module):
    """3 conv layers (BN, ReLU) and 2 linear layers: docs/method.md's digits model."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, hidden: int = 128
    ):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * w, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register("small-cnn", "3 conv (32/64/128, BN) + 2 linear layers; digits and MNIST")
def small_cnn(
    num_classes: int = 10, in_channels: int = 1, width: int = 32, hidden: int = 128
) -> nn.Module:
    return SmallCNN(num_classes, in_channels, width, hidden)
