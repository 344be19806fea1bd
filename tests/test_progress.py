"""Progress on stderr: the sweep's outer ETA when each unit takes longer than rich's 30 s
window, and training's bar inside an epoch (TTY), its lines when piped, nothing with -q."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from flatcli.cli import main
from flatcli.cli.output import EpochProgress, Progress, eta

TRAIN = ["train", "--arch", "tiny", "--epochs", "2", "--train-examples", "96",
         "--heldout-examples", "32", "--batch-size", "32"]  # fmt: skip


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, highlight=False), buffer


def test_eta_is_the_mean_pace_so_far():
    assert eta(60.0, 1.0, 3) == pytest.approx(120.0)
    assert eta(60.0, 1.5, 3) == pytest.approx(60.0)
    assert eta(None, 1.0, 3) is None and eta(10.0, 0.0, 3) is None


def test_outer_eta_shows_when_each_unit_takes_minutes():
    console, _ = _terminal()
    progress = Progress(False, "landscape", console)
    clock = [1000.0]
    progress.live.get_time = lambda: clock[0]
    ref = SimpleNamespace(key="at/e0025", path="x")
    with progress:
        for index in range(2):
            progress(SimpleNamespace(kind="start", ref=ref, index=index, total=4, message=""))
            clock[0] += 50
            progress.on_batch(5, 10, "grid points")
            clock[0] += 50
            progress(SimpleNamespace(kind="done", ref=ref, index=index, total=4, message=""))
        progress(SimpleNamespace(kind="start", ref=ref, index=2, total=4, message=""))
        clock[0] += 50
        progress.on_batch(5, 10, "grid points")
        outer = progress.live.tasks[progress.outer]
        column = progress.live.columns[-1]
        # 2.5 units in 250 s, 1.5 to go: 150 s (rich's own column: -:--:--, samples > 30 s old)
        assert str(column.render(outer)) == "0:02:30"


def test_training_bar_inside_the_epoch_on_a_terminal():
    console, buffer = _terminal()
    with EpochProgress(False, console) as progress:
        progress.step(1, 2, 1, 4)
        task = progress.live.tasks[0]
        assert task.description == "train: epoch 1/2" and task.completed == 1
        progress.step(1, 2, 3, 4)
        assert task.completed == 3
        progress.step(2, 2, 1, 4)  # a new epoch restarts the bar
        assert task.description == "train: epoch 2/2" and task.completed == 1
        progress.log("train: epoch 1/2  lr 0.05")
    assert "train: epoch 1/2  lr 0.05" in buffer.getvalue()
    quiet_console, quiet_buffer = _terminal()
    with EpochProgress(True, quiet_console) as quiet:
        quiet.step(1, 2, 1, 4)
        quiet.log("anything")
    assert quiet.live is None and quiet_buffer.getvalue() == ""


def test_training_piped_prints_one_prefixed_line_per_epoch(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TRAIN, "--out", str(tmp_path / "run"), "-f", "csv"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    lines = err.strip().splitlines()
    assert all(line.startswith("train: ") for line in lines), lines
    assert not any("train: training" in line or "%" in line for line in lines), lines
    epochs = [line for line in lines if line.startswith("train: epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"]
    assert "train clean/robust err 0." in epochs[0]  # fractions, as the table prints them
    with pytest.raises(SystemExit):
        main([*TRAIN, "--out", str(tmp_path / "quiet"), "-q"])
    assert capsys.readouterr().err == ""
