"""The report page a researcher shows: the findings on the first screen with their numbers and
tests, a table that explains the runs (width, parameters, errors in %, +- only where standard
errors exist), figures in the paper's style, `report --runs`, and the page in headless Chromium
(run wherever Chromium is installed, as in CI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import flatcli, probed_title
from safetensors.numpy import save_file

from flatcli import report, tables
from flatcli.files import atomic_write_text
from flatcli.report import headline

# run -> (method, width, epochs evaluated); `at-long` is 4x wider, longer, and overfits
RUNS = {
    "at": ("at", 8, [2, 4, 6, 8, 10]),
    "awp": ("awp", 8, [2, 4, 6, 8, 10]),
    "at-ls": ("at", 8, [2, 4, 6, 8, 10]),
    "trades": ("trades", 8, [2, 4, 6, 8, 10]),
    "at-long": ("at", 32, [5, 10, 15, 20, 25, 30]),
}
LONG = {5: 0.882, 10: 0.61, 15: 0.552, 20: 0.57, 25: 0.60, 30: 0.623}  # at-long test RCE


def _checkpoint(path: Path, width: int) -> int:
    """A safetensors file with a small-cnn's tensor names; returns its parameter count."""
    shapes = {
        "net.features.0.weight": (width, 1, 3, 3),
        "net.features.1.weight": (width,),
        "net.features.1.bias": (width,),
        "net.features.1.running_mean": (width,),
        "net.features.1.running_var": (width,),
        "net.features.1.num_batches_tracked": (),
        "net.classifier.0.weight": (4 * width, width),
        "net.classifier.1.weight": (10, width),
        "net.classifier.1.bias": (10,),
        "normalize.mean": (1, 1, 1, 1),
        "normalize.std": (1, 1, 1, 1),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}, str(path))
    return width * 9 + 2 * width + 4 * width * width + 10 * width + 10


def write_study(root: Path) -> tuple[Path, dict]:
    """Tables like attack/flatness/train write, for RUNS; returns (OUT, run -> n_params)."""
    rng = np.random.default_rng(0)
    out, sizes = root / "out", {}
    for run, (method, width, epochs) in RUNS.items():
        run_dir = root / "runs" / run
        last = epochs[-1]
        for k, epoch in enumerate(epochs):
            path = run_dir / f"epoch_{epoch:04d}.safetensors"
            sizes[run] = _checkpoint(path, width)
            test = LONG[epoch] if run == "at-long" else 0.9 - 0.02 * k + rng.uniform(0, 0.01)
            train = 0.8 - 0.1 * k
            base = {"run": run, "epoch": epoch, "checkpoint": str(path), "eps": 0.15,
                    "dataset": "digits", "arch": "small-cnn", "norm": "linf",
                    "n_examples": 400}  # fmt: skip
            err = 0.3 - 0.01 * k + (0.05 if run == "at-long" else 0.02 * len(run) / 10)
            se = {"robust_err_se": 0.02, "robust_loss_se": 0.01}  # over the 400 examples
            rows = [{**base, **se, "split": "test", "attack": "pgd10x2", "robust_err": err,
                     "robust_loss": test, "clean_err": 0.1, "clean_loss": 0.3},
                    {**base, **se, "split": "train", "attack": "pgd10x2", "robust_err": err - 0.1,
                     "robust_loss": train, "clean_err": 0.05, "clean_loss": 0.2}]  # fmt: skip
            tables.write_part(out, "attack", f"{run}__e{epoch:04d}", "a" * 16, rows)
            flat = [{**base, "split": "test", "measure": "average", "xi": 0.5, "samples": 5,
                     "flatness": 0.5 + 0.2 * k + rng.uniform(0, 0.1), "flatness_std": 0.2},
                    {**base, "split": "test", "measure": "worst", "xi": 0.003, "samples": 1,
                     "flatness": 0.1 * k - 0.2}]  # fmt: skip
            tables.write_part(out, "flatness", f"{run}__e{epoch:04d}", "c" * 16, flat)
        best = 25 if run == "at-long" else last
        info = {"format": "flatcli-run", "config": {"method": method, "width": width},
                "best": {"epoch": best}}  # fmt: skip
        atomic_write_text(run_dir / "run.json", json.dumps(info))
        if run == "at":
            final = str(run_dir / f"epoch_{last:04d}.safetensors")
            grid = [{"run": run, "epoch": last, "checkpoint": final, "eps": 0.15,
                     "dataset": "digits", "arch": "small-cnn", "norm": "linf",
                     "split": "test", "direction_kind": "random", "direction": d, "alpha": a,
                     "robust_loss": 0.6 + a * a * (1 + 0.2 * d), "scale": 0.5,
                     "normalization": "layer"}
                    for d in range(3) for a in np.linspace(-1, 1, 7)]  # fmt: skip
            tables.write_part(out, "landscape", f"{run}__e{last:04d}", "e" * 16, grid)
    return out, sizes


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    out, sizes = write_study(root)
    result = report.build([out], how="last", html_page=True)
    return root, out, sizes, result


