"""examples/slurm/evaluate.sbatch on a real one-node Slurm cluster started on localhost.

The fixture starts `slurmctld` and `slurmd` (Debian's slurm-wlm) in the foreground from a
generated slurm.conf in a temporary folder (auth/none: no munge needed), on free ports, and
stops them after. The script is submitted as the README tells a user on a partition without
GPUs: `sbatch --gres=none --cpus-per-task=N --mem=M --array=... evaluate.sbatch RUNS OUT`.
Skipped, with the reason, where the Slurm binaries or root are missing (`.ci/run` installs
slurm-wlm). About 80 s on 2 cores.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "evaluate.sbatch"
SAMPLES = ROOT / "sample_checkpoints" / "at"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
MISSING = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
# The documented override for a partition without GPUs, sized for this one-node test cluster.
CPU_PARTITION = ["--gres=none", "--cpus-per-task=1", "--mem=500M"]
TINY = {"N_EXAMPLES": "16", "TRAIN_EXAMPLES": "16", "ATTACKS": "pgd2", "SAMPLES": "1",
        "FLATNESS_ATTACK": "pgd2", "ITERATIONS": "2", "RESTARTS": "1"}
PROVENANCE = ["wall_time_s", "created_at"]  # when and how long: the only columns that may differ

def needs_slurm(test):
    """Skipped, with the reason, without Slurm's binaries or root; slow (a minute)."""
    for mark in (
        pytest.mark.skipif(bool(MISSING), reason=f"Slurm not installed (no {', '.join(MISSING)}"
                           "; apt-get install slurm-wlm)"),
        pytest.mark.skipif(os.geteuid() != 0, reason="slurmd must run as root to launch jobs"),
        pytest.mark.slow,
    ):
        test = mark(test)
    return test


