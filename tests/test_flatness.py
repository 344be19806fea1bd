"""Flatness of the robust loss: exact and closed-form properties, the paper's worst-case estimator
against an independent re-implementation, scale invariance against the Hessian, an explicit
Hessian, an independent deep-copy + torchattacks reference, bad input, and `flatcli flatness` end
to end."""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import assert_error_flips, flatcli, quick_adversarial_training
from torch import nn

from flatcli import (
    checkpoints,
    data,
    engine,
    models,
    runtime,
    tables,
    weights,
)
from flatcli.attacks.pgd import PGD
from flatcli.checkpoints import save_checkpoint
from flatcli.config import registries
from flatcli.errors import UsageError
from flatcli.measures import average, hessian, worst_estimators
from flatcli.measures import flatness as flatness_table
from flatcli.measures import worst as worst_measure

EPS = 0.1
KEYS = (0, "run", 1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models and batches are tiny: one thread is faster, and immune to oversubscribed
    cores (OpenMP spin-waits made 2 threads ~100x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """A small BN-ReLU CNN after 2 epochs of PGD-3 AT on digits (cheap: width 8)."""
    model = quick_adversarial_training("small-cnn", epochs=2, width=8, hidden=32)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def examples():
    return data.load_split("digits", "test", 64)


def _pgd(steps=5, restarts=1):
    return PGD(f"pgd{steps}x{restarts}", "linf", EPS, steps, EPS / 4, restarts)


def _state_bytes(model):
    return {k: v.numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def grid(trained, examples):
    """Average-case flatness on the xi grid, computed once (weights checked restored)."""
    x, y = examples
    before = _state_bytes(trained)
    results = average.average_flatness(trained, x, y, [0.0, 0.1, 0.25, 0.5], 4, _pgd(), KEYS)
    assert _state_bytes(trained) == before
    return {(r.measure, r.xi): r for r in results}


def test_xi_zero_gives_exactly_zero_and_flatness_grows_with_xi(grid):
    for measure in ("average", "clean-average"):
        zero = grid[(measure, 0.0)]
        assert zero.flatness == 0.0 and zero.per_sample == [0.0] * 4
        values = [grid[(measure, xi)].flatness for xi in (0.1, 0.25, 0.5)]
        assert 0 < values[0] < values[1] < values[2], values
    assert grid[("average", 0.5)].flatness > grid[("clean-average", 0.5)].flatness
    r = grid[("average", 0.25)]
    assert r.samples == 4 and len(r.per_sample) == 4 and r.note is None
    assert r.flatness == pytest.approx(statistics.mean(r.per_sample))
    assert r.flatness_std == pytest.approx(statistics.stdev(r.per_sample))


def test_per_batch_worst_case_is_at_least_average_case_at_the_same_xi(trained, examples, grid):
    x, y = examples
    before = _state_bytes(trained)
    common = dict(
        iterations=5,
        restarts=1,
        weight_batch=32,
        seed_keys=KEYS,
        attack=_pgd(),
        estimator="per-batch",
    )
    worst = worst_measure.worst_flatness(trained, x, y, 0.1, eps=EPS, **common)
    clean = worst_measure.worst_flatness(trained, x, y, 0.1, eps=0.0, **common)
    assert _state_bytes(trained) == before
    assert worst.measure == "worst" and clean.measure == "clean-worst"
    assert worst.loss == grid[("average", 0.1)].loss  # the same RCE(w): same attack and starts
    assert worst.flatness >= grid[("average", 0.1)].flatness
    assert clean.flatness >= grid[("clean-average", 0.1)].flatness
    # the paper's tiny xi moves the robust loss a little, never below RCE(w) (nu = 0 is a point)
    tiny = worst_measure.worst_flatness(trained, x, y, 0.00075, eps=EPS, **common)
    assert 0 <= tiny.flatness < worst.flatness
    assert worst.estimator == "per-batch" and worst.reattack_loss is not None
    assert worst.flatness >= worst.unclamped - 1e-12


def _reference_paper_worst(model, x, y, xi, eps, step, iterations, restarts, lr, batch, keys):
    """The paper code's worst-case update written out: one offset nu for the whole set (direction
    normal, norm uniform in [0, xi ||w_l||] per layer), in each pass every batch takes one step of
    nu (grad_l / ||grad_l|| * ||w_l|| * lr, then scaled back into the ball) and of its own delta
    (signed step, L-inf ball and [0, 1] box); the set-mean loss at the final iterate, max over
    attempts. The same generators as flatcli, so the draws are equal."""
    found = weights.layers(model)
    names = [n for n, _ in found]
    w = [p.detach().float() for _, p in found]
    radius = [xi * t.norm() for t in w]
    gen_in = runtime.generator(*keys, "worst-input")
    starts = []
    for _ in range(restarts):
        u = torch.rand(x.shape, generator=gen_in)
        starts.append((x + (2 * u - 1) * eps).clamp(0, 1) - x)
    chunks = [slice(b, min(len(y), b + batch)) for b in range(0, len(y), batch)]

    def logits_at(nu, inputs):
        params = {n: t + v for n, t, v in zip(names, w, nu, strict=True)}
        return torch.func.functional_call(model, params, (inputs,))

    best = -math.inf
    for r in range(restarts):
        gen = runtime.generator(*keys, "worst-weights", r)
        nu = []
        for t, rad in zip(w, radius, strict=True):
            g = torch.randn(t.shape, generator=gen)
            nu.append(g / g.norm() * torch.rand((), generator=gen) * rad)
        deltas = [starts[r][c].clone() for c in chunks]
        for _ in range(iterations):
            for b, c in enumerate(chunks):
                nu = [v.clone().requires_grad_(True) for v in nu]
                d = deltas[b].clone().requires_grad_(True)
                loss = nn.functional.cross_entropy(logits_at(nu, x[c] + d), y[c])
                grads = torch.autograd.grad(loss, [*nu, d])
                with torch.no_grad():
                    new = []
                    for v, g, t, rad in zip(nu, grads[:-1], w, radius, strict=True):
                        v = v + lr * t.norm() * g / g.norm()
                        new.append(v * min(1.0, (rad / v.norm()).item()))
                    nu = new
                    d = (d + step * grads[-1].sign()).clamp(-eps, eps)
                    deltas[b] = (x[c] + d).clamp(0, 1) - x[c]
        with torch.no_grad():
            total = sum(
                nn.functional.cross_entropy(logits_at(nu, x[c] + deltas[b]), y[c], reduction="sum")
                for b, c in enumerate(chunks)
            )
        best = max(best, total.item() / len(y))
    return best


def test_paper_worst_case_equals_an_independent_reimplementation(trained, examples):
    x, y = examples[0][:40], examples[1][:40]
    before = _state_bytes(trained)
    common = dict(iterations=3, restarts=2, weight_lr=0.01, weight_batch=16, seed_keys=KEYS)
    res = worst_measure.worst_flatness(trained, x, y, 0.02, eps=EPS, input_step=EPS / 4, **common)
    assert _state_bytes(trained) == before
    expected = _reference_paper_worst(trained, x, y, 0.02, EPS, EPS / 4, 3, 2, 0.01, 16, KEYS)
    assert res.estimator == "paper" and res.reattack_loss is None
    assert res.perturbed_loss == pytest.approx(expected, abs=1e-5)
    assert res.joint_loss == res.perturbed_loss
    assert res.flatness == res.unclamped == res.perturbed_loss - res.loss  # not clamped
    assert res.flatness == pytest.approx(expected - res.loss, abs=1e-5)
    assert 0 <= res.err <= 1 and 0 <= res.perturbed_err <= 1
    # xi = 0: the ball is {w}, so flatness is 0 exactly
    zero = worst_measure.worst_flatness(trained, x, y, 0.0, eps=EPS, input_step=EPS / 4, **common)
    assert zero.flatness == 0.0 and zero.perturbed_loss == zero.loss == res.loss


def test_paper_worst_case_is_not_clamped_and_stays_negative(trained, examples):
    """One signed step from a random start finds less than PGD-5 per example at w (RCE(w)):
    the paper's estimate is then below RCE(w) and reported as such, not clamped at 0."""
    x, y = examples[0][:40], examples[1][:40]
    res = worst_measure.worst_flatness(
        trained, x, y, 1e-6, eps=EPS, iterations=1, restarts=1, seed_keys=KEYS, attack=_pgd(5, 2)
    )
    assert res.flatness < 0 and res.unclamped == res.flatness
    assert res.perturbed_loss < res.loss


def test_average_flatness_does_not_depend_on_batch_size(trained, examples):
    x, y = examples[0][:40], examples[1][:40]
    a = average.average_flatness(trained, x, y, 0.3, 2, _pgd(3), KEYS, batch_size=40)
    b = average.average_flatness(trained, x, y, 0.3, 2, _pgd(3), KEYS, batch_size=9)
    for ra, rb in zip(a, b, strict=True):
        assert ra.measure == rb.measure
        assert ra.flatness == pytest.approx(rb.flatness, abs=1e-5)


def _scaled(model: nn.Module, factor: float, x: torch.Tensor) -> nn.Module:
    """A copy with every conv weight x factor (`weights.scale_conv`, the --conv-scale option);
    its function must be unchanged (BN after every conv)."""
    model = copy.deepcopy(model)
    assert weights.scale_conv(model, factor, x) < 1e-3  # BN eps is not scaled: nearly equal
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(not torch.equal(m.weight, m.weight * 0) for m in convs)
    return model


def test_scale_invariance_of_flatness_while_hessian_lambda_max_swings(trained, examples):
    """the paper finding 4: conv weights x0.5 / x2 in a BN-ReLU net leave both flatness measures
    unchanged, while the Hessian's largest eigenvalue scales by about 4 and 1/4 (not exactly:
    the linear layers after the last BN do not scale)."""
    x, y = examples[0][:48], examples[1][:48]
    attack = _pgd(3)
    out = {}
    for factor in (0.5, 1.0, 2.0):
        model = _scaled(trained, factor, x)
        avg = average.average_flatness(model, x, y, 0.25, 2, attack, KEYS)[0]
        worst = worst_measure.worst_flatness(
            model,
            x,
            y,
            0.01,
            eps=EPS,
            iterations=3,
            restarts=1,
            weight_batch=48,
            seed_keys=KEYS,
            attack=attack,
        )
        hess = hessian.hessian_eigen(model, x, y, attack, iterations=10, probes=1, seed_keys=KEYS)
        out[factor] = (avg.flatness, worst.flatness, hess.lambda_max)
    avg1, worst1, lam1 = out[1.0]
    assert avg1 > 0.01 and worst1 > 0.01
    for factor in (0.5, 2.0):
        avg, worst, _ = out[factor]
        assert avg == pytest.approx(avg1, rel=0.01, abs=1e-3)
        assert worst == pytest.approx(worst1, rel=0.01, abs=1e-3)
    assert 2.5 < out[0.5][2] / lam1 < 4.5
    assert 0.2 < out[2.0][2] / lam1 < 0.5


def test_hessian_matches_an_explicit_hessian_of_a_tiny_model(examples):
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1, width=2).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = examples[0][:32], examples[1][:32]
    attack = PGD("pgd3", "linf", EPS, 3, EPS / 2)
    res = hessian.hessian_eigen(model, x, y, attack, iterations=40, probes=300, seed_keys=KEYS)
    # the points are the attack's worst per example: their loss is the engine's robust loss
    rce = engine.robust_losses(model, x, y, [attack], KEYS).robust["pgd3"].loss.mean().item()
    assert res.loss == pytest.approx(rce, abs=1e-5)
    points = hessian.adversarial_points(model, x, y, attack, KEYS)
    found = weights.layers(model)
    names, w = [n for n, _ in found], [p.detach() for _, p in found]

    def loss(theta):
        params = dict(zip(names, weights.unflatten(theta, w), strict=True))
        logits = torch.func.functional_call(model, params, (points,))
        return nn.functional.cross_entropy(logits, y)

    full = torch.autograd.functional.hessian(loss, weights.flatten(w)).double()
    eig = torch.linalg.eigvalsh(full)
    assert res.lambda_max == pytest.approx(eig[-1].item(), rel=1e-3)
    trace = full.trace().item()
    assert abs(res.trace - trace) < 5 * res.trace_std / math.sqrt(res.probes) + 1e-6
    clean = hessian.hessian_eigen(model, x, y, None, iterations=40, probes=10, seed_keys=KEYS)
    assert clean.measure == "clean-hessian" and clean.loss < res.loss


def test_paper_hessian_is_the_batch_summed_clean_hessian_of_the_weight_matrices(examples):
    """variant paper: clean loss, tensors with dim > 1 only, Hessian-vector products of each
    batch's mean summed over batches of 128: an explicit Hessian of that sum agrees."""
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1, width=2).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = data.load_split("digits", "test", 200)
    res = hessian.hessian_eigen(model, x, y, iterations=60, probes=1, variant="paper")
    assert res.variant == "paper" and res.examples == 200
    found = [(n, p) for n, p in weights.layers(model) if p.dim() > 1]
    assert len(found) < len(weights.layers(model))  # the biases are left out
    names, w = [n for n, _ in found], [p.detach() for _, p in found]

    def loss(theta):
        params = dict(zip(names, weights.unflatten(theta, w), strict=True))
        logits = torch.func.functional_call(model, params, (x,))
        per = nn.functional.cross_entropy(logits, y, reduction="none")
        return per[:128].mean() + per[128:].mean()

    full = torch.autograd.functional.hessian(loss, weights.flatten(w)).double()
    assert res.lambda_max == pytest.approx(torch.linalg.eigvalsh(full)[-1].item(), rel=1e-3)


@pytest.mark.reference
def test_average_flatness_agrees_with_a_plain_deepcopy_torchattacks_loop(trained, examples):
    """Independent reference: deep-copy the model per sample, add a random per-layer relative
    offset (conv/linear weights and biases), attack with torchattacks.PGD, average."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = data.load_split("digits", "test", 128)
    xi, samples, steps, alpha = 0.25, 8, 10, EPS / 4

    def robust_loss(model, seed):
        torch.manual_seed(seed)
        adv = torchattacks.PGD(model, eps=EPS, alpha=alpha, steps=steps, random_start=True)(x, y)
        with torch.no_grad():
            return nn.functional.cross_entropy(model(adv), y).item()

    base = robust_loss(trained, 0)
    theirs = []
    for s in range(samples):
        model = copy.deepcopy(trained)
        g = torch.Generator().manual_seed(1000 + s)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    for p in m.parameters(recurse=False):
                        d = torch.randn(p.shape, generator=g)
                        p.add_(xi * p.norm() * d / d.norm())
        theirs.append(robust_loss(model, s) - base)
    ours = average.average_flatness(
        trained, x, y, xi, samples, PGD("pgd10", "linf", EPS, steps, alpha), KEYS
    )[0]
    se = math.hypot(ours.flatness_std, statistics.stdev(theirs)) / math.sqrt(samples)
    assert ours.flatness > 0.01
    assert abs(ours.flatness - statistics.mean(theirs)) < 3 * se + 0.02


def test_bad_input_is_a_one_line_usage_error(trained, examples):
    x, y = examples[0][:8], examples[1][:8]
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(UsageError, match="--xi"):
            average.average_flatness(trained, x, y, bad, 2, None)
        with pytest.raises(UsageError, match="--xi"):
            worst_measure.worst_flatness(trained, x, y, bad)
    with pytest.raises(UsageError, match="--samples"):
        average.average_flatness(trained, x, y, 0.5, 0, None)
    norm_only = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten()).eval()
    for call in (
        lambda: average.average_flatness(norm_only, x, y, 0.5, 2, None),
        lambda: worst_measure.worst_flatness(norm_only, x, y, 0.5),
        lambda: hessian.hessian_eigen(norm_only, x, y),
    ):
        with pytest.raises(UsageError, match="no perturbable layers"):
            call()


def test_nan_after_perturbation_is_a_marked_result_not_a_crash(examples):
    x, y = examples[0][:16], examples[1][:16]
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1).eval()
    with torch.no_grad():
        model.net[-1].bias.fill_(3.3e38)  # finite, but any push upwards overflows
    for p in model.parameters():
        p.requires_grad_(False)
    before = _state_bytes(model)
    results = average.average_flatness(model, x, y, 0.5, 2, _pgd(2), KEYS)
    assert all(r.note and "non-finite" in r.note for r in results)
    assert all(not math.isfinite(r.flatness) for r in results)
    worst = worst_measure.worst_flatness(model, x, y, 0.5, eps=EPS, iterations=2, restarts=1)
    assert worst.note and "non-finite" in worst.note
    assert _state_bytes(model) == before


# ---------------------------------------------------------------------------------------------
# flatcli flatness


FAST = [
    "--n-examples", "16", "--samples", "2", "--attack", "pgd2", "--iterations", "2",
    "--restarts", "1", "--weight-batch", "8", "-q",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt") / "runs"
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        model = models.build("small-cnn", 10, 1)
        save_checkpoint(
            root / "at" / f"epoch_{epoch:04d}.safetensors", model, "small-cnn", {}, "digits", epoch
        )
    return root


def test_cli_writes_every_measure_resumes_and_forces(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "flatness", run_dir, "--out", out, *FAST, "--measure", "average,clean-average",
        "-m", "worst", "-m", "clean-worst,hessian,clean-hessian", "--xi", "0.1,0.5",
    ]  # fmt: skip
    code, stdout, _ = flatcli(capsys, *args, "-f", "json")
    assert code == 0
    rows = json.loads(stdout)
    assert len(rows) == 2 * (4 * 2 + 2)
    df = pd.read_parquet(out / "flatness")
    assert list(df.columns) == tables.columns("flatness") and len(df) == 20
    assert len(list((out / "flatness").iterdir())) == 2
    avg = df[df.measure == "average"]
    assert sorted(avg.xi.unique()) == [0.1, 0.5] and (avg.samples == 2).all()
    assert (avg.attack == "pgd2").all() and (avg.eps == 0.1).all()
    assert all(len(v) == 2 for v in avg.per_sample)
    assert (df[df.measure.str.startswith("clean")].eps == 0.0).all()
    assert df[df.measure == "clean-average"].attack.isna().all()
    worst = df[df.measure == "worst"]
    assert (worst.weight_lr == 0.01).all() and (worst.restarts == 1).all()
    assert (worst.estimator == "paper").all() and worst.reattack_loss.isna().all()
    assert (worst.unclamped_flatness == worst.flatness).all() and worst.joint_loss.notna().all()
    measured = df[df.measure.isin(["average", "worst", "clean-average", "clean-worst"])]
    assert measured.robust_err.between(0, 1).all()
    assert measured.perturbed_robust_err.between(0, 1).all()
    assert (avg.estimator == "mean").all() and (df.conv_scale == 1.0).all()
    hess = df[df.measure.isin(["hessian", "clean-hessian"])]
    assert hess.lambda_max.notna().all() and hess.hessian_trace.notna().all()
    assert hess.xi.isna().all() and hess.flatness.isna().all()
    ok = df[~df.measure.isin(["hessian", "clean-hessian"])]
    assert (ok.flatness - (ok.perturbed_robust_loss - ok.robust_loss)).abs().max() < 1e-9
    assert all(r["flatness"] is None or isinstance(r["flatness"], float) for r in rows)
    first = df.sort_values(["epoch", "measure", "xi"]).flatness.tolist()
    # the same robust loss as `flatcli attack` with the same attack and seed
    code, stdout, _ = flatcli(
        capsys, "attack", run_dir, "--out", out, "--attacks", "pgd2", "--n-examples", "16",
        "-q", "-f", "json",
    )  # fmt: skip
    attack_loss = {r["epoch"]: r["robust_loss"] for r in json.loads(stdout)}
    for _, r in avg.iterrows():
        assert r.robust_loss == pytest.approx(attack_loss[r.epoch], abs=1e-6)
    # rerun: everything skipped, same rows printed, nothing new written
    code, stdout, err = flatcli(capsys, *args, "-f", "jsonl")
    assert code == 0 and len(stdout.splitlines()) == 20
    assert len(list((out / "flatness").iterdir())) == 2
    # --force recomputes the same numbers
    code, _, _ = flatcli(capsys, *args, "--force")
    again = pd.read_parquet(out / "flatness").sort_values(["epoch", "measure", "xi"])
    assert code == 0 and again.flatness.tolist() == pytest.approx(first, abs=1e-6, nan_ok=True)


def test_cli_defaults_dry_run_and_shards(run_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, stdout, _ = flatcli(capsys, "flatness", run_dir, "--out", out, "--dry-run", "-f", "json")
    assert code == 0 and [r["status"] for r in json.loads(stdout)] == ["todo", "todo"]
    assert not out.exists() or not (out / "flatness").exists()
    code, stdout, _ = flatcli(
        capsys, "flatness", run_dir, "--out", out, *FAST, "--shard", "1/2", "-f", "json"
    )
    rows = json.loads(stdout)
    assert code == 0 and {r["epoch"] for r in rows} == {2}
    assert {(r["measure"], r["xi"]) for r in rows} == {("average", 0.5), ("worst", 0.00075)}
    code, stdout, _ = flatcli(
        capsys, "flatness", run_dir, "--out", out, *FAST, "--dry-run", "-f", "json"
    )
    assert sorted(r["status"] for r in json.loads(stdout)) == ["done", "todo"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--xi", "-0.5"], "--xi"),
        (["--xi", "abc"], "--xi"),
        (["--samples", "0"], "--samples"),
        (["--iterations", "0"], "--iterations"),
        (["--weight-lr", "0"], "--weight-lr"),
        (["--measure", "sharpness"], "unknown measure"),
        (["--attack", "apgd-t"], "does not estimate"),
        (["--attack", "apgd-ce", "-m", "hessian"], "pgd preset"),
        (["--eps", "2"], "--eps"),
        (["--conv-scale", "0"], "--conv-scale"),
        (["--weight-norm", "linf"], "l2 ball"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, extra, message):
    code, stdout, err = flatcli(capsys, "flatness", run_dir, "--out", tmp_path / "o", *extra)
    assert code == 2 and stdout == ""
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_cli_bad_checkpoint_fails_alone_and_exit_1(run_dir, tmp_path, capsys):
    bad = tmp_path / "runs"
    (bad / "x").mkdir(parents=True)
    (bad / "x" / "epoch_0001.pt").write_bytes(b"not a checkpoint")
    code, stdout, err = flatcli(
        capsys, "flatness", run_dir, bad, "--out", tmp_path / "o", *FAST, "-m", "average",
        "--dataset", "digits", "-f", "json",
    )  # fmt: skip
    assert code == 1 and "failed" in err and "epoch_0001.pt" in err
    assert {r["epoch"] for r in json.loads(stdout)} == {1, 2}


def test_help_ends_with_an_example_and_root_help_imports_no_torch():
    code = (
        "import sys; from flatcli.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
    )
    code += "assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "flatness" in done.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "flatcli", "flatness", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "Example: flatcli flatness" in helped.stdout


def test_help_lists_every_registered_measure_and_estimator_and_defaults_are_the_configs():
    import inspect

    from flatcli.cli import flatness as cli_flatness
    from flatcli.config.commands import FlatnessConfig

    helped = subprocess.run(
        [sys.executable, "-m", "flatcli", "flatness", "--help"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    for name in [*registries.MEASURES, *registries.WORST_ESTIMATORS]:
        assert name in helped.stdout, name
    assert set(flatness_table.MEASURES) == set(registries.MEASURES)
    defaults = FlatnessConfig()
    for name, param in inspect.signature(cli_flatness.flatness).parameters.items():
        if name in {f for f in defaults.__dataclass_fields__} and name not in ("eps", "step_size"):
            value = getattr(param.default, "value", param.default)
            config_value = getattr(defaults, name)
            if name == "data_dir":
                continue
            assert value == config_value, (name, value, config_value)


def test_cli_conv_scale_keeps_flatness_and_is_in_the_hash(run_dir, tmp_path, capsys):
    """--conv-scale 2 on a BN-ReLU net: the same function, so the same flatness (up to BN eps),
    under another configuration hash (a separate part file)."""
    out = tmp_path / "o"
    base = ["flatness", run_dir, "--out", out, *FAST, "-m", "average", "-f", "json"]
    code, one, _ = flatcli(capsys, *base)
    code2, two, _ = flatcli(capsys, *base, "--conv-scale", "2")
    assert code == code2 == 0
    one, two = json.loads(one), json.loads(two)
    assert {r["config_hash"] for r in one}.isdisjoint({r["config_hash"] for r in two})
    for a, b in zip(one, two, strict=True):
        assert b["conv_scale"] == 2.0 and b["note"] is None
        assert b["flatness"] == pytest.approx(a["flatness"], rel=0.02, abs=1e-3)


def test_cli_worst_reattack_fills_its_column_and_keeps_the_paper_value(run_dir, tmp_path, capsys):
    base = ["flatness", run_dir / "at", "--out", tmp_path / "o", *FAST, "-m", "worst", "-f", "json"]
    code, plain, _ = flatcli(capsys, *base)
    code2, asked, _ = flatcli(capsys, *base, "--worst-reattack")
    assert code == code2 == 0
    for a, b in zip(json.loads(plain), json.loads(asked), strict=True):
        assert a["reattack_loss"] is None and isinstance(b["reattack_loss"], float)
        assert a["flatness"] == b["flatness"] and a["config_hash"] != b["config_hash"]


@pytest.fixture(scope="module")
def sample_model():
    """The bundled AT checkpoint's last epoch, channels_last as `load_for_eval` makes it on CUDA
    (the memory format that broke the stacked path there)."""
    path = Path(__file__).resolve().parents[1] / "sample_checkpoints/at/epoch_0025.safetensors"
    model, _ = checkpoints.load_model(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def test_stacked_average_samples_equal_one_at_a_time(sample_model, examples):
    """Samples x xis stacked 4 per pass (a pass spans two samples) == one at a time in place: the
    same offsets and attack starts per sample, whatever the stacking."""
    x, y = examples[0][:24], examples[1][:24]
    run = dict(samples=3, attack=_pgd(2, 2), seed_keys=KEYS, batch_size=10)
    one = average.average_flatness(sample_model, x, y, [0.25, 0.5], settings_per_pass=1, **run)
    stacked = average.average_flatness(sample_model, x, y, [0.25, 0.5], settings_per_pass=4, **run)
    assert len(one) == len(stacked) == 4
    for a, b in zip(one, stacked, strict=True):
        assert (a.measure, a.xi, a.loss, a.err) == (b.measure, b.xi, b.loss, b.err)
        assert b.per_sample == pytest.approx(a.per_sample, abs=1e-5)
        # Stacked passes round differently: at most one of the 24 examples may flip.
        assert_error_flips(b.perturbed_err, a.perturbed_err, 24, 1, f"perturbed_err, xi {a.xi}")
    assert len({round(v, 6) for v in one[0].per_sample}) == 3  # the samples differ


@pytest.mark.parametrize("estimator", ["paper", "per-batch"])
def test_stacked_worst_restarts_equal_one_at_a_time(sample_model, examples, estimator):
    x, y = examples[0][:20], examples[1][:20]
    ref = engine.robust_losses(sample_model, x, y, [_pgd(2)], KEYS).robust["pgd2x1"]
    run = dict(eps=EPS, iterations=2, restarts=3, weight_batch=8, seed_keys=KEYS)
    run.update(norm="linf", input_step=None, weight_lr=0.01)
    extra = {} if estimator == "paper" else {"attack": _pgd(2)}
    name = "worst_paper" if estimator == "paper" else "worst_per_batch"
    estimate = getattr(worst_estimators, name)
    results = [
        estimate(
            sample_model,
            x,
            y,
            0.01,
            ref,
            worst_estimators.Ascent(**run, restarts_per_pass=k),
            **extra,
        )
        for k in (1, 3)
    ]
    one, stacked = results
    assert stacked.perturbed_loss == pytest.approx(one.perturbed_loss, abs=1e-5)
    assert stacked.joint_loss == pytest.approx(one.joint_loss, abs=1e-5)
    # Stacked restarts round differently: at most one of the 20 examples may flip.
    assert_error_flips(stacked.perturbed_err, one.perturbed_err, 20, 1, "perturbed_err")
    if estimator == "paper":  # the kept offset is the same restart's
        for a, b in zip(one.nu, stacked.nu, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_lanczos_stops_at_a_breakdown_found_after_the_loop():
    """A rank-2 operator on R^6: the Krylov space of a generic start has dimension 3, so the
    recurrence breaks down after 3 steps and the Ritz values are 0 and the two eigenvalues."""
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(6, 2, generator=gen))[0]
    a = u @ torch.diag(torch.tensor([3.0, -1.5])) @ u.T
    ritz = hessian.lanczos(lambda v: a @ v, torch.randn(6, generator=gen), 6)
    assert ritz.tolist() == pytest.approx([-1.5, 0.0, 3.0], abs=1e-5)
    full = hessian.lanczos(lambda v: torch.diag(torch.arange(1.0, 7.0)) @ v, torch.ones(6), 4)
    assert len(full) == 4 and full[-1] < 6  # no breakdown: every step kept, from below


def test_average_case_attacks_each_offset_once_and_subtracts_the_full_reference(
    sample_model, examples
):
    """The paper's code (evaluation notebook): PGD with one restart on every w + nu, minus the
    robust loss at w from the same PGD with restarts. Written out: the mean over samples of the
    one-restart loss at w + nu (the offsets drawn as average_flatness draws them) minus RCE(w)."""
    x, y = examples[0][:24], examples[1][:24]
    full, once = _pgd(2, 3), _pgd(2, 1)
    (result,) = average.average_flatness(
        sample_model, x, y, 0.5, samples=2, attack=full, seed_keys=KEYS, sample_attack=once
    )[:1]
    ref = engine.robust_losses(sample_model, x, y, [full], KEYS).robust[full.name].loss.mean()
    w = weights.weights_of(sample_model)
    perturbed = []
    for s in range(2):
        unit = weights.ball_named("l2")(1.0).random_start(
            w, runtime.generator(*KEYS, "weight-direction", s)
        )
        with weights.perturbed(sample_model, [0.5 * u for u in unit]):
            at = engine.robust_losses(sample_model, x, y, [once], KEYS)
        perturbed.append(at.robust[once.name].loss.mean().item())
    assert result.measure == "average" and result.loss == pytest.approx(ref.item(), abs=1e-6)
    assert result.perturbed_loss == pytest.approx(sum(perturbed) / 2, abs=1e-5)
    assert (result.iterations, result.restarts) == (2, 1)  # the per-offset attack's


def test_sample_attack_defaults_to_the_reference_with_one_restart():
    from flatcli.config.commands import FlatnessConfig
    from flatcli.measures.flatness import sample_attack_name

    def name(**kw):
        return sample_attack_name(FlatnessConfig(**kw))

    assert name() == "pgd20"  # pgd20x10 -> PGD-20 once per offset
    assert name(attack="pgd7x5") == "pgd7" and name(attack="pgd10") == "pgd10"
    assert name(attack="pgd10x2") == "pgd10x1"  # the pgd10 preset's step is eps/4, not 0.2229
    assert name(attack="apgd-ce") == "apgd-ce"
    assert name(sample_attack="pgd20x10") == "pgd20x10"  # the whole attack on every offset


def test_cli_average_rows_name_both_attacks(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["flatness", run_dir / "at" / "epoch_0001.safetensors", *FAST, "-m", "average"]
    code, _, _ = flatcli(capsys, *base, "--attack", "pgd2x2", "--out", out, "-f", "json")
    assert code == 0
    row = pd.read_parquet(out / "flatness").iloc[0]
    assert (row.attack, row.sample_attack, row.restarts) == ("pgd2x2", "pgd2", 1)
    code, _, err = flatcli(capsys, *base, "--sample-attack", "apgd-t", "--out", out)
    assert code == 2 and "--sample-attack apgd-t does not estimate" in err
