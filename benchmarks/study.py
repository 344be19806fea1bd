"""The cost of a study at real size: time and peak memory of each piece, as a user runs them.

    python benchmarks/study.py --dataset fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
    python benchmarks/study.py --smoke --out /tmp/study      # digits, tiny sizes (the test suite)

Every piece is one `flatcli` command in its own process (`python -m flatcli ...`), so its peak
memory is that process's maximum resident set (`os.wait4`), and its time is the row's
`wall_time_s` (one checkpoint: load, data, measure) beside the command's wall time (with Python
and torch start-up). `--smoke` runs the commands in this process instead (a check of the
plumbing: its memory column is this process's peak so far):
- train: `flatcli train` (PGD-7 AT, batch 128) for --epochs on the first --train-examples
  images; train img/s = examples / the last epoch's `epoch_time_s`.
- the per-checkpoint protocol (docs/method.md) on that run's last checkpoint: PGD-20x10 on --n
  test and --n train examples, aa-lite on --n, average flatness (10 samples, PGD-20 each),
  worst-case flatness (20 iterations x 10 restarts), one 51-point landscape (PGD-20) on
  --landscape-n; `protocol` is their sum.
- torchattacks.PGD (20 steps, the same step, random start) x 10 restarts on the same model and
  the same --n test examples, in this process (time of the attack calls, peak memory of this
  process), beside flatcli's PGD-20x10 row, with both robust errors.
The table (markdown) is printed and written to OUT/study.md and OUT/study.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flatcli import checkpoints, data  # noqa: E402

FULL = dict(n=1000, landscape_n=128, samples=10, iterations=20, restarts=10, steps=51,
            pgd_steps=20, epochs=1, train_examples=60000)
SMOKE = dict(n=16, landscape_n=16, samples=1, iterations=2, restarts=2, steps=3, pgd_steps=2,
             epochs=1, train_examples=64)
COLUMNS = ("piece", "command_s", "checkpoint_s", "peak_mb", "img_s", "robust_err", "note")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None, help="FLATCLI_DATA_DIR for the dataset")
    parser.add_argument("--out", type=Path, default=Path("out/study"))
    parser.add_argument("--smoke", action="store_true", help="digits, tiny sizes, a minute")
    parser.add_argument("--arch", default=None, help="default: the dataset's")
    parser.add_argument("--width", type=int, default=None, help="default: the architecture's")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} ({SMOKE[key]} with --smoke)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each piece")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="measure the protocol on this checkpoint; no train row")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.smoke:
        args.dataset, args.data_dir = "digits", None
        args.arch = args.arch or "tiny"
    return args


def run_piece(args, command: list[str]) -> tuple[float, float, list[dict]]:
    """(wall seconds, peak resident MB, jsonl rows) of one `python -m flatcli` process (with
    --smoke: of `flatcli.cli.main` in this process, peak = this process's so far)."""
    if args.smoke:
        return _in_process(args, command)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLATCLI_QUIET": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    full = [sys.executable, "-m", "flatcli", *command, "--format", "jsonl", "--device", args.device]
    start = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(full)} exited {proc.returncode}: {err.decode()[-500:]}")
    rows = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return seconds, usage.ru_maxrss / 1024, rows  # Linux: ru_maxrss in KiB


def _in_process(args, command: list[str]) -> tuple[float, float, list[dict]]:
    from flatcli.cli import main as flatcli

    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        try:
            flatcli([*command, "--format", "jsonl", "--device", args.device, "--quiet"])
        except SystemExit as exit_:
            if exit_.code:
                raise RuntimeError(f"flatcli {shlex.join(command)} exited {exit_.code}") from None
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rows


