"""examples/: the Slurm array script and the study Makefile, run on digits with tiny sizes.

The commands they would run are recorded (a stub FLATCLI, `make -n`) and executed in this process
with the real CLI; one step of each runs for real as a subprocess, the way a user runs it.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flatcli.cli import main

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "examples" / "slurm" / "evaluate.sbatch"
MAKEFILE = ROOT / "examples" / "study" / "Makefile"
REAL_FLATCLI = f"{shlex.quote(sys.executable)} -m flatcli"
TINY_SLURM = {
    "N_EXAMPLES": "16",
    "TRAIN_EXAMPLES": "16",
    "ATTACKS": "pgd2",
    "SAMPLES": "1",
    "FLATNESS_ATTACK": "pgd2",
    "ITERATIONS": "2",
    "RESTARTS": "1",
}
TINY_STUDY = [
    *(f"{k}={v}" for k, v in TINY_SLURM.items() if k != "TRAIN_EXAMPLES"),
    "TRAIN_N=16",
    "DIRECTIONS=1",
    "LANDSCAPE_STEPS=3",
    "LANDSCAPE_N=16",
]


def _env(**extra) -> dict:
    # Neither a Slurm job's variables nor an outer make's (`make test` sets MAKELEVEL/MAKEFLAGS,
    # which make a nested make print "Entering directory" lines and inherit its flags).
    outer = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in outer}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _flatcli(args: list[str], capsys) -> None:
    """One recorded `flatcli ...` command line, run in this process (exit 0 expected)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    _, err = capsys.readouterr()
    assert exit_info.value.code == 0, (args, err)


