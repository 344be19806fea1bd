"""What the per-measure speed scripts share: their common options, a random CIFAR-shaped model."""

from __future__ import annotations

import argparse
import time

import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by `doc`'s first paragraph, with the options every speed script takes:
    --device, --arch (small-cnn on digits, or preact-resnet18 on random CIFAR-shaped data),
    --threads and --seed."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--arch", choices=["small-cnn", "preact-resnet18"], default="small-cnn")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def cifar_model(arch: str, seed: int) -> torch.nn.Module:
    """`arch` with random weights (seeded) and CIFAR-10's normalization, for 32x32x3 inputs."""
    from flatcli import models

    torch.manual_seed(seed)
    return models.build(arch, 10, 3, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (CUDA launches are asynchronous; CPU work is not)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, fn()) of one call, `device` synchronized before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result
