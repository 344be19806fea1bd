"""The batches of one training epoch, drawn deterministically from (seed, epoch, rank), selected
from data resident on the training device (docs/method.md, training)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flatcli import runtime


@dataclass
class Resident:
    """A training set on the device, moved there once: x float [N, C, H, W] in [0, 1], y int64
    [N]; `extra`: the pseudo-labelled (x, y) or None."""

    x: torch.Tensor
    y: torch.Tensor
    extra: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def on(cls, device, x, y, extra=None) -> Resident:
        def move(t):
            return t.to(device)

        return cls(move(x), move(y), None if extra is None else (move(extra[0]), move(extra[1])))


def shard_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's order of the n training examples in `epoch` (int64 [ceil(n / world)], on the
    CPU): DistributedSampler's shuffle, its seed derived from the run's seed."""
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(
        range(n),
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=runtime.unit_seed(seed, "shuffle") % 2**62,
        drop_last=False,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.int64)


def extra_draws(m: int, count: int, generator: torch.Generator, replace: bool) -> torch.Tensor:
    """`count` indices into the m extra examples (int64, CPU): drawn with replacement (the paper's
    code: each batch's extra part uniform over the set), or passes of random permutations."""
    if replace:
        return torch.randint(m, (count,), generator=generator)
    return torch.cat([torch.randperm(m, generator=generator) for _ in range(math.ceil(count / m))])


class Batches:
    """Batch k of an epoch of `passes` shuffled passes over this rank's shard (Entropy-SGD draws
    `entropy_steps` batches per update), with its share of extra data, augmented, on the device.
    Pass j is shuffled as DistributedSampler's epoch `epoch * passes + j` (j = 0: the epoch's).

    Selecting a batch moves nothing between host and device: the orders are moved once per
    epoch, and augmentation draws from `generator`, on the data's device."""

    def __init__(
        self, trainer, data: Resident, epoch, passes, steps, n_lab, n_extra, extra_order, generator
    ):
        t = trainer
        self.data, self.steps, self.n_lab, self.n_extra = data, steps, n_lab, n_extra
        self.augmenter, self.generator = t.augmenter, generator
        self.memory_format = t.memory_format
        device = data.y.device
        self.extra_order = None if extra_order is None else extra_order.to(device)
        self.orders = [
            shard_order(
                len(data.y), t.config.seed, epoch * passes + j, t.dist.rank, t.dist.world
            ).to(device)
            for j in range(passes)
        ]

    def size(self, k: int) -> int:
        """The number of examples in batch k (a host-side count; the last one may be short)."""
        start = (k % self.steps) * self.n_lab
        return min(self.n_lab, len(self.orders[0]) - start) + self.n_extra

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        d, pos = self.data, k % self.steps
        idx = self.orders[k // self.steps][pos * self.n_lab : (pos + 1) * self.n_lab]
        xb, yb = d.x.index_select(0, idx), d.y.index_select(0, idx)
        if self.n_extra:
            eidx = self.extra_order[k * self.n_extra : (k + 1) * self.n_extra]
            xb = torch.cat([xb, d.extra[0].index_select(0, eidx)])
            yb = torch.cat([yb, d.extra[1].index_select(0, eidx)])
        if self.augmenter is not None:
            xb = self.augmenter(xb, self.generator)
        return xb.contiguous(memory_format=self.memory_format), yb
