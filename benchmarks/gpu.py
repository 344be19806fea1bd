"""One command that shows the engine on a GPU: one table, flatcli vs its peers.

    python benchmarks/gpu.py --device cuda --out out/gpu     # < 5 min on one H100/H200
    python benchmarks/gpu.py --smoke --out /tmp/gpu          # CPU, tiny model, 32 examples
    bash benchmarks/gpu_device.sh                            # on the lent GPU machine

Rows, each per variant `--precision fp32|bf16` x `--compile off|on` (`flatcli train`: `--amp`):
- train: `flatcli train` (PGD-7 AT, batch 128) img/s of the last epoch. Its fp32 eager run's last
  checkpoint is the model of every other row (a quickly trained one, so robust errors mean
  something); if that run fails, a random-init model, and the header says so.
- pgd20 / apgd-ce / apgd-t: `flatcli attack` through flatcli.api vs torchattacks.PGD (20 steps,
  the same step 0.2229 eps) and the official AutoAttack APGDAttack / APGDAttack_targeted (100
  iterations, 9 target classes), same model, same examples, both robust errors.
- protocol: the per-checkpoint protocol of docs/method.md through flatcli.api: PGD-20x10 on the
  test and the train split, aa-lite, average flatness (10 samples, PGD-20 each), worst flatness
  (20 iterations x 10 restarts, xi 0.00075), one 51-point landscape (PGD-20, 128 examples), and
  their sum.
The data are synthetic and CIFAR-shaped (no dataset travels to the GPU machine): uint8 32x32x3,
one smooth random template per class plus pixel noise, written as an npz dataset.

Times: flatcli's are the sweep's `wall_time_s` of one checkpoint (load, clean pass, attack or
measure, fp32 re-evaluation), peers' the attack call alone. Medians of --repeats warm runs after a
cold one; `compile_s` is cold minus warm (runs longer than --long-s get one warm run with compile
on, none with it off). TFLOP are nominal: FlopCounterMode on one forward(+backward) of the model
times the passes the configuration implies (`nominal_flops`). Rows over --budget-s are not run
and say so; a row that fails shows its one-line error and the rest still run. The table is
printed (markdown) and written after every row as gpu_bench.{md,json,csv} under --out.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import speed  # noqa: E402  (benchmarks/speed.py, beside this script)

from flatcli import api  # noqa: E402
from flatcli.errors import one_line  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILES = ("off", "on", "auto")
ALL_VARIANTS = "fp32:off,fp32:on,bf16:off,bf16:on"
# The GPU targets on an H100/H200, and its fp32 training figure (img/s, H200, batch 128).
TARGET_PEER_RATIO = 3.0
ISSUE_TRAIN_FP32 = 2506.0
TARGET_TRAIN_RATIO = 2.0
TARGET_PROTOCOL_S = 20.0
PEERS = {"pgd20": "torchattacks.PGD", "apgd-ce": "APGDAttack", "apgd-t": "APGDAttack_targeted"}
PROTOCOL = ("pgd20x10-test", "pgd20x10-train", "aa-lite", "average", "worst", "landscape")
COLUMNS = (
    "row", "variant", "seconds", "compile_s", "img_s", "tflop", "tflops", "robust_err",
    "peer", "peer_s", "peer_robust_err", "peer_ratio", "n_examples", "note",
)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures: the model, the data, the examples per row."""

    arch: str
    image_size: int
    n: int  # examples of the attack and protocol rows (docs/method.md: 1000)
    landscape_n: int  # examples of the landscape (docs/method.md: 128)
    train_images: int
    train_epochs: int  # the last one is timed
    width: int | None = None  # the arch's first-layer channels (None: its default)
    classes: int = 10  # APGD-T attacks the top classes - 1 (at most 9) target classes

    def arch_kwargs(self) -> dict:
        return {} if self.width is None else {"width": self.width}


