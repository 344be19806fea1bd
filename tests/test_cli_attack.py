"""`flatcli attack` end to end, and every bad input the issue lists: one line, non-zero exit."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import flatcli

from flatcli import models
from flatcli.checkpoints import save_checkpoint

FAST = ["--attacks", "pgd3x2", "--n-examples", "32", "-q"]


def _save(path: Path, epoch: int, seed: int = 0, scale: float = 1.0) -> Path:
    torch.manual_seed(seed)
    model = models.build("tiny", 10, 1)
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(scale)
    return save_checkpoint(
        path / f"epoch_{epoch:04d}.safetensors", model, "tiny", {}, "digits", epoch
    )


@pytest.fixture
def run_dir(tmp_path) -> Path:
    for e in (1, 2, 3):
        _save(tmp_path / "runs" / "at", e, seed=e)
    return tmp_path / "runs"


def test_attack_writes_table_prints_rows_and_resumes(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = flatcli(capsys, "attack", run_dir, "--out", out, *FAST, "-f", "json")
    assert code == 0
    rows = json.loads(stdout)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and {r["attack"] for r in rows} == {"pgd3x2"}
    df = pd.read_parquet(out / "attack")
    assert len(df) == 3 and (df.robust_err >= df.clean_err).all()
    assert (df.eps == 0.1).all() and (df.n_examples == 32).all() and (df.dataset == "digits").all()
    first = df.sort_values("epoch").robust_loss.tolist()
    # a rerun skips everything, prints the same rows, and writes nothing new
    code, stdout, err = flatcli(capsys, "attack", run_dir, "--out", out, *FAST[:-1], "-f", "jsonl")
    assert code == 0 and "skipped" in err and len(stdout.splitlines()) == 3
    assert len(list((out / "attack").iterdir())) == 3
    # --force recomputes the same numbers (seeded per checkpoint)
    code, _, _ = flatcli(capsys, "attack", run_dir, "--out", out, *FAST, "--force")
    again = pd.read_parquet(out / "attack").sort_values("epoch").robust_loss.tolist()
    assert code == 0 and again == pytest.approx(first, abs=1e-6)


def test_several_attacks_add_a_worst_row_and_eps_fraction_is_exact(run_dir, tmp_path, capsys):
    code, stdout, _ = flatcli(
        capsys,
        "attack",
        run_dir / "at" / "epoch_0001.safetensors",
        "--out",
        tmp_path / "o",
        "--attacks",
        "pgd2,pgd3x2",
        "--eps",
        "8/255",
        "--n-examples",
        "16",
        "-q",
        "-f",
        "csv",
    )
    assert code == 0
    df = pd.read_csv(__import__("io").StringIO(stdout))
    assert list(df.attack) == ["pgd2", "pgd3x2", "worst"]
    assert df.eps.iloc[0] == 8 / 255
    worst = df.set_index("attack")
    assert worst.loc["worst", "robust_err"] >= worst.loc[["pgd2", "pgd3x2"], "robust_err"].max()


def test_shards_split_the_work_and_dry_run_shows_the_plan(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for i in range(2):
        assert flatcli(capsys, "attack", run_dir, "--out", out, *FAST, "--shard", f"{i}/2")[0] == 0
    assert sorted(pd.read_parquet(out / "attack").epoch) == [1, 2, 3]
    code, stdout, _ = flatcli(
        capsys, "attack", run_dir, "--out", out, *FAST, "--dry-run", "-f", "json"
    )
    assert code == 0 and {r["status"] for r in json.loads(stdout)} == {"done"}


def test_one_bad_checkpoint_among_good_ones_exit_1(run_dir, tmp_path, capsys):
    bad = run_dir / "at" / "epoch_0002.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    code, _, err = flatcli(capsys, "attack", run_dir, "--out", tmp_path / "o", *FAST)
    assert code == 1
    assert "epoch_0002" in err and "failed" in err and "Traceback" not in err
    assert sorted(pd.read_parquet(tmp_path / "o" / "attack").epoch) == [1, 3]


def test_nan_weights_are_reported_and_marked_and_others_go_on(run_dir, tmp_path, capsys):
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1)
    with torch.no_grad():
        model.net[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(run_dir / "at" / "epoch_0004.safetensors", model, "tiny", {}, "digits", 4)
    code, _, err = flatcli(capsys, "attack", run_dir, "--out", tmp_path / "o", *FAST)
    df = pd.read_parquet(tmp_path / "o" / "attack").set_index("epoch")
    assert code == 0 and "non-finite weights" in err
    assert df.loc[4, "note"] == "non-finite weights" and pd.isna(df.loc[4, "robust_loss"])
    assert df.loc[[1, 2, 3], "note"].isna().all() and df.loc[[1, 2, 3], "robust_loss"].notna().all()


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def _bad_inputs(tmp: Path, run_dir: Path) -> dict[str, list]:
    (tmp / "empty").mkdir()
    (tmp / "junk").mkdir()
    (tmp / "junk" / "notes.txt").write_text("hello")
    truncated = tmp / "trunc" / "model_5.pth"
    truncated.parent.mkdir()
    torch.save(models.build("tiny", 10, 1).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    evil = tmp / "evil" / "model_1.pth"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    foreign = tmp / "foreign" / "model_3.pth"
    foreign.parent.mkdir()
    torch.save({"state_dict": models.build("tiny", 10, 1).net.state_dict()}, foreign)
    readonly = tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    good = [run_dir]
    return {
        "missing path": [tmp / "nope", "--out", tmp / "o"],
        "empty directory": [tmp / "empty", "--out", tmp / "o"],
        "no checkpoints": [tmp / "junk", "--out", tmp / "o"],
        "eps -1": [*good, "--out", tmp / "o", "--eps", "-1"],
        "eps 8/0": [*good, "--out", tmp / "o", "--eps", "8/0"],
        "eps 2": [*good, "--out", tmp / "o", "--eps", "2"],
        "eps text": [*good, "--out", tmp / "o", "--eps", "eight"],
        "n too large": [*good, "--out", tmp / "o", "--n-examples", "100000"],
        "missing dataset folder": [
            foreign,
            "--out",
            tmp / "o",
            "--dataset",
            "cifar10",
            "--data-dir",
            tmp / "nodata",
            "--arch",
            "tiny",
        ],
        "unwritable out": [*good, "--out", readonly / "sub"],
        "shard 3/2": [*good, "--out", tmp / "o", "--shard", "3/2"],
        "unknown attack": [*good, "--out", tmp / "o", "--attacks", "fgsm9"],
        "unknown arch": [
            foreign,
            "--out",
            tmp / "o",
            "--dataset",
            "digits",
            "--arch",
            "resnet9000",
        ],
        "foreign without dataset": [foreign, "--out", tmp / "o"],
        # click's own usage errors, printed as one line too
        "batch size 0": [*good, "--out", tmp / "o", "--batch-size", "0"],
        "unknown option": [*good, "--out", tmp / "o", "--no-such-option"],
        "bad norm": [*good, "--out", tmp / "o", "--norm", "l7"],
        # single-checkpoint failures: the sweep reports them (exit 1)
        "truncated": [truncated, "--out", tmp / "o", "--dataset", "digits", "--arch", "tiny"],
        "code payload": [evil, "--out", tmp / "o", "--dataset", "digits", "--arch", "tiny"],
        "wrong arch": [foreign, "--out", tmp / "o", "--dataset", "digits", "--arch", "small-cnn"],
    }


SWEEP_FAILURES = {"truncated", "code payload", "wrong arch"}


def test_bad_inputs_give_one_line_and_nonzero_exit(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _bad_inputs(tmp_path, run_dir)
    if os.geteuid() == 0:  # root writes anywhere; use a path under a regular file instead
        (tmp_path / "afile").write_text("")
        cases["unwritable out"] = [run_dir, "--out", tmp_path / "afile" / "sub"]
    for name, args in cases.items():
        code, stdout, err = flatcli(capsys, "attack", *FAST, *args)  # the case's options win
        lines = [line for line in err.splitlines() if line.strip()]
        expected = 1 if name in SWEEP_FAILURES else 2
        assert code == expected, (name, code, err)
        assert "Traceback" not in err and stdout.strip() == "", (name, err)
        problem = [line for line in lines if "error" in line or "failed" in line or "Error" in line]
        assert len(problem) >= 1, (name, err)
        if name not in SWEEP_FAILURES:
            assert len(lines) == 1, (name, err)
    assert not (tmp_path / "PWNED_MARKER").exists()
    wrong = flatcli(capsys, "attack", *FAST, *cases["wrong arch"])[2]
    assert "missing" in wrong and "unexpected" in wrong


def test_usage_errors_name_the_command_help(capsys):
    code, stdout, err = flatcli(capsys, "nope")
    assert code == 2 and stdout == ""
    assert err.strip() == "flatcli: error: No such command 'nope'. (see 'flatcli --help')"
    code, _, err = flatcli(capsys, "attack")  # a bare command shows its help
    assert code == 2 and "Usage: flatcli attack" in err and "Example:" in err


def test_help_does_not_import_torch_and_version_and_python_m():
    code = (
        "import sys; from flatcli.cli import main\n"
        "try:\n main(['--help'])\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "attack" in done.stdout
    version = subprocess.run(
        [sys.executable, "-m", "flatcli", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("flatcli ")
    helped = subprocess.run(
        [sys.executable, "-m", "flatcli", "attack", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "Example:" in helped.stdout


def test_default_eps_is_the_training_eps_from_the_metadata(tmp_path, capsys):
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1)
    for e in (1, 2):
        save_checkpoint(
            tmp_path / "run" / f"epoch_{e:04d}.safetensors",
            model,
            "tiny",
            {},
            "digits",
            e,
            {"eps": 0.15, "norm": "linf"},
        )
    code, stdout, _ = flatcli(
        capsys, "attack", tmp_path / "run", "--out", tmp_path / "o", *FAST, "-f", "json"
    )
    assert code == 0 and {r["eps"] for r in json.loads(stdout)} == {0.15}


def test_ctrl_c_exits_130(run_dir, tmp_path, capsys, monkeypatch):
    from flatcli import sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run", interrupted)
    code, stdout, _ = flatcli(capsys, "attack", *FAST, run_dir, "--out", tmp_path / "o")
    assert code == 130 and stdout == ""


def _digits_npz(path: Path, classes: int, **extra) -> str:
    """digits restricted to labels 0..classes-1, as a user's npz (float NCHW)."""
    import numpy as np

    from flatcli import data

    arrays = {}
    for split, key in (("train", "train"), ("test", "test")):
        x, y = data.load_split("digits", split)
        keep = y < classes
        arrays[f"x_{key}"], arrays[f"y_{key}"] = x[keep].numpy(), y[keep].numpy()
    np.savez(path, **arrays, **extra)
    return f"npz:{path}"


