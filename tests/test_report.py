"""`flatcli report` on synthetic tables: the join, gaps, early stopping, correlations equal to
scipy.stats on the same numbers, missing tables, a self-contained HTML page, and the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import flatcli, probed_title
from scipy import stats

from flatcli import report, tables
from flatcli.files import atomic_write_text

RUNS = {  # run -> (method, label smoothing, best epoch)
    "at": ("at", 0.0, 2),
    "awp": ("awp", 0.0, 3),
    "at-ls": ("at", 0.2, 3),
    "trades": ("trades", 0.0, 1),
    "at-wd": ("at", 0.0, 2),
}
EPOCHS = (1, 2, 3)


def _numbers(seed: int = 0) -> dict:
    """(run, epoch) -> made-up measurements (seeded)."""
    rng = np.random.default_rng(seed)
    return {
        (run, epoch): {
            "test_err": rng.uniform(0.2, 0.6),
            "test_loss": rng.uniform(0.5, 1.5),
            "train_err": rng.uniform(0.0, 0.3),
            "train_loss": rng.uniform(0.1, 0.6),
            "flat": rng.uniform(0.1, 2.0),
            "worst": rng.uniform(0.5, 5.0),
            "heldout": rng.uniform(0.2, 0.6),
        }
        for run in RUNS
        for epoch in EPOCHS
    }


def _ckpt(root: Path, run: str, epoch: int) -> str:
    return str(root / "runs" / run / f"epoch_{epoch:04d}.safetensors")


def write_study(root: Path, numbers: dict, with_flatness=True, with_train=True, with_runs=True):
    """Tables like attack/flatness/train would write, for RUNS x EPOCHS."""
    out = root / "out"
    for (run, epoch), v in numbers.items():
        base = {"run": run, "epoch": epoch, "checkpoint": _ckpt(root, run, epoch), "eps": 0.1}
        base |= {"dataset": "digits", "arch": "small-cnn", "norm": "linf"}
        key = f"{run}__e{epoch:04d}"
        rows = [
            {**base, "split": "test", "attack": "pgd20x10", "n_examples": 400,
             "robust_err": v["test_err"] - 0.05, "robust_loss": v["test_loss"],
             "clean_err": 0.1, "clean_loss": 0.3},
            {**base, "split": "test", "attack": "aa-lite", "n_examples": 400,
             "robust_err": v["test_err"], "robust_loss": None, "clean_err": 0.1,
             "clean_loss": 0.3},
        ]  # fmt: skip
        tables.write_part(out, "attack", key, "a" * 16, rows)
        if with_train:
            train = {**base, "split": "train", "attack": "pgd20x10", "n_examples": 1000}
            train |= {"robust_err": v["train_err"], "robust_loss": v["train_loss"]}
            tables.write_part(out, "attack", key, "b" * 16, [train])
        if with_flatness:
            rows = [
                {**base, "split": "test", "measure": "average", "xi": 0.5, "flatness": v["flat"],
                 "flatness_std": 0.1},
                {**base, "split": "test", "measure": "average", "xi": 1.0, "flatness": 99.0},
                {**base, "split": "test", "measure": "worst", "xi": 0.00075,
                 "flatness": v["worst"]},
            ]  # fmt: skip
            tables.write_part(out, "flatness", key, "c" * 16, rows)
    if with_runs:
        for run, (method, ls, best) in RUNS.items():
            if (run, EPOCHS[0]) not in numbers:
                continue
            run_dir = root / "runs" / run
            config = {"method": method, "label_smoothing": ls, "weight_decay": 5e-4}
            if run == "at-wd":
                config["weight_decay"] = 5e-3
            if method == "awp":
                config["awp_gamma"] = 0.01
            info = {"format": "flatcli-run", "config": config, "best": {"epoch": best}}
            atomic_write_text(run_dir / "run.json", json.dumps(info))
            log = [
                {"run": run, "epoch": e, "checkpoint": _ckpt(root, run, e), "split": "train",
                 "lr": 0.05, "heldout_robust_err": numbers[(run, e)]["heldout"]}
                for e in EPOCHS
            ]  # fmt: skip
            tables.write_part(run_dir, "train_log", run, "d" * 16, log)
    return out


@pytest.fixture()
def study(tmp_path):
    numbers = _numbers()
    return tmp_path, write_study(tmp_path, numbers), numbers


def test_per_epoch_join_gaps_strongest_attack_and_early_stopping(study):
    root, out, numbers = study
    result = report.build([out], how="last", figures=False)
    df = result.table
    assert len(df) == len(RUNS) * len(EPOCHS)
    assert list(df.columns) == tables.columns("report")
    for row in df.itertuples():
        v = numbers[(row.run, row.epoch)]
        assert row.test_robust_err == pytest.approx(v["test_err"])  # aa-lite: the stronger
        assert row.test_robust_loss == pytest.approx(v["test_loss"])  # only PGD estimates it
        assert row.rce_gap == pytest.approx(v["test_loss"] - v["train_loss"])
        assert row.rerr_gap == pytest.approx(v["test_err"] - v["train_err"])
        assert row.flatness_average == pytest.approx(v["flat"])  # the paper's xi, not xi = 1
        assert row.flatness_average_xi == 0.5
        assert row.heldout_robust_err == pytest.approx(v["heldout"])
        assert row.is_best == (row.epoch == RUNS[row.run][2])
        assert row.is_last == (row.epoch == 3)
        assert row.test_attacks == "aa-lite,pgd20x10"
    by_run = df.drop_duplicates("run").set_index("run")
    assert by_run.loc["awp", "method"] == "awp" and by_run.loc["awp", "regularizers"] == "awp 0.01"
    assert by_run.loc["at-ls", "regularizers"] == "ls 0.2"
    assert by_run.loc["at-wd", "regularizers"] == "wd 0.005"
    assert by_run.loc["at", "regularizers"] == ""
    assert pd.read_parquet(out / "report").shape == df.shape


@pytest.mark.parametrize("how", ["last", "best", "all"])
def test_correlations_are_scipys_on_the_same_numbers(study, how):
    root, out, numbers = study
    result = report.build([out], how=how, figures=False)
    corr = pd.read_parquet(out / "correlations")
    if how == "all":
        keys = list(numbers)
    else:
        keys = [(run, 3 if how == "last" else RUNS[run][2]) for run in RUNS]
    flat = [numbers[k]["flat"] for k in keys]
    gap = [numbers[k]["test_loss"] - numbers[k]["train_loss"] for k in keys]
    err = [numbers[k]["test_err"] for k in keys]
    for target, values in (("test_robust_err", err), ("rce_gap", gap)):
        row = corr[(corr.scope != "within run") & (corr.measure == "flatness_average")]
        row = row[row.target == target].iloc[0]
        assert row.n == len(keys) and row.select == how
        tau, p = stats.kendalltau(flat, values)
        rho, p_rho = stats.spearmanr(flat, values)
        r, p_r = stats.pearsonr(flat, values)
        assert row.kendall == pytest.approx(tau)
        assert row.spearman == pytest.approx(rho) and row.pearson == pytest.approx(r)
        if how == "all":  # pooled epochs are not independent: coefficients only
            assert pd.isna(row.kendall_p) and pd.isna(row.spearman_p) and pd.isna(row.pearson_p)
        else:
            assert row.kendall_p == pytest.approx(p)
            assert row.spearman_p == pytest.approx(p_rho) and row.pearson_p == pytest.approx(p_r)
    within = corr[(corr.scope == "within run") & (corr.run == "awp")]
    row = within[(within.measure == "flatness_worst") & (within.target == "rce_gap")].iloc[0]
    worst = [numbers[("awp", e)]["worst"] for e in EPOCHS]
    gaps = [numbers[("awp", e)]["test_loss"] - numbers[("awp", e)]["train_loss"] for e in EPOCHS]
    assert row.kendall == pytest.approx(stats.kendalltau(worst, gaps)[0])
    assert within.kendall_p.isna().all() and within.kendall_p_holm.isna().all()
    assert len(result.correlations) == len(corr) and (corr.n >= 3).all()


def test_correlation_needs_three_pairs_and_variation():
    assert report.correlation([1, 2], [3, 4])["kendall"] is None
    assert report.correlation([1, 1, 1], [3, 4, 5])["spearman"] is None
    out = report.correlation([1, 2, float("nan"), 4], [1, 3, 2, 5])
    assert out["n"] == 3
    assert out["pearson"] == pytest.approx(stats.pearsonr([1, 2, 4], [1, 3, 5])[0])


def test_findings_state_the_numbers(study):
    root, out, numbers = study
    result = report.build([out], how="last")
    text = (out / "report.md").read_text()
    at = [numbers[("at", e)] for e in EPOCHS]
    low = min(v["test_loss"] for v in at)
    assert f"to its minimum {low:.3g}" in text
    across = result.findings["Flatness and robustness across runs"][0]
    flat = [numbers[(r, 3)]["flat"] for r in RUNS]
    tau, p = stats.kendalltau(flat, [numbers[(r, 3)]["test_err"] for r in RUNS])
    holm_p = result.correlations.query(
        "scope == 'across runs' and measure == 'flatness_average' and target == 'test_robust_err'"
    ).kendall_p_holm.iloc[0]
    assert holm_p >= p
    if holm_p < 0.05:
        side = "lower" if tau > 0 else "higher"
        assert f"and test robust error is {tau:.2g}" in across
        assert f"flatter runs had a {side} robust error" in across
    else:
        assert "no evidence of a relation between average-case flatness and test robust " in across
        assert f"(Kendall tau {tau:.2g}, p = {p:.2g}" in across and "flatter runs" not in across
    for name in ("curves", "flatness", "scatter"):
        assert (out / "report_plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / "report_plots" / f"{name}.svg").read_text()[:2000]
        assert f"report_plots/{name}.png" in text


def test_missing_tables_degrade_gracefully(tmp_path):
    numbers = _numbers()
    out = write_study(tmp_path, numbers, with_flatness=False, with_train=False, with_runs=False)
    result = report.build([out], how="best")
    df = result.table
    assert len(df) == len(RUNS) * len(EPOCHS)
    assert df.rce_gap.isna().all() and df.flatness_average.isna().all()
    assert df.is_best.sum() == 0 and df.method.isna().all()
    assert result.correlations.empty
    text = (out / "report.md").read_text()
    for command in ("--split train", "flatcli flatness", "flatcli landscape", "flatcli train"):
        assert command in text
    assert "curves" in result.figures and "flatness" not in result.figures


def test_html_is_self_contained(study):
    root, out, _ = study
    report.build([out], how="last", html_page=True)
    page = (out / "report.html").read_text()
    sources = re.findall(r"src=['\"]([^'\"]*)", page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "http" not in page and "<script" not in page
    assert "Robust overfitting" in page and "<table>" in page


def test_cli_prints_one_row_per_run_and_writes_elsewhere(study, capsys):
    root, out, numbers = study
    elsewhere = root / "report_dir"
    code, stdout, err = flatcli(capsys, "report", out, "--out", elsewhere, "-f", "json", "--html")
    assert code == 0, err
    rows = json.loads(stdout)
    assert sorted(r["run"] for r in rows) == sorted(RUNS) and all(r["epoch"] == 3 for r in rows)
    assert (elsewhere / "report.md").is_file() and (elsewhere / "report.html").is_file()
    assert not (out / "report.md").exists()
    assert (elsewhere / "report_plots" / "curves.png").is_file()
    code, stdout, _ = flatcli(capsys, "report", out, "--select", "best", "-q", "--no-figures")
    assert code == 0 and "trades" in stdout
    assert (out / "report.md").is_file() and not (out / "report_plots").exists()


@pytest.mark.parametrize(
    "setup, message",
    [("missing", "no such directory"), ("empty", "no attack, flatness, landscape")],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, setup, message):
    target = tmp_path / "nothing"
    if setup == "empty":
        target.mkdir()
    code, stdout, err = flatcli(capsys, "report", "--no-figures", target)
    assert code == 2 and stdout == ""
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_flatness_only_rows_keep_their_checkpoint_and_dataset(tmp_path):
    import shutil

    out = write_study(tmp_path, _numbers())
    shutil.rmtree(out / "attack")
    df = report.build([out], how="last", figures=False).table
    assert df.checkpoint.notna().all() and (df.dataset == "digits").all()
    assert df.test_robust_err.isna().all() and df.flatness_average.notna().all()


def test_unreadable_parts_and_run_json_are_skipped_and_named(tmp_path, capsys):
    out = write_study(tmp_path, _numbers())
    bad_part = out / "flatness" / "zz__broken__cccccccc.parquet"
    bad_part.write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "runs" / "awp" / "run.json").write_text("{not json")
    code, _, err = flatcli(capsys, "report", "--no-figures", out, "-f", "csv")
    assert code == 0
    assert f"Skipped {bad_part}: unreadable" in err and "awp/run.json: unreadable" in err
    df = pd.read_parquet(out / "report")
    assert df.flatness_average.notna().all()  # the readable parts are all there
    assert df[df.run == "awp"].method.isna().all() and (df[df.run == "at"].method == "at").all()
    assert "Skipped" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "losses, se, verdict",
    [
        ([1.0, 0.6, 0.8], 0.05, "robust overfitting (one-sided z-test"),  # z = 2.83
        ([1.0, 0.6, 0.61], 0.05, "no rise beyond noise"),
        ([1.0, 0.6, 0.8], 0.2, "no rise beyond noise"),
        # z = 1.8: p = 0.036 alone, but 0.072 after Bonferroni over the 2 earlier epochs
        ([1.0, 0.6, 0.8], 0.2 / (1.8 * 2**0.5), "no rise beyond noise"),
        ([1.0, 0.6, 0.8], None, "no standard errors, so no verdict"),
        ([1.0, 0.8, 0.6], 0.05, "did not rise afterwards"),
    ],
)
def test_overfitting_finding_follows_the_test_robust_loss(losses, se, verdict):
    group = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "test_robust_loss": losses,
            "test_robust_loss_se": [se] * 3,
            "train_robust_loss": [0.9, 0.5, 0.3],
            "rce_gap": [a - b for a, b in zip(losses, [0.9, 0.5, 0.3], strict=True)],
            "test_robust_err": [0.5, 0.4, 0.45],
            "test_robust_err_se": [0.01, 0.01, 0.0101],
            "is_best": [False, True, False],
            "is_last": [False, False, True],
        }
    )
    text = report.overfitting_finding("r", group)
    assert verdict in text
    assert f"to its minimum {min(losses):.3g} at epoch {losses.index(min(losses)) + 1}" in text
    assert "Early stopping (held-out robust error) picks epoch 2" in text
    assert "test robust error 40.0 ± 1.0 % there vs 45.0 ± 1.0 % at the last epoch" in text
    assert "(-5.0 ± 1.4 points: lower, beyond 2 SE)" in text
    if "robust overfitting (" not in verdict:
        assert "robust overfitting (" not in text and "rose to" not in text
    (record, *_) = [f for f in report.finding_records(group.assign(run="r", **_empty()), *_none())]
    assert record.topic == "Robust overfitting" and record.text == text
    if se is not None and losses[2] > losses[1]:
        rise_se = se * 2**0.5
        assert record.value == pytest.approx(losses[2] - losses[1])
        assert record.se == pytest.approx(rise_se)
        z = (losses[2] - losses[1]) / rise_se
        assert record.p == pytest.approx(min(1, 2 * 0.5 * math.erfc(z / 2**0.5)))
        assert record.beyond_noise == ("robust overfitting (" in verdict)
    else:
        assert record.beyond_noise in (None, False) and "Bonferroni" not in text


def _empty() -> dict:
    """Report columns the headline reads that a hand-made group may lack."""
    return {c: None for c in tables.columns("report") if c.startswith(("flatness_", "lambda",
            "hessian", "landscape_"))}  # fmt: skip


def _none():
    return pd.DataFrame(columns=tables.columns("correlations")), "last"


# ---------------------------------------------------------------------------------------------
# Statistics that claim only what they support


def test_holm_step_down_equals_the_closed_form():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4*0.005, 3*0.01, 2*0.03, max(2*0.03, 1*0.04)
    got = report.holm([0.01, 0.04, 0.03, None, 0.005])
    assert got[3] is None
    assert got[:3] + got[4:] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert report.holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1, monotone
    assert report.holm([]) == []


def test_holm_columns_adjust_each_coefficient_over_the_pairs_tested(study):
    root, out, _ = study
    corr = report.build([out], how="last", figures=False).correlations
    across = corr[corr.scope == "across runs"]
    assert (across.tests == len(across)).all() and len(across) > 1
    for name in ("kendall", "spearman", "pearson"):
        expected = report.holm(list(across[f"{name}_p"]))
        assert list(across[f"{name}_p_holm"]) == pytest.approx(expected)
        assert (across[f"{name}_p_holm"] >= across[f"{name}_p"]).all()
    assert corr[corr.scope == "within run"].tests.isna().all()


def test_three_runs_at_p_one_state_no_trend(tmp_path):
    three = ("at", "awp", "trades")
    numbers = {k: v for k, v in _numbers(1).items() if k[0] in three}
    out = write_study(tmp_path, numbers)
    result = report.build([out], how="last", figures=False)
    across = result.findings["Flatness and robustness across runs"]
    corr = result.correlations[result.correlations.scope == "across runs"]
    assert (corr[corr.kendall.abs() < 1].kendall_p == 1.0).all()  # n = 3: |tau| 1/3, p = 1
    text = (out / "report.md").read_text()
    assert "flatter runs" not in text and "tended" not in text
    assert any("no evidence of a relation" in s and "n = 3" in s for s in across)
    assert "Holm-adjusted p < 0.05" in text


def test_mixed_eps_is_named_and_refuses_the_comparison(tmp_path, capsys):
    numbers = _numbers()
    out = write_study(tmp_path, numbers)
    for part in (out / "attack").glob("trades__*"):
        df = pd.read_parquet(part)
        df["eps"] = 0.2
        tables.write_table(out, "attack", df.to_dict("records"))  # a whole table ...
        (out / "attack" / "attack.parquet").rename(part)  # ... written over the part
    code, _, err = flatcli(capsys, "report", out, "-f", "csv")
    assert code == 0
    text = (out / "report.md").read_text()
    for where in (text, err):
        assert "eps differs: 0.1 (at; at-ls; at-wd; awp); 0.2 (trades)" in where
    assert "Not compared across runs" in text and "flatter runs" not in text
    corr = pd.read_parquet(out / "correlations")
    assert set(corr.scope) == {"within run"}


def test_a_checkpoint_measured_twice_uses_the_setting_of_most_checkpoints_and_says_so(tmp_path):
    out = write_study(tmp_path, _numbers())
    again = {"run": "at", "epoch": 3, "checkpoint": _ckpt(tmp_path, "at", 3), "split": "test"}
    again |= {"attack": "pgd20x10", "n_examples": 50, "eps": 0.1, "robust_err": 0.9}
    again |= {"dataset": "digits", "norm": "linf"}
    again |= {"robust_loss": 9.0, "created_at": "9999-01-01T00:00:00"}
    tables.write_part(out, "attack", "at__e0003", "e" * 16, [again])
    result = report.build([out], how="last", figures=False)
    row = result.table.query("run == 'at' and epoch == 3").iloc[0]
    original = _numbers()[("at", 3)]
    assert row.test_n == 400 and row.test_robust_loss == pytest.approx(original["test_loss"])
    note = "also measured with examples 50 (used: 400) on 1 checkpoint (at); not merged"
    assert any(note in w for w in result.warnings), result.warnings
    assert not any("examples differs" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize(
    "best, best_se, verdict",
    [(1.0, 0.05, "flatter"), (1.9, 0.05, "no difference beyond noise"), (2.5, 0.05, "sharper")],
)
def test_flatter_only_beyond_two_standard_errors(best, best_se, verdict):
    assert report.compare(best, best_se, 2.0, 0.05) == verdict  # 2 SE of the difference: 0.14
    assert report.compare(best, None, 2.0, 0.05) is None
    group = pd.DataFrame(
        {
            "epoch": [1, 2],
            "flatness_average": [best, 2.0],
            "flatness_average_se": [best_se, 0.05],
            "flatness_average_xi": [0.5, 0.5],
            "rce_gap": [0.1, 0.2],
            "is_best": [True, False],
        }
    )
    text = report.flatness_finding("r", group, "flatness_average")
    if verdict == "no difference beyond noise":
        assert "no difference beyond noise" in text and "flatter" not in text
    else:
        assert f"The early-stopped epoch 1 is {verdict}" in text
    assert "p =" not in text  # the epochs of one run: no p-value


def test_p_values_are_never_printed_as_zero():
    assert report.fmt_p(0.0) == "< 0.001" and report.fmt_p(3e-7) == "< 0.001"
    assert report.fmt_p(0.0123) == "0.012" and report.fmt_p(None) == "n/a"


# ---------------------------------------------------------------------------------------------
# Experiments kept apart


def _two_experiments(tmp_path):
    one = write_study(tmp_path / "one", _numbers(0), with_runs=False)
    two = write_study(tmp_path / "two", _numbers(1), with_runs=False)
    return one, two


def test_two_outs_with_the_same_run_names_are_kept_apart(tmp_path):
    one, two = _two_experiments(tmp_path)
    result = report.build(
        [one, two], how="last", report_dir=tmp_path / "r", labels=["a", "b"], figures=False
    )
    assert set(result.table.run) == {f"{x}/{r}" for x in "ab" for r in RUNS}
    auto = report.build([one, two], how="last", report_dir=tmp_path / "r", figures=False)
    assert len(auto.table) == 2 * len(RUNS) * len(EPOCHS)
    assert any("--label" in w and "out1/" in w and "out2/" in w for w in auto.warnings)
    assert "a/at" not in (tmp_path / "r" / "report.md").read_text()


def test_one_experiment_split_over_two_outs_is_one_set_of_runs(tmp_path):
    out = write_study(tmp_path, _numbers())
    other = tmp_path / "flat_only"
    (out / "flatness").rename(other / "flatness") if other.mkdir() is None else None
    result = report.build([out, other], how="last", figures=False)
    assert set(result.table.run) == set(RUNS) and result.table.flatness_average.notna().all()
    assert not any("--label" in w for w in result.warnings)


def test_cli_label_needs_one_per_out(tmp_path, capsys):
    one, two = _two_experiments(tmp_path)
    code, _, err = flatcli(capsys, "report", "--no-figures", one, two, "--label", "a")
    assert code == 2 and "1 label(s) for 2 OUT" in err and len(err.strip().splitlines()) == 1
    code, out, err = flatcli(
        capsys, "report", "--no-figures", one, two, "--label", "x,y", "-f", "csv"
    )
    assert code == 0 and "x/at" in out and "y/at" in out


# ---------------------------------------------------------------------------------------------
# The page


def test_page_puts_findings_settings_and_runs_first_and_renders_markdown(study):
    root, out, _ = study
    result = report.build([out], how="last", html_page=True)
    page = (out / "report.html").read_text()
    order = [page.index(s) for s in ("Findings", "Settings", ">Runs<", "<figure", "<details")]
    assert order == sorted(order)
    assert "`" not in page and "<code>at</code>" in page
    assert "eps 0.1" in page and "examples 400" in page and "xi 0.5" in page
    assert "Holm p" in page and "spearman_p" not in page
    assert "higher = sharper" in result.captions["flatness"]
    checkpoints = len(RUNS) * len(EPOCHS)
    assert f"{len(RUNS)} run(s), {checkpoints} checkpoint(s)" in page


def test_figures_are_sized_for_the_page(study):
    from PIL import Image

    root, out, _ = study
    result = report.build([out], how="last")
    for path in result.figures.values():
        width, _ = Image.open(path).size
        assert width <= 1000, (path.name, width)  # shown at its own size, never shrunk


def test_page_in_headless_chromium(study, tmp_path):
    """Opens report.html in a real browser when one is installed (skipped otherwise): every
    figure loads and is displayed at its natural width (text is never scaled down)."""
    root, out, _ = study
    report.build([out], how="last", html_page=True)
    script = (
        "window.onload=()=>{const i=[...document.images];document.title="
        "i.length+':'+i.filter(x=>x.complete&&x.naturalWidth>0&&x.width==x.naturalWidth)"
        ".length+':'+document.body.scrollWidth}"
    )
    title = probed_title((out / "report.html").read_text(), script, tmp_path, "1280,900")
    images, shown, width = (int(v) for v in title.split(":"))
    assert images == 4 and shown == images and width <= 1280, title


def test_every_relation_the_text_states_is_drawn(study):
    from flatcli.report import relations

    root, out, _ = study
    result = report.build([out], how="last")
    corr = result.correlations.copy()
    pick = (corr.scope == "across runs") & (corr.measure == "flatness_worst")
    pick &= corr.target == "test_robust_loss"
    corr.loc[pick, ["kendall", "kendall_p_holm"]] = [0.9, 0.01]  # a relation the text states
    chosen = report.select(result.table, "last")
    pairs = relations.scatter_pairs(chosen, corr, "last")
    assert ("flatness_worst", "test_robust_loss") in pairs
    assert ("flatness_average", "rce_gap") in pairs  # flatness vs the gap, always drawn
    finding = " ".join(report.across_runs_finding(corr, chosen, "last"))
    assert "Kendall tau between worst-case flatness and test robust loss is 0.9" in finding
    assert "flatter runs had a lower test robust loss" in finding
    assert "and test robust loss (" not in finding.replace("worst-case flatness and test", "")


def test_curves_join_the_measured_epochs_of_a_run_evaluated_every_few_epochs(tmp_path):
    """train_log rows between measured epochs (NaN robust loss) must not break the test line
    into nothing: the line holds the measured points (the demo's at-long run showed none)."""
    from flatcli.report import figures, plots

    epochs = list(range(1, 11))
    measured = [e % 5 == 0 for e in epochs]
    df = pd.DataFrame(
        {
            "run": "long",
            "epoch": epochs,
            "test_robust_loss": [0.6 if m else np.nan for m in measured],
            "train_robust_loss": [0.4 if m else np.nan for m in measured],
            "test_robust_err": [0.2 if m else np.nan for m in measured],
            "train_robust_err": [0.1 if m else np.nan for m in measured],
            "is_best": [False] * 10,
        }
    )
    plt = plots.pyplot()
    fig, _ = figures._curves(plt, df)
    lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "test"]
    assert len(lines) == 1  # the robust loss panel of the one run
    assert all(list(line.get_xdata()) == [5, 10] for line in lines)
    plt.close(fig)
