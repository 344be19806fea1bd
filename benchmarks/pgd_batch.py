"""On CPU, the time of the engine's multi-restart PGD per batch size, beside torchattacks.PGD.

    python benchmarks/pgd_batch.py CHECKPOINT --dataset fashion-mnist \\
        --data-dir /usr/share/datasets/fashion-mnist --n 256 --batch-sizes 512,128,32

flatcli's PGD stacks an attack's restarts into one pass (batch size x restarts rows); torchattacks
runs one restart per call on batches of 128. Prints, per run, the wall time, the process's user
and system CPU time, and the robust error (the same examples, so comparable ones). Under glibc's
defaults (`--malloc system`, the CLI's default) every large tensor is freshly mapped (page
faults); `--malloc kept` keeps freed memory, as FLATCLI_MALLOC=kept does for the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flatcli import checkpoints, data, engine, runtime  # noqa: E402
from flatcli.attacks.presets import build_attack  # noqa: E402


def timed(run) -> tuple[float, float, float, float]:
    """(wall s, user CPU s, system CPU s, robust error) of `run()` -> its broken mask."""
    start, before = time.perf_counter(), os.times()
    broken = run()
    after = os.times()
    wall = time.perf_counter() - start
    return wall, after.user - before.user, after.system - before.system, broken.float().mean()


def line(name: str, measured: tuple[float, float, float, float]) -> str:
    wall, user, system, error = measured
    return (f"{name}: {wall:.1f} s wall, {user:.1f} s user, {system:.1f} s system, "
            f"robust error {error:.3f}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-sizes", default="512,128,32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--malloc", choices=["system", "kept"], default="system",
                        help="system: glibc's defaults, as the CLI runs by default; kept: as "
                        "FLATCLI_MALLOC=kept (runtime.keep_freed_memory)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.malloc == "kept":
        os.environ["FLATCLI_MALLOC"] = "kept"
        assert runtime.keep_freed_memory(), "FLATCLI_MALLOC=kept needs glibc"
    model = checkpoints.load_model(args.checkpoint, device=torch.device("cpu"))[0].eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.load_split(args.dataset, "test", args.n, args.data_dir)
    eps = data.get_spec(args.dataset).eps
    attack = build_attack(f"pgd{args.steps}x{args.restarts}", "linf", eps, None, 0, "fp32")

    def flatcli_run(size: int) -> torch.Tensor:
        found = engine.robust_losses(model, x, y, [attack], (0,), size)
        return ~found.robust[attack.name].correct

    for size in (int(s) for s in args.batch_sizes.split(",")):
        print(line(f"flatcli --batch-size {size}", timed(lambda s=size: flatcli_run(s))))

    import torchattacks

    peer = torchattacks.PGD(model, eps=eps, alpha=attack.step_size, steps=args.steps,
                            random_start=True)  # fmt: skip

    def torchattacks_run() -> torch.Tensor:
        broken = torch.zeros_like(y, dtype=torch.bool)
        for _ in range(args.restarts):
            for i in range(0, len(y), 128):
                adv = peer(x[i : i + 128], y[i : i + 128])
                with torch.no_grad():
                    broken[i : i + 128] |= model(adv).argmax(1) != y[i : i + 128]
        return broken

    torch.manual_seed(0)
    print(line("torchattacks.PGD, batches of 128", timed(torchattacks_run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