def test_a_ten_class_checkpoint_evaluates_on_an_npz_labelled_0_to_6(tmp_path, capsys):
    torch.manual_seed(0)
    foreign = tmp_path / "foreign" / "model_3.pt"
    foreign.parent.mkdir()
    torch.save(models.build("small-cnn", 10, 1).net.state_dict(), foreign)
    own = _save(tmp_path / "own", 3)
    npz = _digits_npz(tmp_path / "seven.npz", 7)
    for ckpt, extra in ((foreign, ["--arch", "small-cnn"]), (own, [])):
        code, stdout, err = flatcli(
            capsys, "attack", ckpt, "--dataset", npz, "--out", tmp_path / "o", *FAST, *extra,
            "-f", "json",
        )
        assert code == 0, err
        (row,) = json.loads(stdout)
        assert row["dataset"] == npz and 0 <= row["robust_err"] <= 1
    # an npz that states its class count is held to it
    stated = _digits_npz(tmp_path / "stated.npz", 7, n_classes=7)
    code, _, err = flatcli(capsys, "attack", own, "--dataset", stated, "--out", tmp_path / "s",
                           *FAST)
    assert code == 1 and "10 classes" in err and len(err.strip().splitlines()) == 1


def test_n_examples_zero_is_a_usage_error(run_dir, tmp_path, capsys):
    code, stdout, err = flatcli(capsys, "attack", run_dir, "--out", tmp_path / "o",
                                "--n-examples", "0", "-q")
    assert code == 2 and stdout == "" and "--n-examples must be positive" in err
    assert not (tmp_path / "o" / "attack").exists()


