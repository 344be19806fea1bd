"""Seconds per grid point of a 1-D robust landscape (`flatcli landscape`'s measure).

    python benchmarks/landscape_speed.py --device cpu --threads 1 --point-batch 1 4
    python benchmarks/landscape_speed.py --device cuda --arch preact-resnet18 --point-batch 1 4 8

One (checkpoint, direction) work unit: a random direction (filter-normalized, scale 0.5) and
--steps values of alpha in [-1, 1], each re-running PGD (--attack, default the paper's pgd20x10)
on the moved weights and --n examples (default 128, the paper): --steps attacks. Reports the unit's
wall time and seconds per point (median over --repeats, after a warm-up), for each --point-batch
(grid points per stacked pass), with the largest robust-loss difference to the first one.
small-cnn: 2 epochs of PGD-3 AT on digits (tests/conftest.py); preact-resnet18: random weights,
random CIFAR-shaped data (a speed check only). Reference: the loss-landscape project takes
~5.5 s per point.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import speed  # noqa: E402  (benchmarks/speed.py, beside this script)

from flatcli import checkpoints  # noqa: E402
from flatcli.config.commands import LandscapeConfig  # noqa: E402
from flatcli.measures import landscape  # noqa: E402


def parse_args(argv=None):
    parser = speed.parser(__doc__)
    parser.add_argument("--n", type=int, default=128, help="examples (docs/method.md: 128)")
    parser.add_argument("--steps", type=int, default=51, help="grid points (docs/method.md: 51)")
    parser.add_argument("--attack", default="pgd20x10", help="docs/method.md: pgd20x10")
    parser.add_argument(
        "--point-batch", type=int, nargs="+", default=[1], help="grid points per pass (compared)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args(argv)


def checkpoint(args, root: Path) -> tuple[Path, str, float | None]:
    """A saved checkpoint to measure, its dataset and eps (None: the dataset's)."""
    if args.arch == "small-cnn":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import quick_adversarial_training

        model = quick_adversarial_training("small-cnn", epochs=2, eps=0.1, seed=args.seed)
        path = root / "at" / "epoch_0002.safetensors"
        checkpoints.save_checkpoint(path, model, "small-cnn", {}, "digits", 2)
        return path, "digits", 0.1
    model = speed.cifar_model(args.arch, args.seed)
    data_path = random_npz(root / "random.npz", args.n, args.seed)
    path = root / "rand" / "model.safetensors"
    checkpoints.save_checkpoint(path, model, args.arch, {}, f"npz:{data_path}", None)
    return path, f"npz:{data_path}", 8 / 255


def random_npz(path: Path, n: int, seed: int = 0) -> Path:
    """Random CIFAR-shaped npz data whose test split holds n examples: flatcli holds out the last
    min(500, len(x_test) // 5) test examples, so x_test gets n + 500 (at most 500 held out)."""
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n + 500, 3, 32, 32), generator=gen)
    y = torch.randint(0, 10, (n + 500,), generator=gen)
    np.savez(path, x_test=x.numpy(), y_test=y.numpy(), x_train=x[:n].numpy(), y_train=y[:n].numpy())
    return path


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path, dataset, eps = checkpoint(args, Path(tmp))
        if args.threads:  # again: the test fixture that trains small-cnn sets its own
            torch.set_num_threads(args.threads)
        refs = checkpoints.discover([path])
        config = LandscapeConfig(
            dataset=dataset,
            n_examples=args.n,
            eps=eps,
            steps=args.steps,
            n_directions=1,
            attack=args.attack,
            seed=args.seed,
            device=args.device,
        )
        config = landscape.resolve_landscape_config(config, refs)
        (unit,) = landscape.units(refs, 1)
        results = {}
        for point_batch in args.point_batch:
            batched = dataclasses.replace(config, point_batch=point_batch)
            # warm-up: one chunk of points
            warm = dataclasses.replace(batched, steps=max(2, point_batch))
            landscape.landscape_measure(warm, device)(unit)
            measure = landscape.landscape_measure(batched, device)
            times = []
            for _ in range(args.repeats):
                seconds, rows = speed.timed_call(functools.partial(measure, unit), device)
                times.append(seconds)
            results[point_batch] = (statistics.median(times), rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"landscape 1-D: {args.arch} on {dataset.split(':')[0]}, {args.n} examples, "
        f"{args.steps} points, {args.attack}, device {name}, threads {torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    base_wall, base_rows = results[args.point_batch[0]]
    for point_batch, (wall, rows) in results.items():
        drift = max(
            abs(r["robust_loss"] - b["robust_loss"]) for r, b in zip(rows, base_rows, strict=True)
        )
        print(
            f"  --point-batch {point_batch:3d}: unit {wall:8.2f} s, {wall / args.steps:7.3f} s per "
            f"point, {base_wall / wall:5.2f}x vs --point-batch {args.point_batch[0]}, "
            f"max |robust loss difference| {drift:.1e}"
        )
    print("  (loss-landscape reference: ~5.5 s per point)")
    zero = min(base_rows, key=lambda r: abs(r["alpha"]))  # an even --steps has no alpha = 0
    ends = [r["robust_loss"] for r in base_rows if abs(r["alpha"]) == 1.0]
    print(
        f"  robust loss at alpha={zero['alpha']:.3g}: {zero['robust_loss']:.4f}, at alpha=-1/+1: "
        + " / ".join(f"{v:.4f}" for v in ends)
    )


if __name__ == "__main__":
    main()