def test_first_screen_states_each_finding_with_its_number_and_test(study):
    _, out, _, result = study
    first = " ".join(result.headline)
    assert (
        "Robust overfitting in 1 of 5 runs: `at-long`'s test robust loss rose from its minimum "
        "0.552 ± 0.010 at epoch 15 to 0.623 ± 0.010 at epoch 30 (+12.9 %)" in first
    )
    assert "one-sided z-test of the last epoch against the minimum" in first  # its test
    assert "xi = 0.5 (relative to each layer's weight norm) grew with the epoch in 5 of 5" in first
    assert "Holm" in first and "differ in size" in first  # the wider run is named as a caveat
    page = (out / "report.html").read_text()
    h1 = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert h1 == "Robust overfitting and flatness: 5 runs of small-cnn on digits (linf eps 0.15)"
    assert page.index("id='findings'") < page.index(">Settings<") < page.index(">Runs<")
    assert "<details open><summary>at-long</summary>" in page
    assert "<details><summary>at</summary>" in page
    md = (out / "report.md").read_text()
    assert md.index("## Findings") < md.index("## Settings")


def test_table_explains_the_runs(study):
    _, _, sizes, result = study
    table = result.runs
    assert list(table.run)[0] == "at"  # sorted by test robust error at the last epoch
    errs = [float(v.split()[0]) for v in table["test RErr % (last)"]]
    assert errs == sorted(errs)
    long = table[table.run == "at-long"].iloc[0]
    assert long.width == "32" and long.params == f"{sizes['at-long'] / 1e3:.1f}k"
    assert table[table.run == "at"].iloc[0].params == str(sizes["at"])  # under 1000: exact
    assert long["test RErr % (last)"].split()[0] == "30.0"  # a fraction shown in %
    assert long["test RErr % (last)"].startswith("30.0 ± 2.0")  # the SE column, in % too
    assert " ± " in long["avg flatness (last)"]  # flatness_average_se exists: shown
    assert "±" not in long["worst flatness (last)"]  # one sample: no SE, none shown
    df = result.table
    assert df.groupby("run").n_params.first().to_dict() == sizes


def test_plus_minus_only_where_a_standard_error_column_exists():
    row = pd.Series({"test_robust_err": 0.1925, "test_robust_loss": 0.5521})
    assert headline.percent(row, "test_robust_err") == "19.2"
    assert headline.number(row, "test_robust_loss") == "0.552"
    row["test_robust_err_se"] = 0.0061
    row["test_robust_loss_se"] = np.nan
    assert headline.percent(row, "test_robust_err") == "19.2 ± 0.6"
    assert headline.number(row, "test_robust_loss") == "0.552"


def test_figures_in_the_papers_style(study):
    from PIL import Image

    _, _, _, result = study
    assert set(result.figures) == {"curves", "flatness", "flatness_gap", "scatter", "landscape"}
    for name, path in result.figures.items():
        width, _ = Image.open(path).size
        assert width <= 1000, (name, width)
    assert Image.open(result.figures["landscape"]).size[0] >= 900  # full width
    svg = {n: p.with_suffix(".svg").read_text() for n, p in result.figures.items()}
    assert "relative length 0.5" in svg["landscape"]
    assert "% of training" in svg["flatness"]
    assert "test - train (nats)" in svg["scatter"] and "early stopping" in svg["flatness_gap"]
    for name in ("scatter", "flatness_gap"):
        assert all(run in svg[name] for run in RUNS)  # the legend names every run