def cpu_model() -> str:
    """/proc/cpuinfo's model name (Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def data_args(args) -> list[str]:
    return ["--dataset", args.dataset] + (["--data-dir", args.data_dir] if args.data_dir else [])


def pieces(args, checkpoint: Path) -> dict[str, list[str]]:
    ckpt, out = str(checkpoint), str(args.out / "tables")
    common = [ckpt, "--out", out, *data_args(args), "--force"]
    pgd, pgd_r = f"pgd{args.pgd_steps}", f"pgd{args.pgd_steps}x{args.restarts}"
    n = ["--n-examples", str(args.n)]
    return {
        f"{pgd_r} test": ["attack", *common, "--attacks", pgd_r, *n],
        f"{pgd_r} train": ["attack", *common, "--attacks", pgd_r, *n, "--split", "train"],
        "aa-lite": ["attack", *common, "--attacks", "aa-lite", *n],
        f"average flatness ({args.samples} x {pgd})": [
            "flatness", *common, "--measure", "average", "--samples", str(args.samples),
            "--attack", pgd, *n],
        f"worst flatness ({args.iterations} x {args.restarts})": [
            "flatness", *common, "--measure", "worst", "--iterations", str(args.iterations),
            "--restarts", str(args.restarts), "--attack", pgd_r, *n],
        f"landscape ({args.steps} points, {args.landscape_n} examples)": [
            "landscape", *common, "--n-directions", "1", "--steps", str(args.steps),
            "--attack", pgd, "--n-examples", str(args.landscape_n)],
    }


def peer_row(args, checkpoint: Path, eps: float, step: float) -> dict:
    """torchattacks.PGD x restarts on the same model and test examples, in this process."""
    try:
        import torchattacks
    except ImportError:
        return {"piece": "torchattacks.PGD", "note": "torchattacks is not installed"}
    model = checkpoints.load_model(checkpoint, device=torch.device(args.device))[0].eval()
    x, y = data.load_split(args.dataset, "test", args.n, args.data_dir)
    x, y = x.to(args.device), y.to(args.device)
    attack = torchattacks.PGD(model, eps=eps, alpha=step, steps=args.pgd_steps, random_start=True)
    torch.manual_seed(0)
    broken = torch.zeros_like(y, dtype=torch.bool)
    start = time.perf_counter()
    for _ in range(args.restarts):
        for i in range(0, len(y), 128):
            adv = attack(x[i:i + 128], y[i:i + 128])
            with torch.no_grad():
                broken[i:i + 128] |= model(adv).argmax(1) != y[i:i + 128]
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"piece": f"torchattacks.PGD {args.pgd_steps} steps x {args.restarts} test",
            "checkpoint_s": seconds, "peak_mb": peak,
            "robust_err": broken.float().mean().item(),
            "note": "the attack calls only, batches of 128, in the benchmark's process"}


def measure(args, on_row=lambda header, table: None) -> tuple[dict, list[dict]]:
    """(header, rows); `on_row(header, rows so far)` after every row."""
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"dataset": args.dataset, "arch": None, "device": args.device,
              "cpu": cpu_model(), "cores": os.cpu_count(),
              "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
              "command": shlex.join(["benchmarks/study.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d"), "load_average": round(os.getloadavg()[0], 1)}
    if args.checkpoint is not None:
        table: list[dict] = []
        checkpoint = args.checkpoint
        header["arch"] = (checkpoints.read_sidecar(checkpoint) or {}).get("arch")
    else:
        table, checkpoint = train_row(args, header)
        on_row(header, table)
    return protocol(args, header, table, checkpoint, on_row)


def train_row(args, header: dict) -> tuple[list[dict], Path]:
    run = args.out / "runs" / "study"
    train = ["train", *data_args(args), "--epochs", str(args.epochs), "--train-examples",
             str(args.train_examples), "--out", str(run), "--force"]
    if args.arch:
        train += ["--arch", args.arch]
    if args.width:
        train += ["--width", str(args.width)]
    if args.smoke:
        train += ["--heldout-examples", "16"]
    seconds, peak, rows = run_piece(args, train)
    last = rows[-1]
    img_s = last["n_examples"] / last["epoch_time_s"]
    table = [{"piece": f"train ({args.epochs} epoch(s) of {last['n_examples']} images, PGD-7 AT)",
              "command_s": seconds, "checkpoint_s": last["epoch_time_s"], "peak_mb": peak,
              "img_s": img_s, "note": "checkpoint_s: the last epoch"}]
    header["arch"] = last["arch"]
    return table, checkpoints.discover([run])[-1].path


def protocol(args, header: dict, table: list[dict], checkpoint: Path, on_row):
    total = 0.0
    pgd_step = None
    for name, command in pieces(args, checkpoint).items():
        seconds, peak, rows = run_piece(args, command)
        wall = max(r["wall_time_s"] for r in rows)  # one checkpoint: every row carries its time
        total += wall
        errs = [r.get("robust_err") for r in rows if r.get("robust_err") is not None]
        if name.endswith(" test"):
            pgd_step = rows[0].get("step_size")
        table.append({"piece": name, "command_s": seconds, "checkpoint_s": wall, "peak_mb": peak,
                      "robust_err": errs[0] if errs else None})
        on_row(header, table)
    table.append({"piece": "protocol (sum per checkpoint)", "checkpoint_s": total})
    eps = float(rows[0]["eps"])
    table.append(peer_row(args, checkpoint, eps, float(pgd_step or eps / 4)))
    ours = next(r for r in table if r["piece"].endswith(" test"))
    peer = table[-1]
    if peer.get("checkpoint_s") and ours.get("checkpoint_s"):
        peer["note"] = (peer.get("note") or "") + (
            f"; flatcli's row / this: {ours['checkpoint_s'] / peer['checkpoint_s']:.2f}x time")
    header["load_average_end"] = round(os.getloadavg()[0], 1)
    on_row(header, table)
    return header, table


def markdown(header: dict, table: list[dict]) -> str:
    lines = [", ".join(f"{k}: {v}" for k, v in header.items()), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in table:
        cells = []
        for column in COLUMNS:
            value = row.get(column)
            cells.append("" if value is None else f"{value:.4g}" if isinstance(value, float)
                         else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)  # this process: --smoke's pieces and the peer
    header, table = measure(args, lambda header, table: save(args.out, header, table))
    print(markdown(header, table))
    return 0


def save(out: Path, header: dict, table: list[dict]) -> None:
    """study.md and study.json under `out`, rewritten after every row (a cut run keeps them)."""
    (out / "study.md").write_text(markdown(header, table))
    (out / "study.json").write_text(json.dumps({"header": header, "rows": table}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
