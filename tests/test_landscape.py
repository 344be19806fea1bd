"""Landscapes: direction normalization, the grid, Hessian directions, and `flatcli landscape`
end to end (alpha = 0 is `attack`'s robust loss, 2-D grids, figures, resume, interpolation, bad
input)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import assert_error_flips, flatcli
from torch import nn

from flatcli import data, models, runtime, tables, weights
from flatcli.attacks.pgd import PGD
from flatcli.checkpoints import save_checkpoint
from flatcli.config import registries
from flatcli.measures import hessian, landscape

EPS = 0.1
SMALL = {"width": 8, "hidden": 32}
FAST = ["--n-examples", "16", "--attack", "pgd2", "--steps", "3", "-q"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models and batches: one thread is faster and immune to oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt") / "runs"
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        model = models.build("small-cnn", 10, 1, **SMALL)
        save_checkpoint(
            root / "at" / f"epoch_{epoch:04d}.safetensors",
            model,
            "small-cnn",
            SMALL,
            "digits",
            epoch,
        )
    torch.manual_seed(0)
    other = root.parent / "other" / "tiny" / "epoch_0001.safetensors"
    save_checkpoint(other, models.build("tiny", 10, 1), "tiny", {}, "digits", 1)
    return root


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = models.build("small-cnn", 10, 1, **SMALL).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# Core


@pytest.mark.parametrize("normalization", list(registries.NORMALIZATIONS))
def test_directions_have_the_requested_relative_norm(normalization):
    model = _model()
    w = weights.weights_of(model)
    names = [n for n, _ in weights.layers(model)]
    assert len(names) < len(list(model.parameters()))  # BatchNorm scale/shift are excluded
    d = landscape.random_direction(w, runtime.generator(0, "test"))
    scaled = landscape.normalize_direction(d, w, normalization, 0.5)
    if normalization == "none":
        ratio = weights.flatten(scaled).norm() / weights.flatten(w).norm()
        assert ratio.item() == pytest.approx(0.5, rel=1e-5)
        return
    if normalization == "layer-maxabs":  # the paper's code: max|d_l| = s max|w_l|
        maxabs = [
            (dl.abs().max() / wl.abs().max()).item() for dl, wl in zip(scaled, w, strict=True)
        ]
        assert maxabs == pytest.approx([0.5] * len(w), rel=1e-5)
        ratios = (weights.norms(scaled) / weights.norms(w)).tolist()
        assert ratios != pytest.approx([0.5] * len(w), rel=1e-3)  # not the same as layer
        return
    ratios = weights.norms(scaled) / weights.norms(w)
    assert ratios.tolist() == pytest.approx([0.5] * len(w), rel=1e-5)
    if normalization == "filter":
        for dl, wl in zip(scaled, w, strict=True):
            if dl.dim() >= 2:
                per = dl.flatten(1).norm(dim=1) / wl.flatten(1).norm(dim=1)
                assert per.tolist() == pytest.approx([0.5] * len(per), rel=1e-5)


def test_grid_restores_weights_and_zero_is_the_checkpoint():
    model = _model()
    x, y = data.load_split("digits", "test", 12)
    attack = PGD("pgd2", "linf", EPS, 2, EPS / 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = weights.weights_of(model)
    d = landscape.normalize_direction(
        landscape.random_direction(w, runtime.generator(1)), w, "filter", 0.5
    )
    points = [(a,) for a in landscape.grid(-1, 1, 5)]
    assert [p[0] for p in points] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    rows = landscape.evaluate_grid(model, x, y, [d], points, attack, (0, "r", 1), 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    from flatcli import engine

    ref = engine.robust_losses(model, x, y, [attack], (0, "r", 1))
    # alpha = 0 is the checkpoint with the same starts, but the grid ran batches of 5 and the
    # reference one of 512: convolution kernels pick per-batch-size algorithms whose float32
    # sums differ in the last bits (2.4e-7 seen), so equal up to rounding, not bitwise.
    assert rows[2]["robust_loss"] == pytest.approx(ref.robust["pgd2"].loss.mean().item(), abs=1e-5)
    assert rows[2]["clean_loss"] == pytest.approx(ref.clean_loss.mean().item(), abs=1e-5)
    assert rows[0]["robust_loss"] != rows[2]["robust_loss"]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_batched_grid_points_equal_one_point_at_a_time(memory_format):
    model = _model().to(memory_format=memory_format)  # channels_last as on CUDA
    x, y = data.load_split("digits", "test", 12)
    attack = PGD("pgd2", "linf", EPS, 2, EPS / 4)
    w = weights.weights_of(model)
    d = landscape.normalize_direction(
        landscape.random_direction(w, runtime.generator(1)), w, "filter", 0.5
    )
    points = [(a,) for a in landscape.grid(-1, 1, 5)]
    one = landscape.evaluate_grid(model, x, y, [d], points, attack, (0, "r", 1), 5)
    calls = []
    batched = landscape.evaluate_grid(
        model, x, y, [d], points, attack, (0, "r", 1), 5, lambda i, n: calls.append(i), 3
    )
    assert calls == [3, 5]  # two passes: 3 points, then 2
    for a, b in zip(one, batched, strict=True):
        assert b == pytest.approx(a, abs=1e-5)


def test_hessian_directions_are_orthonormal_top_eigenvectors():
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.load_split("digits", "test", 24)
    dirs = hessian.top_eigenvectors(model, x, y, None, 2, 30, runtime.generator(0), (0,), 64)
    flat = torch.stack([weights.flatten(d) for d in dirs])
    assert torch.allclose(flat @ flat.T, torch.eye(2), atol=1e-4)
    lanczos = hessian.hessian_eigen(model, x, y, None, iterations=30, probes=1).lambda_max
    found = weights.layers(model)
    hvp = hessian.hvp_operator(model, x, y, [n for n, _ in found], weights.weights_of(model), 64)
    rayleigh = torch.dot(flat[0], hvp(flat[0])).item()
    assert rayleigh == pytest.approx(lanczos, rel=0.05)


@pytest.mark.parametrize("attack", [None, PGD("pgd2", "linf", EPS, 2, EPS / 4)])
def test_adversarial_direction_keeps_cosine_one_with_its_offset_under_layer(attack):
    """Per-layer normalization only rescales each layer of the weight attack's nu (clean loss by
    default, as the paper's code, or jointly with the inputs): every layer keeps cosine 1 with it
    (filter normalization would rotate it), and the raw nu stays in its ball."""
    model = _model()
    x, y = data.load_split("digits", "test", 16)
    w = weights.weights_of(model)
    nu = landscape.adversarial_direction(model, x, y, 0.005, attack, 3, 0.01, runtime.generator(2))
    assert (weights.norms(nu) <= 0.005 * weights.norms(w) * (1 + 1e-5)).all()
    d = landscape.normalize_direction(nu, w, "layer", 0.025)
    for dl, nl in zip(d, nu, strict=True):
        cosine = torch.nn.functional.cosine_similarity(dl.flatten(), nl.flatten(), dim=0)
        assert cosine.item() == pytest.approx(1.0, abs=1e-5)
    ratios = (weights.norms(d) / weights.norms(w)).tolist()
    assert ratios == pytest.approx([0.025] * len(w), rel=1e-5)


def test_registries_are_the_cli_choices_and_defaults_are_the_configs():
    import inspect

    from flatcli.cli import landscape as cli_landscape
    from flatcli.config.commands import LandscapeConfig

    assert landscape.KINDS == tuple(registries.DIRECTIONS)
    assert [m.value for m in cli_landscape.Kind] == list(registries.DIRECTIONS)
    assert [m.value for m in cli_landscape.NormalizationName] == list(registries.NORMALIZATIONS)
    defaults = LandscapeConfig()
    assert defaults.normalization == "layer" and defaults.adversarial_loss == "robust-fixed"
    fields = set(defaults.__dataclass_fields__)
    for name, param in inspect.signature(cli_landscape.landscape).parameters.items():
        if name in fields and name not in ("eps", "step_size", "scale", "range", "to", "data_dir"):
            value = getattr(param.default, "value", param.default)
            assert value == getattr(defaults, name), name


# ---------------------------------------------------------------------------------------------
# flatcli landscape


def test_cli_alpha_zero_is_attack_robust_loss_figures_and_resume(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["landscape", run_dir / "at", "--out", out, *FAST, "--n-directions", "2"]
    code, stdout, _ = flatcli(capsys, *args, "-f", "json")
    assert code == 0
    rows = json.loads(stdout)
    assert len(rows) == 2 * 2 * 3
    df = pd.read_parquet(out / "landscape")
    assert list(df.columns) == tables.columns("landscape") and len(df) == 12
    assert len(list((out / "landscape").glob("*.parquet"))) == 4  # one part per direction
    assert (df.scale == 0.5).all() and (df.normalization == "layer").all()
    assert df.beta.isna().all() and (df.direction_kind == "random").all()
    assert (df.attack == "pgd2").all() and df.robust_loss.notna().all()
    # alpha = 0 equals `flatcli attack`'s robust loss for the same examples, attack and seed
    code, stdout, _ = flatcli(
        capsys, "attack", run_dir / "at", "--out", out, "--attacks", "pgd2",
        "--n-examples", "16", "-q", "-f", "json",
    )  # fmt: skip
    attack_rows = {r["epoch"]: r for r in json.loads(stdout)}
    zero = df[df.alpha == 0.0]
    assert len(zero) == 4
    for _, r in zero.iterrows():
        assert r.robust_loss == pytest.approx(attack_rows[r.epoch]["robust_loss"], abs=1e-6)
        assert r.clean_err == pytest.approx(attack_rows[r.epoch]["clean_err"], abs=1e-9)
    # a figure, one line per epoch, that opens as an image
    figures = list((out / "landscape_plots").glob("*.png"))
    assert len(figures) == 1 and "1d" in figures[0].name
    import matplotlib.image

    image = matplotlib.image.imread(figures[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    # resume: remove one direction's part; a rerun recomputes only that one
    parts = sorted((out / "landscape").glob("*.parquet"))
    kept = {p: p.stat().st_mtime_ns for p in parts[1:]}
    parts[0].unlink()
    code, stdout, _ = flatcli(capsys, *args, "--dry-run", "-f", "json")
    assert sorted(r["status"] for r in json.loads(stdout)) == ["done", "done", "done", "todo"]
    code, stdout, _ = flatcli(capsys, *args, "-f", "json")
    assert code == 0 and len(json.loads(stdout)) == 12
    assert parts[0].is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    again = pd.read_parquet(out / "landscape")
    key = ["epoch", "direction", "alpha"]
    assert again.sort_values(key).robust_loss.tolist() == pytest.approx(
        df.sort_values(key).robust_loss.tolist(), abs=1e-6
    )


def test_cli_point_batch_gives_the_same_table(run_dir, tmp_path, capsys):
    ckpt = run_dir / "at" / "epoch_0001.safetensors"
    tables_ = []
    for point_batch in ("1", "2"):
        out = tmp_path / point_batch
        code, _, _ = flatcli(
            capsys, "landscape", ckpt, "--out", out, *FAST, "--n-directions", "1",
            "--plot", "none", "--point-batch", point_batch,
        )  # fmt: skip
        assert code == 0
        tables_.append(pd.read_parquet(out / "landscape").sort_values("alpha"))
    one, two = tables_
    assert (one.config_hash == two.config_hash).all()  # a runtime choice, like --batch-size
    for column in ("robust_loss", "clean_loss"):
        assert two[column].to_numpy() == pytest.approx(one[column].to_numpy(), abs=1e-5)
    # Two stacked points round differently from one: at most one of the 16 examples may flip.
    for alpha, a, b in zip(one.alpha, one.robust_err, two.robust_err, strict=True):
        assert_error_flips(b, a, 16, 1, f"robust_err at alpha {alpha}")


def test_cli_2d_grid_has_steps_squared_rows_and_a_contour(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = flatcli(
        capsys, "landscape", run_dir / "at" / "epoch_0001.safetensors", "--out", out, *FAST,
        "--dims", "2", "--n-directions", "2", "--loss", "clean", "--plot", "svg",
        "--normalization", "layer", "--scale", "0.25", "-f", "json",
    )  # fmt: skip
    assert code == 0
    df = pd.read_parquet(out / "landscape")
    assert df.groupby("direction").size().tolist() == [9, 9]
    assert df.beta.notna().all() and set(df.alpha) == set(df.beta) == {-1.0, 0.0, 1.0}
    assert df.robust_loss.isna().all() and df.attack.isna().all()
    assert (df.scale == 0.25).all() and (df.normalization == "layer").all()
    (figure,) = (out / "landscape_plots").glob("*.svg")
    assert "2d" in figure.name and "<svg" in figure.read_text()[:2000]


def test_cli_adversarial_and_hessian_directions(run_dir, tmp_path, capsys):
    ckpt = run_dir / "at" / "epoch_0002.safetensors"
    cases = [
        ("adversarial", 0.025, "clean", []),  # the paper's length, the clean-loss weight attack
        ("adversarial", 0.01, "robust", ["--normalization", "layer-maxabs"]),  # the code's s
        ("hessian", 1.0, None, []),
    ]
    for i, (kind, scale, adversarial, extra) in enumerate(cases):
        out = tmp_path / f"{kind}{i}"
        if adversarial:
            extra = [*extra, "--adversarial-loss", adversarial]
        code, stdout, _ = flatcli(
            capsys, "landscape", ckpt, "--out", out, *FAST, "--directions", kind,
            "--n-directions", "2", "--iterations", "2", "--adversarial-iterations", "2",
            "--plot", "none", "-f", "json", *extra,
        )  # fmt: skip
        assert code == 0
        df = pd.read_parquet(out / "landscape")
        assert len(df) == 6 and (df.direction_kind == kind).all() and (df.scale == scale).all()
        assert df.robust_loss.notna().all()
        if adversarial:
            assert (df.adversarial_loss == adversarial).all()
        else:
            assert df.adversarial_loss.isna().all()
        assert not (out / "landscape_plots").exists()
        ends = df[df.alpha != 0].robust_loss
        assert (ends != df[df.alpha == 0].robust_loss.iloc[0]).all()


def test_cli_interpolate_reaches_the_other_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    a, b = (run_dir / "at" / f"epoch_000{e}.safetensors" for e in (1, 2))
    code, stdout, _ = flatcli(
        capsys, "landscape", a, "--out", out, *FAST, "--directions", "interpolate", "--to", b,
        "--loss", "clean", "-f", "json",
    )  # fmt: skip
    assert code == 0
    rows = {r["alpha"]: r for r in json.loads(stdout)}
    assert sorted(rows) == [0.0, 0.5, 1.0]
    code, stdout, _ = flatcli(
        capsys, "attack", b, "--out", out, "--attacks", "pgd2", "--n-examples", "16", "-q",
        "-f", "json",
    )  # fmt: skip
    end = json.loads(stdout)[0]
    assert rows[1.0]["clean_loss"] == pytest.approx(end["clean_loss"], abs=1e-4)
    assert rows[1.0]["normalization"] == "none" and rows[1.0]["scale"] == 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "1"], "--steps"),
        (["--range", "1,-1"], "--range"),
        (["--range", "0.5,0.5"], "--range"),
        (["--range", "1"], "--range"),
        (["--dims", "3"], "--dims"),
        (["--directions", "interpolate"], "--to"),
        (["--directions", "interpolate", "--to", "TINY"], "different architectures"),
        (["--directions", "sideways"], "--directions"),
        (["--normalization", "batch"], "--normalization"),
        (["--scale", "-1"], "--scale"),
        (["--plot", "gif"], "--plot"),
        (["--attack", "apgd-t"], "does not estimate"),
        (["--attack", "aa-lite", "--point-batch", "4"], "--point-batch"),
        (["--point-batch", "0"], "--point-batch"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, extra, message):
    tiny = run_dir.parent / "other" / "tiny" / "epoch_0001.safetensors"
    extra = [str(tiny) if e == "TINY" else e for e in extra]
    code, stdout, err = flatcli(
        capsys, "landscape", run_dir / "at", "--out", tmp_path / "o", *extra
    )
    assert code == 2 and stdout == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_help_has_an_example(capsys):
    code, stdout, _ = flatcli(capsys, "landscape", "--help")
    assert code == 0 and "Example: flatcli landscape" in stdout


def test_landscape_uses_the_shared_modules_not_flatness_internals():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(landscape))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "flatness" not in imported and {"hessian", "worst_estimators"} <= imported


def test_adversarial_directions_attack_the_weights_at_pgd10_points_fixed_at_w(
    run_dir, tmp_path, capsys, monkeypatch
):
    """The paper's code's adversarial landscape direction (VisualizeAdversarialWeights1D on an
    AdversarialDataset): the weight attack on the cross-entropy at PGD-10 points computed once
    at w, not at clean inputs. Written out: the inputs the weight attack gets are PGD-10's points
    at w (starts from the landscape's own generator), inside the ball, the same for every
    direction; the rows say `robust-fixed`."""
    from flatcli import checkpoints, evaluation
    from flatcli.config.commands import LandscapeConfig

    ckpt = run_dir / "at" / "epoch_0002.safetensors"
    seen = []
    real = landscape.adversarial_direction

    def spy(model, x, y, *args):
        seen.append(x.detach().clone())
        return real(model, x, y, *args)

    monkeypatch.setattr(landscape, "adversarial_direction", spy)
    out = tmp_path / "fixed"
    code, _, _ = flatcli(
        capsys, "landscape", ckpt, "--out", out, *FAST, "--directions", "adversarial",
        "--n-directions", "2", "--adversarial-iterations", "2", "--plot", "none",
    )  # fmt: skip
    assert code == 0
    df = pd.read_parquet(out / "landscape")
    assert (df.adversarial_loss == "robust-fixed").all() and len(seen) == 2
    assert torch.equal(seen[0], seen[1])  # computed once per checkpoint
    model, _ = checkpoints.load_model(ckpt)
    model.eval()
    x, y = data.load_split("digits", "test", 16)
    eps = float(df.eps.iloc[0])
    config = LandscapeConfig(eps=eps)
    pgd10 = evaluation.eval_attack(config, "pgd10")
    keys = evaluation.seed_keys(config, checkpoints.discover([ckpt])[0])
    gen = runtime.generator(*keys, "landscape", "fixed-points")
    expected = landscape.fixed_points(model, x, y, pgd10, gen)
    assert torch.allclose(seen[0], expected, atol=1e-6)
    assert (seen[0] - x).abs().max() <= eps + 1e-6 and not torch.allclose(seen[0], x)
    with torch.no_grad():
        at_points = nn.functional.cross_entropy(model(seen[0]), y)
        clean = nn.functional.cross_entropy(model(x), y)
    assert at_points > clean  # the robust loss at fixed points, not the clean loss
