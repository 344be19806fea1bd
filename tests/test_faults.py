"""Faults that are not bugs read as such: a full disk, a read-only file system or a quota is one
line naming the path (exit 1, nothing half-written); SIGTERM unwinds like Ctrl-C (exit 143,
resumable); an error that is not about a checkpoint stops the sweep, its traceback in a log."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import flatcli

from flatcli import engine, files, models, sweep, tables
from flatcli.checkpoints import save_checkpoint
from flatcli.errors import SweepStopped, WriteError

FAST = ["--attacks", "pgd2", "--n-examples", "16", "-f", "json", "-q"]


@pytest.fixture
def runs(tmp_path) -> Path:
    for epoch in (1, 2, 3):
        torch.manual_seed(epoch)
        save_checkpoint(tmp_path / "runs" / "at" / f"epoch_{epoch:04d}.safetensors",
                        models.build("tiny", 10, 1), "tiny", {}, "digits", epoch)
    return tmp_path / "runs"


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_a_storage_fault_is_a_write_error_and_the_old_file_stays(tmp_path, code):
    target = tmp_path / "part.txt"
    target.write_text("before")

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(WriteError) as caught:
        files.atomic_write(target, fails)
    assert str(caught.value) == (
        f"cannot write {target}: {os.strerror(code)} ({errno.errorcode[code]})"
    )
    assert caught.value.exit_code == 1
    assert target.read_text() == "before" and _files(tmp_path) == ["part.txt"]
    with pytest.raises(ValueError):  # not a storage fault: raised as it is
        files.atomic_write(target, lambda tmp: (_ for _ in ()).throw(ValueError("bug")))


def test_pyarrows_errno_in_the_message_is_recognised():
    assert files.storage_errno(OSError("[Errno 28] No space left on device")) == errno.ENOSPC
    assert files.storage_errno(OSError("Parquet magic bytes not found")) is None


def test_a_full_disk_is_one_line_exit_1_and_nothing_half_written(runs, tmp_path, capsys,
                                                                  monkeypatch):
    out = tmp_path / "out"
    write = pq.write_table

    def full(table, where, *args, **kwargs):
        write(table, where, *args, **kwargs)  # a part of the bytes reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tables.pq, "write_table", full)
    code, stdout, err = flatcli(capsys, "attack", runs, "--out", out, *FAST)
    lines = err.strip().splitlines()
    assert code == 1 and stdout == "" and len(lines) == 1, err
    assert lines[0].startswith(f"flatcli: error: cannot write {out / 'attack'}")
    assert lines[0].endswith(": No space left on device (ENOSPC)")
    assert "internal error" not in err and _files(out / "attack") == []
    monkeypatch.setattr(tables.pq, "write_table", write)
    code, _, _ = flatcli(capsys, "attack", runs, "--out", out, *FAST)
    assert code == 0 and len(_files(out / "attack")) == 3


def test_sigterm_exits_143_keeps_finished_work_and_a_rerun_resumes(runs, tmp_path, capsys,
                                                                   monkeypatch):
    out = tmp_path / "out"
    measure, calls = engine.robust_losses, []

    def terminated_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as Slurm does at a time limit
        return measure(*args, **kwargs)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(engine, "robust_losses", terminated_in_the_second)
    code, stdout, err = flatcli(capsys, "attack", runs, "--out", out, *FAST)
    assert code == 143 and stdout == ""
    assert err.strip().splitlines()[-1] == (
        "flatcli: terminated (SIGTERM); finished work is kept, rerun the same command to resume"
    )
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    assert len(_files(out / "attack")) == 1  # the first checkpoint, whole; no temp file
    assert tables.unreadable_reason(next((out / "attack").iterdir())) is None
    monkeypatch.setattr(engine, "robust_losses", measure)
    code, stdout, err = flatcli(capsys, "attack", runs, "--out", out, *FAST)
    assert code == 0 and len(_files(out / "attack")) == 3
    assert len(pd.read_parquet(out / "attack")) == 3


def test_a_programming_error_stops_the_sweep_with_a_log(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    measure, calls = engine.robust_losses, []

    def buggy(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            return {}["no such key"]  # a bug, not a checkpoint problem
        return measure(*args, **kwargs)

    monkeypatch.setattr(engine, "robust_losses", buggy)
    code, stdout, err = flatcli(capsys, "attack", runs, "--out", out, *FAST)
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "failed" not in err, err
    assert "epoch_0002.safetensors" in lines[0] and "KeyError" in lines[0]
    (log,) = (out / "logs").iterdir()
    assert f"traceback in {log}" in lines[0]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "no such key" in text
    assert len(calls) == 2 and len(_files(out / "attack")) == 1  # stopped, the first kept


def test_only_checkpoint_and_data_errors_fail_one_checkpoint(tmp_path):
    from flatcli.checkpoints import CheckpointRef
    from flatcli.errors import CheckpointError, DataError

    refs = [CheckpointRef("r", e, tmp_path / f"e{e}.pt", digest=f"{e:08d}") for e in (1, 2, 3)]
    row = {"run": "r", "attack": "pgd2"}

    def measure(ref):
        if ref.epoch == 1:
            raise CheckpointError(f"{ref.path}: unreadable")
        if ref.epoch == 2:
            raise DataError("the data do not fit this checkpoint")
        return [{**row, "epoch": ref.epoch}]

    summary = sweep.run(refs, measure, "attack", tmp_path / "o", "f" * 16)
    assert [r.epoch for r, _ in summary.failed] == [1, 2] and len(summary.done) == 1

    def cuda_error(ref):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(SweepStopped, match="CUDA error"):
        sweep.run(refs, cuda_error, "attack", tmp_path / "o2", "f" * 16)
    with pytest.raises(RuntimeError):  # FLATCLI_DEBUG: the error itself
        sweep.run(refs, cuda_error, "attack", tmp_path / "o3", "f" * 16, debug=True)
