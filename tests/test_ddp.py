"""`torchrun --nproc-per-node 2 -m flatcli train` on CPU (gloo): the same weights as one process
where the maths allows, and a resume after a worker is killed.

Where the maths allows: each rank takes every other example of the global batch (so a global
step sees the same examples as one process), and DDP averages the ranks' gradients of their
mean losses, which is the gradient of the whole batch's mean loss. BatchNorm breaks this: each
rank normalizes by its own half batch's statistics, so a model with BN trains to other (equally
valid) weights under DDP. Random PGD starts are drawn per rank, so the comparison also uses
`--no-random-start`. Hence `tiny-nobn` (tiny without BN) for the equality.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from flatcli import checkpoints
from flatcli.training.loop import read_run

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--arch", "tiny-nobn", "--epochs", "4", "--train-examples", "480",
        "--heldout-examples", "32", "--batch-size", "32", "--no-random-start", "-q"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "flatcli"]

pytestmark = pytest.mark.slow  # three torchrun launches: about 60 s on 2 busy cores


def _torchrun(out: Path) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, *ARGS, "--out", str(out)], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def _failure(err: str) -> str:
    """What a failed launch printed: the ranks' own lines (they share torchrun's stderr, before
    its summary) and the summary's end, which alone names only the signal."""
    ranks, _, summary = err.partition("Traceback (most recent call last)")
    return f"{ranks[-4000:]}\n...\n{summary[-1500:]}"


def _weights(run: Path, epoch: int) -> dict:
    return load_file(run / f"epoch_{epoch:04d}.safetensors")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    code, err = _finish(_torchrun(out))
    assert code == 0, _failure(err)
    return out


def test_two_gloo_processes_train_the_weights_of_one(ddp_run, tmp_path):
    one = subprocess.run([sys.executable, "-m", "flatcli", *ARGS, "--out", str(tmp_path / "one")],
                         env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    assert read_run(ddp_run)["world_size"] == 2 and read_run(tmp_path / "one")["world_size"] == 1
    for epoch in (1, 4):
        ddp, single = _weights(ddp_run, epoch), _weights(tmp_path / "one", epoch)
        assert ddp.keys() == single.keys()
        for name in ddp:  # equal up to the order of float sums (measured: 3e-8 after 4 epochs)
            assert (ddp[name] - single[name]).abs().max() < 1e-6, name
    moved = _weights(ddp_run, 4)["net.0.weight"] - _weights(ddp_run, 1)["net.0.weight"]
    assert moved.abs().max() > 1e-3  # it trained


def _worker(torchrun: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of this local rank (a child of torchrun's process)."""
    children = Path(f"/proc/{torchrun.pid}/task/{torchrun.pid}/children").read_text().split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker of local rank {rank} among {children}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_worker_then_the_same_command_resumes(ddp_run, tmp_path):
    out = tmp_path / "run"
    first = _torchrun(out)
    deadline = time.monotonic() + 180
    while not (out / "epoch_0001.safetensors").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    os.kill(_worker(first, 1), signal.SIGKILL)
    code, err = _finish(first)
    assert code != 0, "torchrun should fail when a worker dies"
    written = [r.epoch for r in checkpoints.discover([out])]
    assert 1 <= len(written) < 4, written
    kept = {e: (out / f"epoch_{e:04d}.safetensors").stat().st_mtime_ns for e in written}

    code, err = _finish(_torchrun(out))  # the same command again
    assert code == 0, _failure(err)
    assert [r.epoch for r in checkpoints.discover([out])] == [1, 2, 3, 4]
    assert read_run(out)["status"] == "done"
    for epoch, mtime in kept.items():  # the epochs done before the kill are not trained again
        assert (out / f"epoch_{epoch:04d}.safetensors").stat().st_mtime_ns == mtime
    resumed, uninterrupted = _weights(out, 4), _weights(ddp_run, 4)
    for name in resumed:  # every draw derives from (seed, epoch, rank): the same weights
        assert (resumed[name] - uninterrupted[name]).abs().max() < 1e-6, name