def test_curves_give_each_run_its_own_scale():
    from flatcli.report import figures, plots

    df = pd.DataFrame({
        "run": ["a"] * 3 + ["b"] * 3, "epoch": [1, 2, 3] * 2,
        "test_robust_loss": [2.0, 1.5, 1.2, 0.552, 0.56, 0.62],
        "train_robust_loss": [2.1, 1.4, 1.0, 0.5, 0.4, 0.3],
        "is_best": [False, False, True, False, True, False],
    })  # fmt: skip
    plt = plots.pyplot()
    fig, _ = figures._curves(plt, df)
    limits = [ax.get_ylim() for ax in fig.axes if ax.get_visible()]
    assert limits[0] != limits[1] and limits[1][1] - limits[1][0] < 1.0
    plt.close(fig)


def test_report_runs_reports_only_those_and_never_overwrites_the_full_report(study, capsys):
    root, out, _, _ = study
    before = (out / "report.md").read_text()
    runs = [root / "runs" / "at", root / "runs" / "at-long"]
    code, stdout, err = flatcli(capsys, "report", out, "--runs", runs[0], "--runs", runs[1],
                                "--no-figures", "-f", "json")  # fmt: skip
    assert code == 0, err
    assert sorted(r["run"] for r in json.loads(stdout)) == ["at", "at-long"]
    subset = out / "report-at-at-long"
    assert "2 run(s)" in (subset / "report.md").read_text()
    assert (out / "report.md").read_text() == before
    empty = root / "runs" / "nothing"
    empty.mkdir()
    code, stdout, err = flatcli(capsys, "report", out, "--runs", empty, "--no-figures")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "--runs" in err and "no attack" in err


def test_page_in_headless_chromium(study, tmp_path):
    """The findings within the first 1000 px, every figure loaded at its natural width (at most
    1000 px), no text wider than its box. Skipped only where no Chromium is installed."""
    _, out, _, _ = study
    script = (
        "window.onload=()=>{const i=[...document.images];"
        "const f=document.getElementById('findings').getBoundingClientRect();"
        "const over=[...document.querySelectorAll('p,li,td,th,h1,h2,figcaption,summary')]"
        ".filter(e=>e.scrollWidth>e.clientWidth+1).map(e=>e.tagName+':'+e.textContent.slice(0,40));"
        "document.title=JSON.stringify({n:i.length,ok:i.filter(x=>x.complete&&x.naturalWidth>0"
        "&&x.naturalWidth<=1000&&x.width==x.naturalWidth).length,bottom:f.bottom,over:over})}"
    )
    seen = json.loads(probed_title((out / "report.html").read_text(), script, tmp_path))
    assert seen["n"] == 5 and seen["ok"] == 5, seen
    assert seen["bottom"] <= 1000, seen
    assert seen["over"] == [], seen


@pytest.mark.parametrize(
    "losses, se, expected",
    [([0.9, 0.7, 0.6], 0.01, "No robust overfitting: in each of the 1 runs the test robust "
                             "loss was lowest at the last epoch."),
     ([0.9, 0.6, 0.62], 0.05, "no rise"),
     ([0.9, 0.6, 0.66], None, "no standard errors of the robust loss, so no test"),
     ([0.9, 0.6, 0.66], 0.005, "Robust overfitting in 1 of 1 runs: `a`'s test robust loss rose "
                               "from its minimum 0.600 ± 0.005 at epoch 2 to 0.660 ± 0.005")],
)  # fmt: skip
def test_overfitting_is_stated_with_its_test_or_its_absence_said_plainly(losses, se, expected):
    df = pd.DataFrame({"run": "a", "epoch": [1, 2, 3], "test_robust_loss": losses,
                       "train_robust_loss": [0.8, 0.5, 0.3], "rce_gap": [0.1, 0.1, 0.36],
                       "is_best": False})  # fmt: skip
    if se is not None:
        df["test_robust_loss_se"] = se
    sentence = headline.overfitting_sentence(df)
    if expected == "no rise":
        assert sentence.startswith("No robust overfitting beyond noise"), sentence
        assert "largest rise: `a`, +3.3 %" in sentence
    else:
        assert expected in sentence, sentence
