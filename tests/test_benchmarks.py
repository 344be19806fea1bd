"""benchmarks/: gpu.py's smoke table on CPU, its FLOP accounting, and every script's --help."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

gpu = importlib.import_module("gpu")

SMOKE_ROWS = (  # the first train variant makes the model the others measure
    [("train", "fp32:off")]
    + [(a, v) for a in ("pgd20", "apgd-ce") for v in ("fp32:off", "bf16:off")]
    + [("train", "bf16:off")]
    + [(p, "fp32:off") for p in (*gpu.PROTOCOL, "protocol")]
    + [("apgd-t", "fp32:off")]
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`gpu.py --smoke` run once (CPU, tiny model, 32 examples): (header, rows) from its JSON."""
    out = tmp_path_factory.mktemp("gpu-bench")
    assert gpu.main(["--smoke", "--threads", "1", "--out", str(out)]) == 0
    written = json.loads((out / "gpu_bench.json").read_text())
    assert (out / "gpu_bench.md").read_text().count("\n| ") == len(written["rows"]) + 1
    assert len((out / "gpu_bench.csv").read_text().splitlines()) == len(written["rows"]) + 1
    return written["header"], written["rows"]


def test_smoke_table_has_every_row(smoke):
    header, rows = smoke
    assert [(r["row"], r["variant"]) for r in rows] == SMOKE_ROWS
    assert header["device"] == "cpu" and header["torch"] == torch.__version__
    assert header["model"].startswith("trained by the train row fp32:off")
    fp32 = [r for r in rows if r["variant"] == "fp32:off"]
    for row in fp32:  # the fp32 eager rows are the baseline: each must have run
        assert row["seconds"] > 0 and row["tflops"] > 0, row
    parts = [r for r in fp32 if r["row"] in gpu.PROTOCOL]
    total = next(r for r in fp32 if r["row"] == "protocol")
    assert total["seconds"] == pytest.approx(sum(r["seconds"] for r in parts))
    for row in rows:  # the rest: a time, or the one-line reason why not
        assert row["seconds"] is not None or "\n" not in row["note"], row


def test_smoke_errors_are_on_the_same_examples_as_the_peers(smoke):
    _, rows = smoke
    for name in ("pgd20", "apgd-ce", "apgd-t"):
        row = next(r for r in rows if r["row"] == name and r["variant"] == "fp32:off")
        assert row["peer"] == gpu.PEERS[name] and row["n_examples"] == 32, row
        assert row["note"] is None, row  # no "peer ran on other examples"
        # flatcli as strong as its peer on the same model and examples (3 examples of slack)
        assert row["robust_err"] >= row["peer_robust_err"] - 3 / 32, row
    pgd = next(r for r in rows if r["row"] == "pgd20" and r["variant"] == "fp32:off")
    assert abs(pgd["robust_err"] - pgd["peer_robust_err"]) <= 3 / 32
    assert 0 < pgd["robust_err"] < 0.75  # a trained model: errors that can differ


