"""Repeats and settings in the report: rows that differ only in seed are averaged with the SE
across seeds; rows that differ in a setting are never merged (one is used, the others named);
the strongest attack of one setting still gives the robust error."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from flatcli import report, tables
from flatcli.cli import main
from flatcli.report.repeats import average_seeds, choose_setting

BASE = {"dataset": "digits", "arch": "small-cnn", "norm": "linf", "eps": 0.1, "split": "test"}


def _attack(run, epoch, attack, seed, robust_loss, robust_err, **extra) -> dict:
    row = {**BASE, "run": run, "epoch": epoch, "checkpoint": f"/r/{run}/e{epoch}.safetensors"}
    row |= {"attack": attack, "seed": seed, "n_examples": 400, "dtype": "float32"}
    row |= {"steps": 7, "restarts": 1, "step_size": 0.025, "config_hash": f"h{seed}"}
    row |= {"robust_loss": robust_loss, "robust_err": robust_err, "clean_err": 0.1}
    row |= {"clean_loss": 0.3, "created_at": f"2026-01-01T00:00:0{seed}"}
    se = None if robust_loss is None else 0.02
    row |= {"robust_loss_se": se, "robust_err_se": 0.0229, "clean_err_se": 0.015}
    row |= {"clean_loss_se": 0.01}
    return row | extra


def _write(out, rows, table="attack"):
    for i, row in enumerate(rows):
        tables.write_part(out, table, f"{row['run']}__e{row['epoch']:04d}__{i}", f"{i:016d}", [row])


@pytest.fixture
def study(tmp_path):
    out = tmp_path / "out"
    rows = [
        _attack("at", 1, "pgd7", 0, 0.5805, 0.30),
        _attack("at", 1, "pgd7", 1, 0.5946, 0.32),  # a seed repeat: averaged
        _attack("at", 1, "pgd7", 2, 9.0, 0.9, dtype="bfloat16"),  # another precision
        _attack("at", 1, "aa-lite", 0, None, 0.50, steps=100, step_size=None),  # stronger
        _attack("at", 2, "pgd7", 0, 0.70, 0.40),
        _attack("at", 2, "pgd7", 3, 5.0, 0.8, step_size=0.05),  # another step size
        _attack("ls", 1, "pgd7", 0, 0.60, 0.35),
        _attack("ls", 2, "pgd7", 0, 0.65, 0.36),
        _attack("at", 1, "pgd7", 0, 0.5, 0.2, split="heldout"),  # early stopping: epoch 1
        _attack("at", 2, "pgd7", 0, 0.6, 0.3, split="heldout"),
    ]
    _write(out, rows)
    return out


def test_seed_repeats_are_averaged_with_their_standard_error(study):
    result = report.build([study], figures=False)
    row = result.table.query("run == 'at' and epoch == 1").iloc[0]
    assert row.test_n_seeds == 2
    assert row.test_robust_loss == pytest.approx((0.5805 + 0.5946) / 2)  # not 0.5946, the max
    seed_se = abs(0.5946 - 0.5805) / 2  # std (ddof 1) of two values / sqrt(2)
    assert row.test_robust_loss_seed_se == pytest.approx(seed_se)
    assert row.test_robust_loss_se == pytest.approx(math.hypot(0.02, seed_se))
    single = result.table.query("run == 'ls' and epoch == 1").iloc[0]
    assert single.test_n_seeds == 1 and pd.isna(single.test_robust_loss_seed_se)
    line = next(s for s in result.settings if s.startswith("Attack, test split"))
    assert "seed repeats averaged (2 seeds on 1 of 4 checkpoints" in line


def test_different_settings_are_never_merged_and_are_named(study):
    result = report.build([study], figures=False)
    at1 = result.table.query("run == 'at' and epoch == 1").iloc[0]
    at2 = result.table.query("run == 'at' and epoch == 2").iloc[0]
    assert at1.test_robust_loss < 1 and at2.test_robust_loss == pytest.approx(0.70)
    notes = " ".join(result.warnings)
    assert "dtype bfloat16 (used: float32) on 1 checkpoint (at); not merged" in notes
    assert "pgd7: also measured with step size 0.05 (used: 0.025) on 1 checkpoint (at)" in notes


def test_the_strongest_attack_of_one_setting_stays_and_the_settings_line_says_so(study):
    result = report.build([study], figures=False)
    row = result.table.query("run == 'at' and epoch == 1").iloc[0]
    assert row.test_robust_err == 0.50 and row.test_robust_err_se == pytest.approx(0.0229)
    assert row.test_attacks == "aa-lite,pgd7"
    line = next(s for s in result.settings if s.startswith("Attack, test split"))
    assert "the strongest attack's (the largest over these attacks, all of one setting)" in line
    assert "dtype float32" in line and "bfloat16" not in line


def test_flatness_seed_repeats_are_averaged_and_estimators_not_merged(tmp_path):
    out = tmp_path / "out"
    flat = {**BASE, "measure": "average", "xi": 0.5, "samples": 4, "estimator": "mean"}
    flat |= {"checkpoint": "/r/at/e.safetensors"}
    rows = [
        {**flat, "run": "at", "epoch": 1, "seed": s, "flatness": f, "flatness_std": 0.2,
         "flatness_se": 0.1, "created_at": f"2026-01-01T00:00:0{s}"}
        for s, f in ((0, 1.0), (1, 1.4))
    ] + [
        {**flat, "run": "at", "epoch": 1, "seed": 0, "flatness": 50.0, "samples": 2,
         "created_at": "2026-01-02T00:00:00"},  # fewer offsets: another setting, newer
        {**flat, "run": "at", "epoch": 2, "seed": 0, "flatness": 2.0, "flatness_std": 0.2},
    ]  # fmt: skip
    _write(out, rows, "flatness")
    result = report.build([out], figures=False)
    row = result.table.query("epoch == 1").iloc[0]
    assert row.flatness_average == pytest.approx(1.2) and row.flatness_average_n_seeds == 2
    assert row.flatness_average_seed_se == pytest.approx(0.2)
    assert row.flatness_average_se == pytest.approx(math.hypot(0.1, 0.2))
    old = result.table.query("epoch == 2").iloc[0]  # no flatness_se: std / sqrt(samples)
    assert old.flatness_average_se == pytest.approx(0.1)
    assert any("samples 2 (used: 4)" in w for w in result.warnings), result.warnings


def test_a_tie_in_checkpoints_goes_to_the_newest_setting():
    rows = pd.DataFrame(
        [
            {"run": "a", "epoch": 1, "dtype": "float32", "created_at": "1"},
            {"run": "a", "epoch": 1, "dtype": "bfloat16", "created_at": "2"},
        ]
    )
    notes: list[str] = []
    chosen = choose_setting(rows, ["dtype"], "Attack", notes)
    assert list(chosen.dtype) == ["bfloat16"]
    assert notes == [
        "Attack: also measured with dtype float32 (used: bfloat16) on 1 checkpoint (a); not "
        "merged with the setting used (measured on the most checkpoints)."
    ]


def test_a_seed_measured_twice_counts_once_at_its_newest():
    rows = pd.DataFrame(
        [
            {"run": "a", "epoch": 1, "seed": 0, "v": 1.0, "created_at": "1"},
            {"run": "a", "epoch": 1, "seed": 0, "v": 3.0, "created_at": "2"},
            {"run": "a", "epoch": 1, "seed": 1, "v": 5.0, "created_at": "1"},
        ]
    )
    (row,) = average_seeds(rows, ["run", "epoch"], {"v": None}).to_dict("records")
    assert row["v"] == 4.0 and row["n_seeds"] == 2 and row["v_seed_se"] == pytest.approx(1.0)


def test_terminal_table_and_headline_show_errors_in_percent_with_their_se(study, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(study), "--no-figures", "-q", "--select", "last"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "40.0 ± 2.3 %" in out  # at, epoch 2: pgd7 robust error 0.40, SE 0.0229
    assert "0.7 ± 0.02" in out
    found = report.build([study], figures=False).found
    assert {f.topic for f in found} >= {"Robust overfitting", "Early stopping"}
    (early,) = [f for f in found if f.topic == "Early stopping"]  # at: 50 % at 1, 40 % at 2
    assert early.run == "at" and early.value == pytest.approx(0.10) and early.beyond_noise
    assert "test robust error 50.0 ± 2.3 % there vs 40.0 ± 2.3 % at the last epoch" in early.text
    assert "(+10.0 ± 3.2 points: higher, beyond 2 SE)" in early.text
    assert all(isinstance(f, report.Finding) and f.text for f in found)
    text = (study / "report.md").read_text()
    assert all(f.text in text for f in found if f.topic == "Robust overfitting")
