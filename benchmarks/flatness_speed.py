"""Time flatcli's average-case flatness against a plain deep-copy loop on the same model/examples.

    python benchmarks/flatness_speed.py --device cpu --arch small-cnn --threads 1
    python benchmarks/flatness_speed.py --device cuda --arch preact-resnet18 --n 1000 \
        --samples 10 --steps 20 --restarts 10

flatcli: `flatcli.measures.average.average_flatness` (offsets applied in place and restored, the
attack re-run on every perturbed model by the engine, restarts batched). Peer: the plain loop: per
sample `copy.deepcopy(model)`, add a per-layer relative offset to every conv/linear weight and bias,
`torchattacks.PGD` (one restart per call, so R restarts are R calls keeping the per-example worst).
Both compute RCE(w) once and RCE(w + nu) for every sample with PGD-S (step eps/4) on the same
examples, at the same xi. Prints the median time over --repeats (after a warm-up), the ratio
peer/flatcli (> 1: flatcli is faster) and both flatness estimates (they estimate the same number;
their difference is sampling noise, mostly from the different random offsets).
small-cnn: 2 epochs of PGD-3 AT on digits (tests/conftest.py); preact-resnet18: random weights on
random CIFAR-shaped data (a speed check only).
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import speed  # noqa: E402  (benchmarks/speed.py, beside this script)

from flatcli import data  # noqa: E402
from flatcli.attacks.pgd import PGD  # noqa: E402
from flatcli.measures import average  # noqa: E402


def parse_args(argv=None):
    parser = speed.parser(__doc__)
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="examples (default: 256 for small-cnn, 128 for preact-resnet18)",
    )
    parser.add_argument("--samples", type=int, default=5, help="random offsets (paper: 10)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (paper: 20)")
    parser.add_argument("--restarts", type=int, default=1, help="PGD restarts (paper: 10)")
    parser.add_argument("--xi", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=None, help="default: 0.1 digits, 8/255 CIFAR")
    return parser.parse_args(argv)


def setup(args):
    """(model in eval mode on device, x, y, eps)."""
    device = torch.device(args.device)
    if args.arch == "small-cnn":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import quick_adversarial_training

        model = quick_adversarial_training("small-cnn", epochs=2, eps=0.1, seed=args.seed)
        x, y = data.load_split("digits", "test")
        n = min(args.n or 256, len(y))
        x, y, eps = x[:n], y[:n], args.eps or 0.1
    else:
        model = speed.cifar_model(args.arch, args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        n = args.n or 128
        x = torch.rand((n, 3, 32, 32), generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        eps = args.eps or 8 / 255
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device), x.to(device), y.to(device), eps


def timed(fn, repeats, device):
    """(median seconds over `repeats` after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        seconds, result = speed.timed_call(fn, device)
        times.append(seconds)
    return statistics.median(times), result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    model, x, y, eps = setup(args)
    if args.threads:  # after setup: importing tests/conftest.py sets 2 threads
        torch.set_num_threads(args.threads)
    device = x.device
    n, alpha = len(y), eps / 4
    print(
        f"# arch={args.arch} device={args.device} n={n} eps={eps:.6g} xi={args.xi} "
        f"samples={args.samples} PGD-{args.steps}x{args.restarts} (step eps/4) "
        f"repeats={args.repeats} threads={torch.get_num_threads()} torch={torch.__version__}"
    )

    import torchattacks

    attack = PGD(f"pgd{args.steps}x{args.restarts}", "linf", eps, args.steps, alpha, args.restarts)

    def ours():
        results = average.average_flatness(
            model, x.cpu(), y.cpu(), args.xi, args.samples, attack, (args.seed,), batch_size=n
        )
        return next(r.flatness for r in results if r.measure == "average")

    def robust_loss(m, seed):
        torch.manual_seed(seed)
        worst = torch.full((n,), -torch.inf, device=device)
        for _ in range(args.restarts):
            adv = torchattacks.PGD(m, eps=eps, alpha=alpha, steps=args.steps, random_start=True)(
                x, y
            )
            with torch.no_grad():
                worst = torch.maximum(
                    worst, nn.functional.cross_entropy(m(adv), y, reduction="none")
                )
        return worst.mean().item()

    def plain_loop():
        base = robust_loss(model, args.seed)
        losses = []
        for s in range(args.samples):
            m = copy.deepcopy(model)
            g = torch.Generator().manual_seed(1000 + s)
            with torch.no_grad():
                for module in m.modules():
                    if isinstance(module, (nn.Conv2d, nn.Linear)):
                        for p in module.parameters(recurse=False):
                            d = torch.randn(p.shape, generator=g).to(device)
                            p.add_(args.xi * p.norm() * d / d.norm())
            losses.append(robust_loss(m, s))
        return statistics.mean(losses) - base

    t_ours, f_ours = timed(ours, args.repeats, device)
    t_peer, f_peer = timed(plain_loop, args.repeats, device)
    print(f"{'impl':<34} {'median_s':>9} {'peer/flatcli':>12} {'flatness':>9}")
    print(f"{'flatcli average_flatness':<34} {t_ours:>9.3f} {'':>12} {f_ours:>9.4f}")
    print(
        f"{'deepcopy + torchattacks.PGD loop':<34} {t_peer:>9.3f} {t_peer / t_ours:>11.2f}x "
        f"{f_peer:>9.4f}"
    )
    if t_peer / t_ours < 1:
        print("WARNING: flatcli is slower than the plain loop")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