def test_nominal_flops_match_the_flop_counter(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    from flatcli import api

    sizes = gpu.SMOKE_SIZES
    dataset = gpu.synthetic_dataset(tmp_path / "data.npz", sizes)
    checkpoint = gpu.random_checkpoint(tmp_path, sizes, dataset, seed=0)
    per_example = gpu.flops_per_example(api.load_model(checkpoint), sizes.image_size, "cpu")
    assert per_example["fwd"] < per_example["fb_input"] < per_example["fb_full"]
    with FlopCounterMode(display=False) as counter:
        api.attack(checkpoint, attacks="pgd20", n_examples=8, eps=8 / 255, compile="off")
    nominal = gpu.nominal_flops("pgd20", 8, per_example, classes=sizes.classes)
    assert counter.get_total_flops() == pytest.approx(nominal, rel=0.05)


def test_rows_over_the_budget_are_listed_not_run(tmp_path):
    args = gpu.parse_args(["--smoke", "--budget-s", "0"])
    rows = gpu.Bench(args, tmp_path).run()
    assert [(r["row"], r["variant"]) for r in rows] == SMOKE_ROWS
    assert all(r["seconds"] is None and r["note"].startswith("not run") for r in rows)


def test_a_failing_row_shows_its_error_and_the_rest_run(tmp_path, monkeypatch):
    args = gpu.parse_args(["--smoke", "--rows", "train,pgd20", "--variants", "fp32:off"])
    bench = gpu.Bench(args, tmp_path)
    monkeypatch.setattr(bench, "train_row", lambda variant: 1 / 0)
    rows = bench.run()
    assert rows[0]["note"] == "error: ZeroDivisionError: division by zero"
    assert bench.model_note.startswith("random init")
    assert rows[1]["row"] == "pgd20" and rows[1]["seconds"] > 0


def test_timed_runs_medians_and_compile_time():
    times = iter([5.0, 1.0, 3.0, 2.0])
    seconds, compile_s, _ = gpu.timed_runs(lambda: (next(times), {}), 3, 10.0, True)
    assert (seconds, compile_s) == (2.0, 3.0)  # warm median; cold minus it
    calls = []
    seconds, compile_s, _ = gpu.timed_runs(lambda: (calls.append(1) or 20.0, {}), 3, 10.0, False)
    assert (seconds, compile_s, len(calls)) == (20.0, None, 1)  # long and eager: the cold run


def test_variants_parse_and_bad_ones_exit_2(capsys):
    assert gpu.parse_variants("fp32:off, bf16:on") == [("fp32", "off"), ("bf16", "on")]
    with pytest.raises(argparse.ArgumentTypeError, match="fp16:off"):
        gpu.parse_variants("fp16:off")
    with pytest.raises(SystemExit) as stop:
        gpu.parse_args(["--variants", "bf16:maybe"])
    assert stop.value.code == 2 and "bf16:maybe" in capsys.readouterr().err


def test_landscape_speed_data_hold_n_test_examples(tmp_path):
    from flatcli import data

    landscape_speed = importlib.import_module("landscape_speed")
    path = landscape_speed.random_npz(tmp_path / "random.npz", 128)
    _, y = data.load_split(f"npz:{path}", "test")
    assert len(y) >= 128


@pytest.mark.parametrize(
    "script", ["attack_speed", "flatness_speed", "landscape_speed", "train_speed", "gpu"]
)
def test_every_benchmark_has_help(script, capsys):
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_a_compiled_variant_reaches_the_api_and_reports_its_compile_time(tmp_path, monkeypatch):
    import pandas as pd

    args = gpu.parse_args(["--smoke", "--repeats", "3", "--long-s", "10"])
    bench = gpu.Bench(args, tmp_path)
    bench.ensure_model()
    calls, walls = [], iter([6.0, 2.0, 1.0, 1.5])  # cold (with the compile), then warm runs

    def attack(path, **options):
        calls.append(options)
        return pd.DataFrame({"wall_time_s": [next(walls)], "robust_err": [0.5],
                             "n_examples": [options["n_examples"]]})

    monkeypatch.setattr(gpu.api, "attack", attack)
    row = bench.attack_row("pgd20", ("bf16", "on"), {"error": "not run"})
    used = {(c["precision"], c["compile"], c["attacks"]) for c in calls}
    assert used == {("bf16", "on", "pgd20")}
    assert (row["seconds"], row["compile_s"]) == (1.5, 4.5)
    assert row["note"] == "peer failed: not run"


def test_a_train_row_times_the_last_epoch_and_keeps_the_first_checkpoint(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from flatcli.training import loop

    configs = []

    def train(config, out, force=False):
        configs.append(config)
        rows = [{"epoch_time_s": 5.0, "n_examples": 512, "checkpoint": str(out / "e1")},
                {"epoch_time_s": 2.0, "n_examples": 512, "checkpoint": str(out / "e2")}]
        return SimpleNamespace(rows=rows)

    monkeypatch.setattr(loop, "train", train)
    bench = gpu.Bench(gpu.parse_args(["--smoke"]), tmp_path)
    eager, compiled = bench.train_row(("fp32", "off")), bench.train_row(("bf16", "on"))
    assert [(c.amp, c.compile) for c in configs] == [("none", "off"), ("bf16", "on")]
    assert (eager["seconds"], eager["img_s"], eager["compile_s"]) == (2.0, 256.0, None)
    assert compiled["compile_s"] == 3.0  # the first epoch's extra time
    assert bench.checkpoint == tmp_path / "train-fp32-off" / "e2"  # the first row's model
    with pytest.raises(ValueError, match="tf32"):
        bench.train_row(("tf32", "off"))