GPU_SIZES = Sizes("preact-resnet18", 32, 1000, 128, 4096, 2)
# tiny at width 16 after 6 epochs: robust errors well below chance, so that flatcli's and the
# peers' can differ; 4 classes: APGD-T runs 3 target classes, not 9 (the smoke's time)
SMOKE_SIZES = Sizes("tiny", 8, 32, 16, 512, 6, width=16, classes=4)


def parse_variants(text: str) -> list[tuple[str, str]]:
    """`fp32:off,bf16:on` -> [("fp32", "off"), ("bf16", "on")]."""
    variants = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        precision, _, compile_ = item.partition(":")
        if precision not in PRECISIONS or compile_ not in COMPILES:
            raise argparse.ArgumentTypeError(
                f"variant {item!r}: write PRECISION:COMPILE with PRECISION in "
                f"{'|'.join(PRECISIONS)} and COMPILE in {'|'.join(COMPILES)}"
            )
        variants.append((precision, compile_))
    if not variants:
        raise argparse.ArgumentTypeError("no variant given")
    return variants


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny model on 8x8x3, 32 examples, eager variants, one run "
                        "each: < 60 s")
    parser.add_argument("--out", type=Path, default=None, help="write gpu_bench.{md,json,csv}")
    parser.add_argument("--variants", type=parse_variants, default=None,
                        help=f"attack and train rows (default {ALL_VARIANTS}; smoke: "
                        "fp32:off,bf16:off)")
    parser.add_argument("--long-variants", type=parse_variants, default=None,
                        help="apgd-t and protocol rows (default fp32:off,bf16:on; smoke: "
                        "fp32:off)")
    parser.add_argument("--rows", default="train,pgd20,apgd-ce,apgd-t,protocol",
                        help="which groups of rows to run")
    parser.add_argument("--n", type=int, default=None, help="examples (default 1000; smoke 32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="warm runs per short row (default 3; smoke 1)")
    parser.add_argument("--long-s", type=float, default=None,
                        help="a cold run longer than this gets at most one warm run (default 2; "
                        "smoke 0)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="rows starting after this many seconds are not run (default: 270 "
                        "on CUDA, none on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="flatcli's (api default)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
    eager = [("fp32", "off"), ("bf16", "off")]
    args.variants = args.variants or (eager if args.smoke else parse_variants(ALL_VARIANTS))
    args.long_variants = args.long_variants or (eager[:1] if args.smoke else [("fp32", "off"),
                                                                              ("bf16", "on")])
    args.repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    args.long_s = args.long_s if args.long_s is not None else (0.0 if args.smoke else 2.0)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device available")
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    args.sizes = dataclasses.replace(sizes, n=args.n or sizes.n)
    if args.budget_s is None and args.device.startswith("cuda"):
        args.budget_s = 270.0
    return args


# ---------------------------------------------------------------------------------------------
# data and model


def synthetic_dataset(path: Path, sizes: Sizes, seed: int = 0) -> str:
    """A CIFAR-like npz dataset (uint8 NHWC): per class a smooth random template (4x4 blocks)
    plus Gaussian pixel noise (std 0.25), learnable but not trivially robust. Its test split
    (x_test less flatcli's held-out min(500, N // 5)) holds at least n and landscape_n examples.
    """
    rng = np.random.default_rng(seed)
    size, classes = sizes.image_size, sizes.classes
    blocks = rng.uniform(0.2, 0.8, (classes, 4, 4, 3))
    templates = blocks.repeat(size // 4, axis=1).repeat(size // 4, axis=2)

    def split(n: int):
        y = np.arange(n) % classes
        x = templates[y] + rng.normal(0.0, 0.25, (n, size, size, 3))
        return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), y

    x_train, y_train = split(max(sizes.train_images, sizes.n))
    x_test, y_test = split(max(sizes.n, sizes.landscape_n) + 500)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def random_checkpoint(root: Path, sizes: Sizes, dataset: str, seed: int) -> Path:
    """A random-init model of `sizes.arch` saved in flatcli's format (when training failed)."""
    from flatcli import checkpoints, models

    torch.manual_seed(seed)
    model = models.build(sizes.arch, sizes.classes, 3, **sizes.arch_kwargs())
    return checkpoints.save_checkpoint(root / "random" / "model.safetensors", model, sizes.arch,
                                       sizes.arch_kwargs(), dataset, None)


def flops_per_example(model: torch.nn.Module, size: int, device) -> dict[str, float]:
    """FlopCounterMode FLOPs of one example: `fwd`, `fb_input` (forward + backward to the input,
    weights frozen: an attack step), `fb_full` (forward + backward to input and weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand((2, 3, size, size), device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    counts = {}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    counts["fwd"] = counter.get_total_flops() / 2
    saved = [p.requires_grad for p in model.parameters()]
    for weights in (False, True):
        for p in model.parameters():
            p.requires_grad_(weights)
        xg = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            torch.nn.functional.cross_entropy(model(xg), y).backward()
        counts["fb_full" if weights else "fb_input"] = counter.get_total_flops() / 2
    for p, s in zip(model.parameters(), saved, strict=True):
        p.requires_grad_(s)
        p.grad = None
    return counts


def nominal_flops(row: str, n: int, f: dict[str, float], robust_err: float | None = None,
                  classes: int = 10) -> float:
    """FLOPs a row's configuration implies on n examples (f: `flops_per_example`).

    PGD-S x R: S R attack steps and R + 1 forwards (clean, each restart's end); APGD-CE: 100
    steps; average flatness: the attack at w and at each of the 10 samples; worst: the reference
    attack plus 20 x 10 joint steps (input and weight gradients) and a forward per restart;
    landscape: the attack and a clean forward per point; train: 7 attack steps and one training
    step per image. APGD-T (alone and in aa-lite) runs 100 steps per target class on the
    examples not yet broken, so it is counted on those robust at the end (a lower bound).
    Checked against FlopCounterMode around the api calls (tiny model, CPU): pgd20, average and
    worst 1.00, apgd-ce and aa-lite 1.01, landscape 0.98 of the measured FLOPs.
    """
    targets = min(9, classes - 1)

    def pgd(steps, restarts):
        return steps * restarts * f["fb_input"] + (restarts + 1) * f["fwd"]

    per_example = {
        "pgd20": pgd(20, 1),
        "apgd-ce": pgd(100, 1),
        "pgd20x10-test": pgd(20, 10),
        "pgd20x10-train": pgd(20, 10),
        "average": 11 * pgd(20, 1) + f["fwd"],
        "worst": pgd(20, 1) + 200 * f["fb_full"] + 10 * f["fwd"],
        "landscape": 51 * (pgd(20, 1) + f["fwd"]),
        "train": 7 * f["fb_input"] + f["fb_full"],
    }
    if row in ("apgd-t", "aa-lite"):
        robust = 1.0 - (robust_err if robust_err is not None else 0.0)
        first = pgd(100, 1) if row == "aa-lite" else 2 * f["fwd"]
        return n * (first + robust * targets * 100 * f["fb_input"])
    return n * per_example[row]


# ---------------------------------------------------------------------------------------------
# timing


def timed_runs(run: Callable[[], tuple[float, dict]], repeats: int, long_s: float,
               compiled: bool) -> tuple[float, float | None, dict]:
    """(median warm seconds, compile seconds or None, the last run's results).

    `run` returns (seconds, results). One cold run, then `repeats` warm ones, or (cold run
    longer than `long_s`) one warm run when compiling, none otherwise (then the cold time).
    """
    cold, result = run()
    warm_runs = repeats if cold < long_s else (1 if compiled else 0)
    times = []
    for _ in range(warm_runs):
        seconds, result = run()
        times.append(seconds)
    if not times:
        return cold, None, result
    median = statistics.median(times)
    return median, (cold - median if compiled else None), result


# ---------------------------------------------------------------------------------------------
# the rows


class Bench:
    """Runs the rows in order against a time budget; every row ends up in `self.rows`."""

    def __init__(self, args, root: Path):
        self.args, self.sizes, self.root = args, args.sizes, root
        self.device = torch.device(args.device)
        self.started = time.perf_counter()
        self.date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.rows: list[dict] = []
        self.dataset = synthetic_dataset(root / "synthetic.npz", self.sizes, args.seed)
        self.checkpoint: Path | None = None
        self.model_note = ""
        self.eps = 8 / 255
        from flatcli import models

        model = models.build(self.sizes.arch, self.sizes.classes, 3,
                             **self.sizes.arch_kwargs()).eval().to(self.device)
        self.flops = flops_per_example(model, self.sizes.image_size, self.device)

    # -- bookkeeping

    def over_budget(self) -> bool:
        budget = self.args.budget_s
        return budget is not None and time.perf_counter() - self.started > budget

    def add(self, row: str, variant: tuple[str, str], compute: Callable[[], dict]) -> dict:
        """Run one row-variant (unless over budget); a failure becomes its one-line note."""
        entry = {c: None for c in COLUMNS} | {"row": row, "variant": ":".join(variant)}
        if self.over_budget():
            entry["note"] = f"not run: --budget-s {self.args.budget_s:g} spent"
        else:
            try:
                entry.update(compute())
            except Exception as err:  # one failing row must not stop the table
                entry["note"] = f"error: {one_line(err)}"
        self.rows.append(entry)
        done = f"{entry['seconds']:.3g} s" if entry["seconds"] is not None else entry["note"]
        print(f"[{time.perf_counter() - self.started:5.0f} s] {row} {entry['variant']}: {done}",
              file=sys.stderr, flush=True)
        if self.args.out is not None:
            write_outputs(self.args.out, self.header(), self.rows)
        return entry

    def header(self) -> dict:
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "date": self.date,
            "device": gpu,
            "torch": torch.__version__,
            "arch": self.sizes.arch,
            "data": f"synthetic CIFAR-like {self.sizes.image_size}x{self.sizes.image_size}x3 "
                    "(class templates + noise; no real dataset)",
            "n_examples": self.sizes.n,
            "eps": self.eps,
            "model": self.model_note,
            "threads": torch.get_num_threads(),
            "flops_per_example": self.flops,
        }

    def api_options(self, variant, **options) -> dict:
        precision, compile_ = variant
        extra = {} if self.args.batch_size is None else {"batch_size": self.args.batch_size}
        return dict(device=self.args.device, seed=self.args.seed, precision=precision,
                    compile=compile_, eps=self.eps, **extra, **options)

    def api_run(self, call, variant, **options) -> tuple[float, object]:
        """(the sweep's wall_time_s, the rows DataFrame) of one flatcli.api call."""
        speed.synchronize(self.device)
        frame = call(str(self.checkpoint), **self.api_options(variant, **options))
        return float(frame["wall_time_s"].iloc[0]), frame

    def with_flops(self, row: str, seconds: float, n: int, robust_err=None) -> dict:
        flop = nominal_flops(row, n, self.flops, robust_err, self.sizes.classes)
        return {"seconds": seconds, "tflop": flop / 1e12, "tflops": flop / seconds / 1e12,
                "img_s": n / seconds, "n_examples": n}

    # -- train

    def train_row(self, variant) -> dict:
        from flatcli.config.commands import TrainConfig
        from flatcli.training import train

        precision, compile_ = variant
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"flatcli train has --amp none|bf16, not {precision}")
        out = self.root / f"train-{precision}-{compile_}"
        config = TrainConfig(
            dataset=self.dataset, arch=self.sizes.arch, width=self.sizes.width, eps=self.eps,
            attack="pgd7", epochs=self.sizes.train_epochs, milestones=(1000,), heldout_every=1000,
            heldout_attack="pgd1", heldout_examples=16, device=self.args.device,
            amp="bf16" if precision == "bf16" else "none", compile=compile_, seed=self.args.seed,
        )
        result = train(config, out, force=True)
        first, last = result.rows[0], result.rows[-1]
        if self.checkpoint is None and last.get("checkpoint"):
            self.checkpoint = Path(last["checkpoint"])
            self.model_note = (f"trained by the train row {precision}:{compile_} "
                               f"({self.sizes.train_epochs} epochs PGD-7 AT)")
        seconds, n = last["epoch_time_s"], last["n_examples"]
        compile_s = first["epoch_time_s"] - seconds if compile_ != "off" else None
        note = f"last of {len(result.rows)} epochs; first epoch {first['epoch_time_s']:.2f} s"
        return {**self.with_flops("train", seconds, n), "compile_s": compile_s, "note": note}

    def ensure_model(self) -> None:
        if self.checkpoint is None:
            self.checkpoint = random_checkpoint(self.root, self.sizes, self.dataset,
                                                self.args.seed)
            self.model_note = "random init (no train row made a checkpoint)"

    # -- attacks vs peers

    def peer(self, name: str):
        """(the peer's model, fn() -> its adversarial points) for flatcli's attack `name`, on
        the same checkpoint and the same first n test examples as flatcli's rows."""
        model = api.load_model(self.checkpoint, device=self.args.device)
        for p in model.parameters():
            p.requires_grad_(False)
        x, y = self.examples()
        if name == "pgd20":
            import torchattacks

            from flatcli.attacks.presets import PAPER_STEP_RATIO

            attack = torchattacks.PGD(model, eps=self.eps, alpha=PAPER_STEP_RATIO * self.eps,
                                      steps=20, random_start=True)
            return model, lambda: attack(x, y)
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

        common = dict(n_iter=100, norm="Linf", eps=self.eps, seed=self.args.seed,
                      device=self.device)
        if name == "apgd-ce":
            official = APGDAttack(model, loss="ce", **common)
        else:
            targets = min(9, self.sizes.classes - 1)
            official = APGDAttack_targeted(model, n_target_classes=targets, **common)
        devices = [self.device] if self.device.type == "cuda" else []

        def perturb():
            with torch.random.fork_rng(devices=devices):
                return official.perturb(x, y)

        return model, perturb

    def examples(self):
        x, y = api.load_examples(self.dataset, "test", self.sizes.n)
        return x.to(self.device), y.to(self.device)

    def peer_row(self, name: str) -> dict:
        torch.manual_seed(self.args.seed)  # torchattacks draws its starts from the global RNG
        model, attack = self.peer(name)
        _, y = self.examples()

        def run():
            seconds, points = speed.timed_call(attack, self.device)
            with torch.no_grad():
                wrong = (model(points).argmax(1) != y).float().mean().item()
            return seconds, {"err": wrong}

        seconds, _, result = timed_runs(run, self.args.repeats, self.args.long_s, False)
        return {"peer": PEERS[name], "peer_s": seconds, "peer_robust_err": result["err"],
                "peer_n": len(y)}

    def peer_or_error(self, name: str) -> dict:
        """`peer_row`, or {"error": why not} (over budget, or its one-line error)."""
        if self.over_budget():
            return {"error": "not run (over budget)"}
        try:
            return self.peer_row(name)
        except Exception as err:  # the flatcli rows still run
            return {"error": one_line(err)}

    def attack_row(self, name: str, variant, peer: dict) -> dict:
        def run():
            seconds, frame = self.api_run(api.attack, variant, attacks=name,
                                          n_examples=self.sizes.n)
            return seconds, {"err": float(frame["robust_err"].iloc[0]),
                             "n": int(frame["n_examples"].iloc[0])}

        seconds, compile_s, result = timed_runs(run, self.args.repeats, self.args.long_s,
                                                variant[1] != "off")
        entry = {**self.with_flops(name, seconds, result["n"], result["err"]),
                 "compile_s": compile_s, "robust_err": result["err"]}
        if peer.get("peer_s"):
            entry.update({k: peer[k] for k in ("peer", "peer_s", "peer_robust_err")},
                         peer_ratio=peer["peer_s"] / seconds)
            if peer["peer_n"] != result["n"]:
                entry["note"] = f"peer ran on {peer['peer_n']} examples, flatcli on {result['n']}"
        else:
            entry["note"] = f"peer failed: {peer.get('error')}"
        return entry

    # -- protocol

    def protocol_part(self, part: str, variant) -> tuple[float, float | None, float | None]:
        """(seconds, robust error or None, n examples) of one part of the protocol."""
        n = self.sizes.n
        if part.startswith("pgd20x10"):
            split = part.rsplit("-", 1)[1]
            seconds, frame = self.api_run(api.attack, variant, attacks="pgd20x10", split=split,
                                          n_examples=n)
            return seconds, float(frame["robust_err"].iloc[0]), n
        if part == "aa-lite":
            seconds, frame = self.api_run(api.attack, variant, attacks="aa-lite", n_examples=n)
            return seconds, float(frame["robust_err"].iloc[0]), n
        if part == "average":
            seconds, _ = self.api_run(api.flatness, variant, measures="average", samples=10,
                                      attack="pgd20", n_examples=n)
            return seconds, None, n
        if part == "worst":
            seconds, _ = self.api_run(api.flatness, variant, measures="worst", xi=0.00075,
                                      iterations=20, restarts=10, attack="pgd20", n_examples=n)
            return seconds, None, n
        seconds, _ = self.api_run(api.landscape, variant, directions="random", n_directions=1,
                                  steps=51, attack="pgd20", n_examples=self.sizes.landscape_n)
        return seconds, None, self.sizes.landscape_n

    def protocol_row(self, part: str, variant) -> dict:
        def run():
            seconds, err, n = self.protocol_part(part, variant)
            return seconds, {"err": err, "n": n}

        seconds, compile_s, result = timed_runs(run, self.args.repeats, self.args.long_s,
                                                variant[1] != "off")
        return {**self.with_flops(part, seconds, result["n"], result["err"]),
                "compile_s": compile_s, "robust_err": result["err"]}

    def protocol_total(self, variant) -> dict:
        label = ":".join(variant)
        parts = [r for r in self.rows if r["row"] in PROTOCOL and r["variant"] == label]
        missing = [r["row"] for r in parts if r["seconds"] is None]
        if missing or len(parts) != len(PROTOCOL):
            raise RuntimeError(f"parts without a time: {', '.join(missing) or 'not run'}")
        seconds = sum(r["seconds"] for r in parts)
        tflop = sum(r["tflop"] for r in parts)
        compiles = [r["compile_s"] for r in parts if r["compile_s"] is not None]
        return {"seconds": seconds, "tflop": tflop, "tflops": tflop / seconds,
                "compile_s": sum(compiles) if compiles else None,
                "note": f"per checkpoint; target <= {TARGET_PROTOCOL_S:g} s"}

    # -- the order

    def run(self) -> list[dict]:
        """All rows, cheapest and most telling first (the budget cuts the tail): the first
        train variant (it makes the model), pgd20, apgd-ce, the other train variants, the
        protocol, apgd-t (the heaviest: 100 steps per target class)."""
        groups = set(self.args.rows.split(","))
        variants, long_variants = self.args.variants, self.args.long_variants
        first, *others = variants
        if "train" in groups:
            self.add("train", first, lambda: self.train_row(first))
        self.ensure_model()
        for name in ("pgd20", "apgd-ce"):
            if name in groups:
                self.attack_rows(name, variants)
        if "train" in groups:
            for variant in others:
                self.add("train", variant, lambda v=variant: self.train_row(v))
        if "protocol" in groups:
            for variant in long_variants:
                for part in PROTOCOL:
                    self.add(part, variant, lambda p=part, v=variant: self.protocol_row(p, v))
                self.add("protocol", variant, lambda v=variant: self.protocol_total(v))
        if "apgd-t" in groups:
            self.attack_rows("apgd-t", long_variants)
        return self.rows

    def attack_rows(self, name: str, variants) -> None:
        peer = self.peer_or_error(name)
        for variant in variants:
            self.add(name, variant, lambda v=variant: self.attack_row(name, v, peer))


# ---------------------------------------------------------------------------------------------
# output


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def markdown(header: dict, rows: list[dict]) -> str:
    flops = header.get("flops_per_example") or {}
    lines = [
        f"# flatcli GPU benchmark, {header['date']}",
        f"device {header['device']}, torch {header['torch']}, {header['arch']}, data: "
        f"{header['data']}, {header['n_examples']} examples, eps {header['eps']:.6g}",
        f"model: {header['model']}; GFLOP per example: "
        + ", ".join(f"{k} {v / 1e9:.3g}" for k, v in flops.items()),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = {**row, **{k: None if row[k] is None else 100 * row[k]
                           for k in ("robust_err", "peer_robust_err")}}
        lines.append("| " + " | ".join(_cell(cells[c]) for c in COLUMNS) + " |")
    lines.append("")
    lines.append(
        "(robust errors in %; seconds: medians of warm runs; flatcli: the sweep's wall_time_s of "
        "one checkpoint through flatcli.api (load, clean pass, measure), peers: the attack call, "
        "train: the last epoch; compile_s: cold run minus warm (compile on/auto); TFLOP nominal, "
        "see nominal_flops)"
    )
    return "\n".join(lines + [""] + ratios(rows))


def ratios(rows: list[dict]) -> list[str]:
    """The comparisons against the peers and the GPU targets, one line each."""
    lines = []
    for row in rows:
        if row.get("peer_ratio") is not None:
            ours, theirs = row["robust_err"], row["peer_robust_err"]
            lines.append(
                f"{row['row']} {row['variant']} vs {row['peer']}: {row['peer_ratio']:.2f}x "
                f"(target {TARGET_PEER_RATIO:g}x at equal or stronger robust error); robust error "
                f"{100 * ours:.1f}% vs {100 * theirs:.1f}%"
                + (" WEAKER than the peer" if ours < theirs else "")
            )
    trains = {r["variant"]: r for r in rows if r["row"] == "train" and r["img_s"]}
    for label, row in trains.items():
        line = (f"train {label}: {row['img_s']:.0f} img/s = {row['img_s'] / ISSUE_TRAIN_FP32:.2f}x "
                f"the issue's fp32 {ISSUE_TRAIN_FP32:g} img/s (target for bf16: "
                f"{TARGET_TRAIN_RATIO:g}x)")
        if "fp32:off" in trains and label != "fp32:off":
            line += f"; {row['img_s'] / trains['fp32:off']['img_s']:.2f}x this run's fp32:off"
        lines.append(line)
    for row in rows:
        if row["row"] == "protocol" and row["seconds"] is not None:
            lines.append(f"protocol {row['variant']}: {row['seconds']:.1f} s per checkpoint "
                         f"(target <= {TARGET_PROTOCOL_S:g} s), {row['tflops']:.3g} TFLOP/s")
    return lines


def write_outputs(out: Path, header: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.md").write_text(markdown(header, rows))
    (out / "gpu_bench.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    with open(out / "gpu_bench.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="flatcli-gpu-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        rows = bench.run()
        header = bench.header()
    print(markdown(header, rows), flush=True)
    if args.out is not None:
        write_outputs(args.out, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
