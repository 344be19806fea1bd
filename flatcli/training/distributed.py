"""DDP set-up under `torchrun`: the process layout, the process group, and setup errors that
stop every rank the same way. Every rank trains its shard of each epoch (DistributedSampler;
--batch-size is the global batch); rank 0 evaluates and writes, the others wait at barriers."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from flatcli.errors import UsageError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def distributed_from_env(environ=os.environ) -> Distributed:
    """The torchrun process layout (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Distributed()
    rank = int(environ.get("RANK", "0"))
    return Distributed(rank, world, int(environ.get("LOCAL_RANK", rank)))


def broadcast_error(dist_info: Distributed, message: str | None) -> None:
    """Rank 0's setup error reaches every rank, so all stop the same way (no rank hangs)."""
    if dist_info.active:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise UsageError(message)


def device_for(dist_info: Distributed, device: torch.device) -> torch.device:
    """Each rank's own GPU under DDP (LOCAL_RANK), else `device`."""
    if dist_info.active and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(dist_info: Distributed, device: torch.device):
    """The process group for the training (nccl on GPUs, gloo on CPUs), destroyed after if this
    call created it, once every rank has finished."""
    created = False
    if dist_info.active:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            created = True
    try:
        yield
        if created:  # every rank done before any tears its connections down (not after an error:
            barrier(dist_info)  # a failed rank never arrives, and torchrun ends the others)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def all_reduce(dist_info: Distributed, tensor: torch.Tensor) -> None:
    """Sum `tensor` over the ranks in place (nothing in a single process)."""
    if dist_info.active:
        import torch.distributed as dist

        dist.all_reduce(tensor)


def barrier(dist_info: Distributed) -> None:
    if dist_info.active:
        import torch.distributed as dist

        dist.barrier()