def test_sigterm_is_an_interrupt_inside_a_command_only():
    """Slurm ends a task (scancel, time limit, preemption) with SIGTERM: flatcli stops as on
    Ctrl-C (exit 143, what is written stays) and restores the previous handler after."""
    from flatcli.cli import Terminated, _sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), _sigterm_unwinds():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    ctld, slurmd = _free_port(), _free_port()
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(f"""\
ClusterName=flatcli-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# a requeued job starts again cred_expire + 1 s after the requeue (default 120 s)
AuthInfo=cred_expire=5
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    return conf


def _wait(predicate, timeout: float, what: str, log: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = _conf(folder)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        self.env.update(SLURM_CONF=str(self.conf), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                        FLATCLI=f"{shlex.quote(sys.executable)} -m flatcli")
        self.daemons = [
            subprocess.Popen([_binary(d), "-D", "-f", str(self.conf)], env=self.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for d in ("slurmctld", "slurmd")
        ]
        _wait(lambda: self.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", 60,
              "the node to be idle", folder / "slurmd.log")

    def run(self, *args: str, cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
        return subprocess.run([_binary(args[0]), *args[1:]], cwd=cwd, env={**self.env, **env},
                              capture_output=True, text=True, timeout=60)

    def submit(self, cwd: Path, *args: str, **env) -> str:
        done = self.run("sbatch", "--parsable", *args, cwd=cwd, **env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    def states(self, job: str) -> list[str]:
        text = self.run("scontrol", "show", "job", job).stdout
        return re.findall(r"JobState=(\w+)", text)

    def wait_idle(self, timeout: float) -> None:
        _wait(lambda: self.run("squeue", "-h").stdout.strip() == "", timeout,
              "the queue to empty", self.folder / "slurmctld.log")

    def stop(self) -> None:
        self.run("scontrol", "shutdown")
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield c
    finally:
        c.stop()


def _runs(folder: Path, epochs) -> Path:
    run = folder / "runs" / "at"
    run.mkdir(parents=True)
    for epoch in epochs:
        for suffix in (".safetensors", ".json"):
            shutil.copy(SAMPLES / f"epoch_{epoch:04d}{suffix}", run)
    return folder / "runs"


KEYS = {"attack": ["run", "epoch", "split", "attack"],
        "flatness": ["run", "epoch", "measure", "xi"]}


def _table(out: Path, name: str) -> pd.DataFrame:
    table = pd.read_parquet(out / name).drop(columns=PROVENANCE)
    return table.sort_values(KEYS[name]).reset_index(drop=True)


@needs_slurm
def test_array_shards_and_dependent_report_equal_one_process(cluster, tmp_path):
    _runs(tmp_path, (23, 24, 25))
    job = cluster.submit(tmp_path, *CPU_PARTITION, "--array=0-1", str(SBATCH), "runs", "out",
                         **TINY)
    # the same script as one process (one shard of one, no report job), meanwhile
    reference = subprocess.Popen(
        ["bash", str(SBATCH), "runs", "ref"], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**cluster.env, **TINY, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1",
             "SBATCH": "true"},
    )
    cluster.wait_idle(240)
    assert reference.wait(timeout=240) == 0, reference.stderr.read()
    logs = {p.name: p.read_text() for p in tmp_path.glob("flatcli-*.out")}
    assert cluster.states(job) == ["COMPLETED", "COMPLETED"], logs
    report_logs = [name for name in logs if name.startswith("flatcli-report-")]
    assert len(report_logs) == 1, logs  # the lowest task alone submitted it
    report_job = re.search(r"flatcli-report-(\d+)\.out", report_logs[0]).group(1)
    assert cluster.states(report_job) == ["COMPLETED"], logs
    assert "report: 3 (run, epoch) row(s)" in logs[report_logs[0]]
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    for task in (0, 1):
        text = logs[f"flatcli-eval-{job}_{task}.out"]
        assert [line for line in text.splitlines() if line.startswith("task")] == [
            f"task {task}: {step}" for step in ("test", "train", "average", "worst")
        ]
    for name in ("attack", "flatness"):
        sharded, single = _table(tmp_path / "out", name), _table(tmp_path / "ref", name)
        assert len(sharded) == 6 and not sharded.duplicated(KEYS[name]).any()
        pd.testing.assert_frame_equal(sharded, single, check_exact=True)


@needs_slurm
def test_term_then_requeue_resumes_without_recomputing(cluster, tmp_path):
    _runs(tmp_path, range(10, 26))  # 16 checkpoints, test attack only
    slow = {"STEPS": "test", "N_EXAMPLES": "300", "ATTACKS": "pgd20", "SBATCH": "true"}
    job = cluster.submit(tmp_path, *CPU_PARTITION, "--array=0", str(SBATCH), "runs", "out",
                         **slow)
    task, parts = f"{job}_0", tmp_path / "out" / "attack"
    _wait(lambda: len(list(parts.glob("*.parquet"))) >= 2, 120, "two checkpoints written")
    # --full: the batch step too, where flatcli runs (without it only srun steps get it)
    cancel = cluster.run("scancel", "--full", "--signal=TERM", task)
    assert cancel.returncode == 0, cancel.stderr
    _wait(lambda: cluster.states(task)[0] not in ("RUNNING", "PENDING", "COMPLETING"), 60,
          "the task to end")
    log = (tmp_path / f"flatcli-eval-{job}_0.out").read_text()
    assert "flatcli: terminated (SIGTERM); finished work is kept, rerun the same command" in log
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("*.parquet")}
    assert 2 <= len(before) < 16, sorted(before)

    # A requeued task waits cred_expire + 1 s (5 + 1 here, see _conf) before it starts again:
    # slurmd refuses a launch whose credential is as old as the revocation of the ended run's.
    # Overriding the wait (scontrol update StartTime=now) raced with that revocation.
    requeue = cluster.run("scontrol", "requeue", task)
    assert requeue.returncode == 0, requeue.stderr
    # the requeue takes effect asynchronously: the queue is empty until the task is back in it
    _wait(lambda: cluster.states(task)[0] != "FAILED", 60, "the task to be requeued",
          cluster.folder / "slurmctld.log")
    cluster.wait_idle(180)
    log = tmp_path / f"flatcli-eval-{job}_0.out"
    ctld = (cluster.folder / "slurmctld.log").read_text()[-3000:]
    assert cluster.states(task) == ["COMPLETED"], log.read_text()[-3000:] + ctld
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("*.parquet")}
    assert len(after) == 16
    assert {name: after[name] for name in before} == before  # finished parts not rewritten
    table = pd.read_parquet(parts)
    assert sorted(table.epoch) == list(range(10, 26)) and table.restarts.eq(1).all()