def test_arch_arguments_load_a_foreign_checkpoint_of_another_width(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "narrow" / "model_2.pt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": models.build("small-cnn", 10, 1, width=8).net.state_dict()}, ckpt)
    common = [ckpt, "--dataset", "digits", "--out", tmp_path / "o", *FAST]
    code, _, err = flatcli(capsys, "attack", *common, "--arch", "small-cnn")
    assert code == 1 and "shape(s) differ" in err  # the default width does not fit
    code, stdout, err = flatcli(capsys, "attack", *common, "--arch", "small-cnn:width=8",
                                "-f", "json")
    assert code == 0, err
    assert json.loads(stdout)[0]["arch"] == "small-cnn"
    code, stdout, err = flatcli(capsys, "attack", *common, "--arch", "small-cnn:widht=8")
    assert code == 2 and stdout == "" and "'widht=8' is not key=value" in err
    assert len(err.strip().splitlines()) == 1


def test_kept_freed_memory_changes_no_number(tmp_path, monkeypatch):
    """FLATCLI_MALLOC=kept keeps freed memory in glibc's heap (`runtime.keep_freed_memory`: no
    fresh pages per large tensor); the default leaves glibc as it is. The rows are the same."""
    import platform

    from flatcli import runtime

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_freed_memory acts on glibc only")
    sample = Path(__file__).resolve().parent.parent / "sample_checkpoints" / "at"
    tables = {}
    for malloc in ("system", "kept"):
        env = {**os.environ, "FLATCLI_MALLOC": malloc, "FLATCLI_QUIET": "1"}
        out = tmp_path / malloc
        done = subprocess.run(
            [sys.executable, "-m", "flatcli", "attack", str(sample / "epoch_0025.safetensors"),
             "--out", str(out), "--attacks", "pgd3x2", "--n-examples", "48", "--quiet"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        tables[malloc] = pd.read_parquet(out / "attack").drop(columns=["wall_time_s", "created_at"])
    pd.testing.assert_frame_equal(tables["system"], tables["kept"], check_exact=True)
    monkeypatch.delenv("FLATCLI_MALLOC", raising=False)
    assert runtime.keep_freed_memory() is False  # opt-in: nothing without it
