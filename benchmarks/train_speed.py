"""Images per second of one adversarial-training epoch (PGD-7 AT) through `flatcli train`.

    python benchmarks/train_speed.py                       # small-cnn on digits, CPU
    python benchmarks/train_speed.py --threads 1
    python benchmarks/train_speed.py --device cuda         # + preact-resnet18, fp32 and bf16

The timed code is the trainer itself (`flatcli.training.train`): batches of 128, PGD-7 (step
0.2229 * eps, random start) in eval mode, the training step in train mode. It runs `--epochs`
epochs (default 2) and reports the training time of the last one, `epoch_time_s` in the train
log (held-out evaluation and checkpoint writes excluded), so start-up and first-call costs are
not counted. preact-resnet18 runs on random CIFAR-shaped data (uint8 32x32x3, written to a
temporary npz dataset); on CUDA with channels_last, in fp32 and with `--amp bf16`.
Reference: a 2020 GPU took ~180 s per PGD-10 epoch of PreActResNet-18 on CIFAR-10 (50000
images, ~280 images/s; Rice et al.), i.e. about 8/11 of that time for PGD-7.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flatcli.config.commands import TrainConfig  # noqa: E402
from flatcli.training import train  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    parser.add_argument(
        "--n",
        type=int,
        default=10240,
        help="random CIFAR-shaped training images for preact-resnet18 (cuda)",
    )
    parser.add_argument("--method", default="at", help="training method (default: at)")
    return parser.parse_args(argv)


def timed_epoch(config: TrainConfig, out: Path) -> tuple[int, float]:
    """(images per epoch, training seconds of the last epoch)."""
    result = train(config, out, force=True)
    last = result.rows[-1]
    return last["n_examples"], last["epoch_time_s"]


def random_cifar(path: Path, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, n),
        x_test=rng.integers(0, 256, (640, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(640) % 10,
    )
    return f"npz:{path}"


def report(label: str, n: int, seconds: float) -> None:
    print(f"{label:<44} {n:>6} images  {seconds:8.2f} s  {n / seconds:9.1f} images/s", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if args.device == "cuda"
            else f", {torch.get_num_threads()} thread(s)"
        ),
        flush=True,
    )
    common = dict(
        method=args.method,
        attack="pgd7",
        epochs=args.epochs,
        milestones=(1000,),
        heldout_every=1000,
        heldout_attack="pgd1",
        heldout_examples=16,
        device=args.device,
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n, s = timed_epoch(
            TrainConfig(dataset="digits", arch="small-cnn", **common), tmp / "digits"
        )
        report(f"small-cnn digits {args.method} PGD-7 fp32", n, s)
        if args.device == "cuda":
            dataset = random_cifar(tmp / "cifar.npz", args.n)
            for amp in ("none", "bf16"):
                n, s = timed_epoch(
                    TrainConfig(
                        dataset=dataset, arch="preact-resnet18", eps=8 / 255, amp=amp, **common
                    ),
                    tmp / f"preact-{amp}",
                )
                dtype = "bf16 autocast" if amp == "bf16" else "fp32"
                report(f"preact-resnet18 32x32 {args.method} PGD-7 {dtype}", n, s)
                print(
                    f"{'':<44} CIFAR-10 epoch (50000 images): {50000 * s / n:.1f} s "
                    "(2020 reference: ~180 s for PGD-10)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
