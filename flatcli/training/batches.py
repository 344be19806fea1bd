"""The batches of one training epoch, drawn deterministically from (seed, epoch, rank)."""

from __future__ import annotations

import torch

from flatcli import runtime


class Batches:
    """Batch k of an epoch of `passes` shuffled passes over this rank's shard (Entropy-SGD draws
    `entropy_steps` batches per update), with its share of extra data, augmented, on the device.
    Pass j is shuffled as DistributedSampler's epoch `epoch * passes + j` (j = 0: the epoch's)."""

    def __init__(self, trainer, epoch, passes, steps, n_lab, n_extra, extra_order):
        from torch.utils.data.distributed import DistributedSampler

        t = trainer
        self.t, self.steps, self.n_lab, self.n_extra = t, steps, n_lab, n_extra
        self.extra_order = extra_order
        self.orders = []
        for j in range(passes):
            sampler = DistributedSampler(
                range(len(t.y)),
                num_replicas=t.dist.world,
                rank=t.dist.rank,
                shuffle=True,
                seed=runtime.unit_seed(t.config.seed, "shuffle") % 2**62,
                drop_last=False,
            )
            sampler.set_epoch(epoch * passes + j)
            self.orders.append(torch.tensor(list(sampler), dtype=torch.int64))

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, pos = self.t, k % self.steps
        idx = self.orders[k // self.steps][pos * self.n_lab : (pos + 1) * self.n_lab]
        xb, yb = t.x[idx], t.y[idx]
        if self.n_extra:
            eidx = self.extra_order[k * self.n_extra : (k + 1) * self.n_extra]
            xb = torch.cat([xb, t.extra[0][eidx]])
            yb = torch.cat([yb, t.extra[1][eidx]])
        if t.augmenter is not None:
            xb = t.augmenter(xb)
        xb, yb = xb.to(t.device), yb.to(t.device)
        if t.device.type == "cuda":
            xb = xb.contiguous(memory_format=torch.channels_last)
        return xb, yb
