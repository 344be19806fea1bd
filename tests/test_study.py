"""benchmarks/study.py --smoke (the cost of a study, on digits with tiny sizes), and what a
study holds in memory: the data as uint8, float copies only of the examples a command uses."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from flatcli import data
from flatcli.cli import main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
study = importlib.import_module("study")


@pytest.mark.slow  # about 30 s on a busy 2-core machine (aa-lite and a landscape included)
def test_smoke_measures_every_piece(tmp_path, capsys):
    assert study.main(["--smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "study.json").read_text())
    pieces = [r["piece"] for r in written["rows"]]
    assert pieces[0].startswith("train") and pieces[-1].startswith("torchattacks.PGD")
    assert any(p.startswith("aa-lite") for p in pieces) and "landscape" in pieces[-3]
    train, *protocol, total, peer = written["rows"]
    assert train["img_s"] > 0 and train["peak_mb"] > 0
    assert len(protocol) == 6 and all(r["checkpoint_s"] > 0 for r in protocol)
    assert total["checkpoint_s"] == pytest.approx(sum(r["checkpoint_s"] for r in protocol))
    assert 0 <= peer["robust_err"] <= 1 and peer["checkpoint_s"] > 0
    assert written["header"]["dataset"] == "digits"
    table = (tmp_path / "study.md").read_text()
    assert table in capsys.readouterr().out and table.count("\n| ") == len(pieces) + 1


def test_ten_thousand_examples_are_uint8_until_a_command_uses_them(tmp_path, monkeypatch, capsys):
    """10000 test examples: the process keeps them as uint8; a command makes one float copy of
    the examples it evaluates, not one per checkpoint."""
    rng = np.random.RandomState(0)
    npz = tmp_path / "big.npz"
    np.savez(npz, x_train=rng.randint(0, 256, (64, 8, 8, 1), dtype=np.uint8),
             y_train=rng.randint(0, 10, 64), n_classes=np.array(10),
             x_test=rng.randint(0, 256, (12500, 8, 8, 1), dtype=np.uint8),
             y_test=rng.randint(0, 10, 12500))
    converted = []
    original = data.splits.as_float_nchw
    counted = lambda x: converted.append(len(x)) or original(x)  # noqa: E731
    monkeypatch.setattr(data.splits, "as_float_nchw", counted)
    counts = {}
    for n_checkpoints in (1, 3):
        runs = tmp_path / f"runs{n_checkpoints}" / "at"
        runs.mkdir(parents=True)
        for epoch in range(25 - n_checkpoints + 1, 26):
            for suffix in (".safetensors", ".json"):
                shutil.copy(ROOT / "sample_checkpoints" / "at" / f"epoch_{epoch:04d}{suffix}", runs)
        converted.clear()
        with pytest.raises(SystemExit) as done:
            main(["attack", str(runs), "--out", str(tmp_path / f"out{n_checkpoints}"),
                  "--dataset", f"npz:{npz}", "--n-examples", "10000", "--attacks", "pgd1",
                  "--eps", "0.1", "--batch-size", "2500", "--quiet", "--format", "csv"])
        assert done.value.code == 0, capsys.readouterr().err
        counts[n_checkpoints] = list(converted)
    assert counts[1] == counts[3] == [10000]  # one float copy per command, none per checkpoint
    raw = data.splits._raw(f"npz:{npz}", None)
    assert raw.x_test.dtype == np.uint8 and raw.x_test.shape == (12500, 8, 8, 1)
