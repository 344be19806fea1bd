"""Regularizers that combine with any method: augmentation, label noise, weight clipping,
Entropy-SGD, pseudo-labelled extra data (docs/method.md). Every draw comes from an explicit
generator on the batch's device, so nothing waits on the host inside a training step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flatcli.config import registries
from flatcli.errors import DataError

AUGMENTATIONS = tuple(registries.AUGMENTATIONS)
OPTIMIZERS = tuple(registries.OPTIMIZERS)


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-example random crop of x [B, C, H, W] zero-padded by `pad`, then a horizontal flip
    with probability 1/2, batched on x's device (`generator` lives there too)."""
    b, c, h, w = x.shape
    dev = x.device
    top, left = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator, device=dev)
    flip = torch.rand(b, 1, generator=generator, device=dev) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(0), cols) + left  # [B, W]; flipped after the crop
    rows = torch.arange(h, device=dev) + top  # [B, H]
    index = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]
    padded = F.pad(x, (pad, pad, pad, pad)).flatten(2)
    return padded.gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)


def cutout(x: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    """x [B, C, H, W] with one `side` x `side` square per example, placed uniformly inside the
    image, set to 0 (torchvision's RandomErasing with a square patch), batched."""
    b, _, h, w = x.shape
    dev = x.device
    top = torch.randint(0, h - side + 1, (b, 1), generator=generator, device=dev)
    left = torch.randint(0, w - side + 1, (b, 1), generator=generator, device=dev)
    rows = torch.arange(h, device=dev) - top
    cols = torch.arange(w, device=dev) - left
    inside = ((rows >= 0) & (rows < side))[:, :, None] & ((cols >= 0) & (cols < side))[:, None]
    return x.masked_fill(inside[:, None], 0)


class Augmenter:
    """Per-example random augmentation of a batch of [0, 1] float images [B, C, H, W].

    - `crop-flip`: random crop with zero padding of image_size // 8 (4 px on 32 px) and a
      horizontal flip with probability 1/2 (the CIFAR-10 standard).
    - `cutout`: crop-flip, then one square of a quarter of the image area (16x16 on 32x32) set
      to 0, inside the image.
    - `autoaugment`: crop-flip, then AutoAugment's CIFAR-10 policy (torchvision, image by image,
      on uint8; it draws from torch's global generator, which the trainer seeds per epoch).

    crop-flip and cutout run batched on the batch's device from `generator` (on that device).
    """

    def __init__(self, name: str, image_size: int):
        self.name = name
        self.pad = max(1, image_size // 8)
        self.side = max(1, round(image_size / 2))  # a quarter of the area
        self.auto = None
        if name == "autoaugment":
            from torchvision.transforms import v2

            self.auto = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: float [B, C, H, W] in [0, 1] -> a new augmented batch on the same device."""
        out = crop_flip(x, self.pad, generator)
        if self.name == "cutout":
            out = cutout(out, self.side, generator)
        elif self.auto is not None:
            images = (out * 255).round().to(torch.uint8)
            out = torch.stack([self.auto(img) for img in images]).float() / 255
        return out


LABEL_NOISE_CLASSES = tuple(registries.LABEL_NOISE_CLASSES)


def noisy_labels(
    y: torch.Tensor,
    rate: float,
    num_classes: int,
    generator: torch.Generator,
    classes: str = "all",
) -> torch.Tensor:
    """With probability `rate` per example a random label, fresh per batch (the attack still uses
    the true labels): drawn uniformly from `all` K classes (the paper's code; it may hit the true
    one) or from the K - 1 `others`. `generator` lives on y's device."""
    n, dev = len(y), y.device
    flip = torch.rand(n, generator=generator, device=dev) < rate
    if classes == "all":
        drawn = torch.randint(0, num_classes, (n,), generator=generator, device=dev)
    else:
        drawn = (y + torch.randint(1, num_classes, (n,), generator=generator, device=dev)) % (
            num_classes
        )
    return torch.where(flip, drawn, y)


def clipped(net: torch.nn.Module, which: str) -> list[torch.Tensor]:
    """The parameters weight clipping clamps: `all` trainable ones (the paper's code's
    BoxProjection, normalization layers' scale and shift included) or `weights` (the layers of
    `flatcli.weights.layers`: weights and biases, normalization layers not)."""
    from flatcli import weights

    if which == "weights":
        return [p for _, p in weights.layers(net)]
    return [p for p in net.parameters() if p.requires_grad]


def clip_weights(params: Sequence[torch.Tensor], bound: float) -> None:
    """Clamp every element to [-bound, bound] in place (the layers: weights and biases)."""
    with torch.no_grad():
        for p in params:
            p.clamp_(-bound, bound)


class EntropySGD:
    """Entropy-SGD (Chaudhari et al. 2017) as the paper's code runs it (its
    `common/torch/optim.py`): per outer update, from w' = mu = w, `steps` Langevin steps, each
    on a new batch with a new attack (`closure(i)` leaves the gradient of batch i at w'):

        d  = grad f(w') + wd w'                  (then Nesterov/heavy-ball momentum, its buffer
                                                  fresh per update, as the outer step's)
        w' <- w' - lr (d + gamma (w' - w) + noise / sqrt(lr / 2) N(0, 1))
        mu <- alpha mu + (1 - alpha) w'

    then the weights are back at w (bitwise) and `.grad` holds w - mu, unscaled, for the outer
    SGD (weight decay, momentum, learning-rate schedule).
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        steps: int,
        lr: float,
        gamma: float,
        noise: float,
        alpha: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        nesterov: bool = False,
    ):
        self.params = list(params)
        self.steps, self.lr, self.gamma, self.noise, self.alpha = steps, lr, gamma, noise, alpha
        self.weight_decay, self.momentum, self.nesterov = weight_decay, momentum, nesterov

    @classmethod
    def from_config(cls, params: Sequence[torch.nn.Parameter], c) -> EntropySGD:
        """Entropy-SGD with a resolved `TrainConfig`'s settings (its momentum, `entropy_momentum`,
        and the weight decay apply to the Langevin steps too, as in the paper's code)."""
        from flatcli.training.config import momentum_of

        momentum, nesterov = momentum_of(c)
        return cls(
            params,
            c.entropy_steps,
            c.entropy_lr,
            c.entropy_gamma,
            c.entropy_noise,
            c.entropy_alpha,
            c.weight_decay,
            momentum,
            nesterov,
        )

    def gradient(self, closure: Callable[[int], tuple], generator: torch.Generator) -> tuple:
        """Run the Langevin loop (closure(0), ..., closure(steps - 1)); leave w - mu in `.grad`;
        return the first closure result (loss and logits at w, for the log). `generator`
        (the noise) lives on the parameters' device."""
        w = [p.detach().clone() for p in self.params]
        mu = [t.clone() for t in w]
        buf = [torch.zeros_like(t) for t in w]
        noise_scale = self.noise / math.sqrt(0.5 * self.lr)
        first = None
        for i in range(self.steps):
            result = closure(i)
            first = first or result
            with torch.no_grad():
                for p, w0, m, b in zip(self.params, w, mu, buf, strict=True):
                    d = torch.zeros_like(p) if p.grad is None else p.grad.clone()
                    if self.weight_decay:
                        d.add_(p, alpha=self.weight_decay)
                    if self.momentum:
                        b.mul_(self.momentum).add_(d)
                        d = d.add(b, alpha=self.momentum) if self.nesterov else b.clone()
                    d.add_(p - w0, alpha=self.gamma)
                    if self.noise > 0:
                        z = torch.randn(
                            p.shape, generator=generator, dtype=p.dtype, device=p.device
                        )
                        d.add_(z, alpha=noise_scale)
                    p.add_(d, alpha=-self.lr)
                    m.mul_(self.alpha).add_(p, alpha=1 - self.alpha)
        with torch.no_grad():
            for p, w0, m in zip(self.params, w, mu, strict=True):
                p.copy_(w0)
                p.grad = w0 - m
        return first


def load_extra(path: str | Path, in_channels: int, image_size: int, num_classes: int):
    """Pseudo-labelled extra data from an npz with arrays `x` (uint8 NHWC or float NCHW in
    [0, 1]) and `y` (integer labels): (x float32 [M, C, H, W], y int64 [M]). DataError if bad."""
    from flatcli.data import as_float_nchw

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"--extra-data {path}: no such file (an npz with arrays x and y)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"--extra-data {path}: lacks array(s) {', '.join(missing)}")
            images, labels = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as err:
        raise DataError(
            f"--extra-data {path}: cannot read ({' '.join(str(err).split())})"
        ) from None
    if labels.dtype.kind not in "iu" or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"--extra-data {path}: y must be {len(images)} integer labels")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"--extra-data {path}: labels must lie in [0, {num_classes - 1}]")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
        raise DataError(f"--extra-data {path}: x must be uint8 NHWC or float NCHW in [0, 1]")
    try:
        x = as_float_nchw(images)
    except DataError as err:
        raise DataError(f"--extra-data {path}: {err}") from None
    if tuple(x.shape[1:]) != (in_channels, image_size, image_size):
        raise DataError(
            f"--extra-data {path}: images are {tuple(x.shape[1:])}, the dataset's "
            f"{(in_channels, image_size, image_size)}"
        )
    return x, torch.from_numpy(labels.astype(np.int64))
