"""What the terminal shows: tables that fit, floats as computed, progress, summary, Ctrl-C, help."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import flatcli
from rich.console import Console

from flatcli.cli.output import Progress, as_computed, render, table_lines

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "sample_checkpoints" / "at" / "epoch_0025.safetensors"
FAST = ["--attacks", "pgd2,pgd3x2", "--n-examples", "16"]


def _f32(value: float) -> float:
    """A float32 result as `.item()` hands it over: widened to float64."""
    return struct.unpack("f", struct.pack("f", value))[0]


def test_attack_table_in_80_columns_keeps_run_epoch_and_robust_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, stdout, _ = flatcli(capsys, "attack", CHECKPOINT, "--out", tmp_path / "o", *FAST, "-q")
    assert code == 0
    lines = stdout.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), stdout
    assert "…" not in stdout
    header = " ".join(line for line in lines if not line.startswith("at "))
    for word in ("run", "epoch", "robust", "err"):
        assert word in header.split(), (word, stdout)
    rows = {line.split()[2]: line.split() for line in lines if line.startswith("at ")}
    table = pd.read_parquet(tmp_path / "o" / "attack")
    assert sorted(rows) == sorted(table.attack) == ["pgd2", "pgd3x2", "worst"]
    for _, row in table.iterrows():
        assert rows[row.attack][:2] == ["at", "25"]
        assert f"{row.robust_err:.4g}" in rows[row.attack]


WIDE = {
    "run": "at-label-smoothing",
    "epoch": 25,
    "measure": "average",
    "xi": 0.5,
    "n_examples": 1000,
    "eps": 0.03137254901960784,
    "robust_loss": 0.7181234,
    "perturbed_robust_loss": 2.0123456,
    "flatness": 1.2942222,
    "flatness_std": 0.0912345,
    "lambda_max": None,
    "hessian_trace": None,
    "wall_time_s": 123.456789,
}


def _cells_shown(lines: list[str], row: dict) -> None:
    text = "\n".join(lines)
    for value in row.values():
        if value is not None:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            assert shown in text, (shown, text)


def test_a_wide_table_narrows_without_losing_keys_or_cutting_values():
    rows = [WIDE, {**WIDE, "epoch": 26, "measure": "worst", "xi": 0.00075, "flatness": 6.5}]
    assert len(table_lines(rows, list(WIDE), None)[0]) > 80  # the full layout is too wide
    lines = table_lines(rows, list(WIDE), 80)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    _cells_shown(lines, rows[0])
    _cells_shown(lines, rows[1])
    row_lines = [line for line in lines if line.startswith("at-label-smoothing")]
    assert [line.split()[1] for line in row_lines] == ["25", "26"]  # keys stay columns
    # one value for every row (n_examples, eps) moves to a line above the table
    assert lines[0].startswith("n_examples 1000, eps 0.03137")


def test_a_single_row_too_wide_becomes_a_block_of_column_value_lines():
    lines = table_lines([WIDE], list(WIDE), 50)
    assert all(len(line) <= 50 for line in lines), "\n".join(lines)
    assert lines[0].split() == ["run", "at-label-smoothing"] and lines[1].split() == ["epoch", "25"]
    assert not any(line.startswith("lambda_max") for line in lines)  # empty: nothing to show
    _cells_shown(lines, WIDE)


def test_pipes_get_whole_lines(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    render([WIDE], list(WIDE), "table", list(WIDE))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].split() == list(WIDE)


def test_machine_formats_write_floats_at_their_computed_precision(capsys):
    computed32 = _f32(0.28)
    assert computed32 == 0.2800000011920929
    # 1 - float32(0.72), the robust error the issue saw: a float32 one step below 0.28, so its
    # shortest float32 form is 0.27999997 (lossless), not 0.28
    assert as_computed(1.0 - _f32(0.72)) == 0.27999997
    row = {"a": computed32, "b": 8 / 255, "c": float("nan"), "d": float("inf"), "e": 3, "f": 0.1}
    assert as_computed(computed32) == 0.28
    assert as_computed(8 / 255) == 8 / 255  # a float64 result keeps every digit
    assert as_computed(1e300) == 1e300 and as_computed(_f32(1e-30)) == 1e-30
    assert as_computed(_f32(123456.789)) == 123456.79
    render([row], list(row), "json", list(row))
    parsed = json.loads(capsys.readouterr().out)
    assert parsed == [{"a": 0.28, "b": 8 / 255, "c": None, "d": None, "e": 3, "f": 0.1}]
    render([row], list(row), "jsonl", list(row))
    text = capsys.readouterr().out
    assert '"a": 0.28,' in text and "0.2799999713897705" not in text and "NaN" not in text
    render([row], list(row), "csv", list(row))
    assert capsys.readouterr().out.splitlines()[1] == "0.28,0.03137254901960784,,,3,0.1"


def _event(kind: str, index: int = 0, total: int = 2, message: str = "", path="r/e1.pt"):
    return SimpleNamespace(
        kind=kind,
        index=index,
        total=total,
        message=message,
        ref=SimpleNamespace(key="r__e0001", path=path),
    )


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=100, highlight=False), buffer


def test_a_failure_line_names_the_path_once():
    console, buffer = _console(terminal=False)
    progress = Progress(quiet=True, label="attack", console=console)
    progress(_event("failed", message="cannot read r/e1.pt: truncated or corrupt file"))
    progress(_event("failed", message="out of memory"))
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "flatcli: failed: cannot read r/e1.pt: truncated or corrupt file",
        "flatcli: failed: r/e1.pt: out of memory",
    ]


def test_progress_inside_a_checkpoint_on_a_tty_with_eta():
    console, buffer = _console(terminal=True)
    with Progress(quiet=False, label="flatness", console=console) as progress:
        progress(_event("start"))
        progress.on_batch(64, 256)
        progress.on_batch(128, 256)
        progress.live.refresh()
        shown = buffer.getvalue()
        assert "r__e0001 examples" in shown and "128/256" in shown and "eta" in shown
        progress.on_batch(2, 10, "samples")  # a new phase, its own bar
        progress.live.refresh()
        assert "r__e0001 samples" in buffer.getvalue()[len(shown) :]
        assert " 2/10" in buffer.getvalue()[len(shown) :]
        progress(_event("done", message="1.0s"))


def test_progress_off_a_tty_is_one_line_per_checkpoint_and_nothing_when_quiet():
    console, buffer = _console(terminal=False)
    progress = Progress(quiet=False, label="attack", console=console)
    progress(_event("start"))
    progress.on_batch(10, 20)
    progress(_event("done", message="1.5s"))
    progress(_event("skipped", index=1, message="already done"))
    assert buffer.getvalue().splitlines() == [
        "[1/2] r__e0001: done (1.5s)",
        "[2/2] r__e0001: skipped (already done)",
    ]
    console, buffer = _console(terminal=False)
    quiet = Progress(quiet=True, label="attack", console=console)
    quiet(_event("start"))
    quiet.on_batch(10, 20)
    quiet(_event("done", message="1.5s"))
    quiet.summary(1, 0, 0)
    assert buffer.getvalue() == ""


def test_a_sweep_ends_with_done_skipped_failed_on_stderr(tmp_path, capsys):
    args = ["attack", CHECKPOINT, "--out", tmp_path / "o", *FAST]
    code, _, err = flatcli(capsys, *args)
    assert code == 0 and err.splitlines()[-1].startswith("attack: 1 done, 0 skipped, 0 failed (")
    code, _, err = flatcli(capsys, *args)
    assert code == 0 and err.splitlines()[-1].startswith("attack: 0 done, 1 skipped, 0 failed (")
    code, _, err = flatcli(capsys, *args, "-q")
    assert code == 0 and err == ""


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, capsys, monkeypatch):
    from flatcli import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    code, stdout, err = flatcli(capsys, "attack", CHECKPOINT, "--out", tmp_path / "o", *FAST)
    assert code == 130 and stdout == ""
    assert err.splitlines()[-1] == "flatcli: interrupted; rerun the same command to resume"


def _help(capsys, monkeypatch, *args) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping (the help is at most 100 wide)
    code, out, _ = flatcli(capsys, *args, "--help")
    assert code == 0
    return out


def test_root_help_lists_every_command_with_its_whole_description(capsys, monkeypatch):
    from flatcli.cli import COMMANDS

    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = flatcli(capsys, "--help")
    assert code == 0 and "…" not in out
    for name, (_, short) in COMMANDS.items():
        assert f"{name}" in out and short in out, (name, out)


@pytest.mark.parametrize("command", ["attack", "flatness", "landscape"])
def test_help_shows_metavars_panels_and_true_defaults(command, capsys, monkeypatch):
    out = _help(capsys, monkeypatch, command)
    assert f"Usage: flatcli {command} [OPTIONS] CHECKPOINTS..." in out
    assert "{paths}" not in out and "list[Path]" not in out
    for panel in ("Inputs", "Threat model", "Attack", "Output", "Runtime"):
        assert f"\n{panel}:\n" in out, panel
    assert "[default: checkpoint's training eps, else the dataset's]" in " ".join(out.split())
    assert out.index("\nInputs:") < out.index("\nThreat model:") < out.index("\nOutput:")


def test_a_failed_checkpoint_is_named_once_end_to_end(tmp_path, capsys):
    bad = tmp_path / "run" / "epoch_0001.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(CHECKPOINT.read_bytes()[:100])
    code, _, err = flatcli(
        capsys, "attack", bad, "--out", tmp_path / "o", *FAST, "--dataset", "digits"
    )
    failed = [line for line in err.splitlines() if "failed:" in line]
    assert code == 1 and len(failed) == 1 and failed[0].count(str(bad)) == 1, err
    assert err.splitlines()[-1].startswith("attack: 0 done, 0 skipped, 1 failed (")
