"""Time flatcli's attacks against their peers on the same model and examples.

    python benchmarks/attack_speed.py --device cpu --arch small-cnn
    python benchmarks/attack_speed.py --device cuda --arch preact-resnet18 --n 1000

Pairs: flatcli PGD-20 (1 restart, step eps/4) vs torchattacks.PGD(steps=20, alpha=eps/4), and
flatcli APGD-CE vs the official APGDAttack (pyautoattack), 100 iterations each. small-cnn runs on
the digits test split after a few epochs of PGD adversarial training (tests/conftest.py);
preact-resnet18 runs with random weights on random CIFAR-shaped data labelled by the model's
own predictions (a speed check only). The official APGD attacks only clean-correct examples;
flatcli's APGD-CE attacks all of them because it also estimates the robust loss.
Per attack it prints the median time over --repeats (after one warm-up run; flatcli and the peer
alternate run by run), images/s, the ratio peer/flatcli (> 1: flatcli is faster) and both robust
errors; flatcli must be at least as strong within 1 point, otherwise a WARNING line is printed
(and the exit status is 1).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import speed  # noqa: E402  (benchmarks/speed.py, beside this script)

from flatcli import data, models  # noqa: E402
from flatcli.attacks.apgd import APGDCE  # noqa: E402
from flatcli.attacks.pgd import PGD  # noqa: E402


def parse_args(argv=None):
    parser = speed.parser(__doc__)
    parser.add_argument("--n", type=int, default=None,
                        help="examples (default: 400 for small-cnn, 256 for preact-resnet18)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--norm", choices=["linf", "l2"], default="linf")
    parser.add_argument("--eps", type=float, default=None,
                        help="default: 0.1 (digits) or 8/255 (CIFAR-shaped), 0.5 for l2")
    return parser.parse_args(argv)


def setup(args):
    """(model in eval mode on device, x, y, eps)."""
    device = torch.device(args.device)
    if args.arch == "small-cnn":
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import quick_adversarial_training  # a few epochs of PGD-3 AT on digits

        model = quick_adversarial_training("small-cnn", eps=0.1, seed=args.seed)
        x, y = data.load_split("digits", "test")
        n = min(args.n or 400, len(y))
        x, y = x[:n], y[:n]
        eps = args.eps if args.eps is not None else (0.1 if args.norm == "linf" else 0.5)
    else:
        if args.arch not in models.ARCHITECTURES:
            sys.exit(f"{args.arch} is not available in flatcli.models yet")
        model = speed.cifar_model(args.arch, args.seed)
        gen = torch.Generator().manual_seed(args.seed)
        n = args.n or 256
        x = torch.rand((n, 3, 32, 32), generator=gen)
        with torch.no_grad():  # labels = clean predictions, so that every example is attacked
            y = model.eval()(x).argmax(1)
        eps = args.eps if args.eps is not None else (8 / 255 if args.norm == "linf" else 0.5)
    for p in model.parameters():
        p.requires_grad_(False)  # attacks need input gradients only
    return model.eval().to(device), x.to(device), y.to(device), eps


def timed_pair(ours, peer, repeats, device):
    """Median seconds of `ours` and `peer` over `repeats` runs, after one warm-up run each.

    The two alternate run by run, so that load from elsewhere on the machine hits both alike.
    Returns (t_ours, t_peer, result_ours, result_peer), the results of the last runs.
    """
    ours(), peer()
    times_ours, times_peer = [], []
    for _ in range(repeats):
        t, result_ours = speed.timed_call(ours, device)
        times_ours.append(t)
        t, result_peer = speed.timed_call(peer, device)
        times_peer.append(t)
    return statistics.median(times_ours), statistics.median(times_peer), result_ours, result_peer


def error_of_points(model, x_adv, y) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(1) != y).float().mean().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    model, x, y, eps = setup(args)
    device = x.device
    n = len(y)
    with torch.no_grad():
        clean_err = (model(x).argmax(1) != y).float().mean().item()
    print(f"# arch={args.arch} device={args.device} n={n} norm={args.norm} eps={eps:.6g} "
          f"repeats={args.repeats} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"# clean error {100 * clean_err:.1f}%")

    import torchattacks
    from pyautoattack.autopgd_base import APGDAttack

    def flatcli_run(attack):
        def run():
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            starts = attack.draw_starts(x.cpu(), gen)
            starts = None if starts is None else starts.to(device)
            return 1.0 - attack(model, x, y, starts).correct.float().mean().item()

        return run

    pgd = PGD("pgd20", args.norm, eps, steps=20, step_size=eps / 4)
    ta_cls = torchattacks.PGD if args.norm == "linf" else torchattacks.PGDL2
    ta = ta_cls(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)

    def torchattacks_run():
        return error_of_points(model, ta(x, y), y)

    apgd = APGDCE("apgd-ce", args.norm, eps, steps=100)
    official = APGDAttack(model, n_iter=100, norm={"linf": "Linf", "l2": "L2"}[args.norm],
                          eps=eps, seed=args.seed, loss="ce", device=device)

    def official_run():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return error_of_points(model, official.perturb(x, y), y)

    pairs = [
        ("PGD-20", flatcli_run(pgd), f"torchattacks.{ta_cls.__name__}", torchattacks_run),
        ("APGD-CE-100", flatcli_run(apgd), "pyautoattack.APGDAttack", official_run),
    ]
    header = (f"{'attack':<12} {'impl':<26} {'median_s':>9} {'images/s':>10} "
              f"{'peer/flatcli':>12} {'robust_err':>10}")
    print(header)
    ok = True
    for label, ours, peer_name, peer in pairs:
        t_ours, t_peer, err_ours, err_peer = timed_pair(ours, peer, args.repeats, device)
        print(f"{label:<12} {'flatcli':<26} {t_ours:>9.3f} {n / t_ours:>10.1f} {'':>12} "
              f"{100 * err_ours:>9.1f}%")
        print(f"{label:<12} {peer_name:<26} {t_peer:>9.3f} {n / t_peer:>10.1f} "
              f"{t_peer / t_ours:>11.2f}x {100 * err_peer:>9.1f}%")
        if err_ours < err_peer - 0.01:
            ok = False
            print(f"WARNING: {label}: flatcli robust error {100 * err_ours:.1f}% is more than "
                  f"1 point below {peer_name}'s {100 * err_peer:.1f}%")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