def _runs(tmp_path: Path) -> Path:
    """Two checkpoints of one run (sample_checkpoints/at epochs 24, 25): one per shard of 2."""
    run = tmp_path / "runs" / "at"
    run.mkdir(parents=True)
    for name in ("epoch_0024", "epoch_0025"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(ROOT / "sample_checkpoints" / "at" / (name + suffix), run)
    return tmp_path / "runs"


def _sbatch(tmp_path: Path, task: int, flatcli: str, **env) -> subprocess.CompletedProcess:
    stub = tmp_path / "sbatch-stub"
    stub.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$0.args"\n')
    stub.chmod(0o755)
    slurm = {
        "SLURM_ARRAY_TASK_ID": str(task),
        "SLURM_ARRAY_TASK_COUNT": "2",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_JOB_ID": "4242",
    }
    return subprocess.run(
        ["bash", str(SBATCH), "runs", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(FLATCLI=flatcli, SBATCH=str(stub), **slurm, **TINY_SLURM, **env),
        timeout=120,
    )


def test_slurm_array_script_shards_every_measure_then_submits_the_report(
    tmp_path, capsys, monkeypatch
):
    _runs(tmp_path)
    recorder = tmp_path / "record"
    recorder.write_text('#!/bin/bash\nprintf "%q " "$@" >> "$0.calls"; echo >> "$0.calls"\n')
    recorder.chmod(0o755)
    done = _sbatch(tmp_path, 0, str(recorder))
    assert done.returncode == 0, done.stderr
    calls = [shlex.split(line) for line in Path(f"{recorder}.calls").read_text().splitlines()]
    assert [c[:1] + c[2:4] for c in calls] == [
        ["attack", "--attacks", "pgd2"],
        ["attack", "--attacks", "pgd2"],
        ["flatness", "--measure", "average"],
        ["flatness", "--measure", "worst"],
    ]
    assert all("--shard" in c and c[c.index("--shard") + 1] == "auto" for c in calls)
    assert calls[1][calls[1].index("--split") + 1] == "train"
    submitted = (tmp_path / "sbatch-stub.args").read_text().splitlines()
    assert "--dependency=afterany:4242" in submitted
    wrap = shlex.split(submitted[submitted.index("--wrap") + 1])
    assert wrap[0] == str(recorder) and wrap[1:] == ["report", "out", "--html"]

    # what task 0 of 2 ran, run for real: it takes the first checkpoint only
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    for call in calls:
        _flatcli(call, capsys)
    attack = pd.read_parquet(tmp_path / "out" / "attack")
    assert sorted(attack.split) == ["test", "train"] and set(attack.epoch) == {24}
    flatness = pd.read_parquet(tmp_path / "out" / "flatness")
    assert sorted(flatness.measure) == ["average", "worst"] and set(flatness.epoch) == {24}

    # task 1 as a real subprocess: the other checkpoint, and no second report job
    (tmp_path / "sbatch-stub.args").unlink()
    done = _sbatch(tmp_path, 1, REAL_FLATCLI, STEPS="test")
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "task 1: test"
    attack = pd.read_parquet(tmp_path / "out" / "attack")
    assert sorted(attack[attack.split == "test"].epoch) == [24, 25]
    assert not (tmp_path / "sbatch-stub.args").exists()

    # the dependent job, once both tasks have ended
    _flatcli(wrap[1:], capsys)
    assert (tmp_path / "out" / "report.html").stat().st_size > 0


def _make(tmp_path: Path, *args: str, flatcli: str = "flatcli") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-f", str(MAKEFILE), "OUT=study", f"FLATCLI={flatcli}", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def _commands(make_n_output: str) -> list[list[str]]:
    """`make -n`'s recipe lines as argument lists (continuations joined, redirections cut)."""
    text = make_n_output.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line)
        if words and words[0] != "echo":
            commands.append(words[: words.index(">")] if ">" in words else words)
    return commands


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_study_makefile_plans_the_study_and_runs_it_on_digits(tmp_path, capsys, monkeypatch):
    plan = _make(tmp_path, "-n")
    assert plan.returncode == 0, plan.stderr
    commands = _commands(plan.stdout)
    flatcli = [c[1] for c in commands if c[0] == "flatcli"]
    assert flatcli == ["train"] * 4 + [
        "attack",
        "attack",
        "flatness",
        "flatness",
        "landscape",
        "report",
    ]
    trains = {c[c.index("--out") + 1]: c for c in commands if c[1:2] == ["train"]}
    assert set(trains) == {f"study/runs/{r}" for r in ("at", "at-ls", "trades", "awp")}
    assert "--method" not in trains["study/runs/at"]
    assert trains["study/runs/trades"][-5:-3] == ["--method", "trades"]
    landscape = next(c for c in commands if c[1:2] == ["landscape"])
    assert [p for p in landscape if p.endswith(".safetensors")] == [
        f"study/runs/{r}/epoch_0025.safetensors" for r in ("at", "at-ls", "trades", "awp")
    ]
    bad = _make(tmp_path, "-n", "RUNS=at nope")
    assert bad.returncode != 0 and "TRAIN_nope" in bad.stderr

    tiny = [
        "RUNS=at",
        "EPOCHS=1",
        "TRAIN_EXTRA=--train-examples 64 --heldout-examples 32",
        *TINY_STUDY,
    ]
    trained = _make(tmp_path, "train", *tiny, flatcli=REAL_FLATCLI)  # for real, as a user would
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("study: train at (1 epochs)")
    assert (tmp_path / "study" / "runs" / "at" / "epoch_0001.safetensors").exists()
    rest = _make(tmp_path, "-n", *tiny)
    monkeypatch.chdir(tmp_path)
    for command in _commands(rest.stdout):
        if command[0] == "touch":
            Path(command[1]).touch()
        else:
            assert command[0] == "flatcli" and command[1] != "train"
            _flatcli(command[1:], capsys)
    report = pd.read_parquet(tmp_path / "study" / "report")
    assert report.run.tolist() == ["at"] and report.epoch.tolist() == [1]
    assert report.test_robust_loss.notna().all() and report.rce_gap.notna().all()
    assert report.flatness_average.notna().all() and report.flatness_worst.notna().all()
    assert _make(tmp_path, "-q", *tiny).returncode == 0  # nothing left to do


def test_data_doc_md5_sums_are_torchvisions():
    """docs/data.md's checksum table, row by row, against torchvision's published md5 sums."""
    datasets = pytest.importorskip("torchvision.datasets")
    published = {
        "cifar-10-python.tar.gz": datasets.CIFAR10.tgz_md5,
        "cifar-100-python.tar.gz": datasets.CIFAR100.tgz_md5,
        **{
            f"cifar-10-batches-py/{f}": m
            for f, m in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list
        },
        **{
            f"cifar-100-python/{f}": m
            for f, m in datasets.CIFAR100.train_list + datasets.CIFAR100.test_list
        },
        **{
            entry[1]: entry[2]
            for split, entry in datasets.SVHN.split_list.items()
            if split != "extra"
        },
        **{f"MNIST/raw/{f}": m for f, m in datasets.MNIST.resources},
        **{f"FashionMNIST/raw/{f}": m for f, m in datasets.FashionMNIST.resources},
    }
    text = (ROOT / "docs" / "data.md").read_text()
    rows = re.findall(
        r"^\| [\w-]+ \| `([^`]+)`(?: \(archive\))? \| `([0-9a-f]{32})` \|$", text, re.M
    )
    assert dict(rows) == published


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_docs_links_resolve_and_paper_md_is_gone():
    pages = [ROOT / "README.md", ROOT / "examples" / "README.md"]
    for page in pages + sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        assert "PAPER" ".md" not in text, page  # split: the house test greps for it
        for target, anchor in re.findall(r"\]\(([^)#]+)(?:#([^)]*))?\)", text):
            if target.startswith("http"):
                continue
            path = page.parent / target
            assert path.exists(), (page.name, target)
            if anchor:
                assert anchor in _anchors(path.read_text()), (page.name, target, anchor)
