"""`flatcli train`: methods, checkpoints, log, best epoch, resume, AWP, DDP, bad input (CPU)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_error_flips, flatcli
from safetensors.torch import load_file

from flatcli import checkpoints, models, tables, weights
from flatcli.config.commands import TrainConfig
from flatcli.training import TrainingDiverged, methods, regularizers, schedules, train
from flatcli.training.loop import STATE_FILE, read_run, resolve_config

ROOT = Path(__file__).resolve().parents[1]
# The tiny model on a slice of digits: about a second per run.
FAST = dict(arch="tiny", epochs=2, train_examples=96, heldout_examples=32, batch_size=32)
FAST_ARGS = [
    "--arch",
    "tiny",
    "--epochs",
    "2",
    "--train-examples",
    "96",
    "--heldout-examples",
    "32",
    "--batch-size",
    "32",
    "-q",
]
TIMING = {"wall_time_s", "created_at", "epoch_time_s", "checkpoint"}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a busy 2-core machine two spinning
    OpenMP threads make them 10x slower. Subprocesses get OMP_NUM_THREADS=1 to match."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _same_checkpoint(a: Path, b: Path) -> bool:
    """Bitwise equal tensors and equal metadata (safetensors orders its header at random)."""
    from safetensors import safe_open

    ta, tb = load_file(a), load_file(b)
    same = ta.keys() == tb.keys() and all(
        ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta
    )
    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        meta_a, meta_b = json.loads(fa.metadata()["flatcli"]), json.loads(fb.metadata()["flatcli"])
    return same and meta_a == meta_b


def _log(run_dir: Path) -> list[dict]:
    rows = tables.read_table(run_dir, "train_log").sort_values("epoch").to_dict("records")

    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v

    return [{k: clean(v) for k, v in r.items() if k not in TIMING} for r in rows]


# ---------------------------------------------------------------------------------------------
# methods, run directory, checkpoints


@pytest.mark.parametrize("method", ["clean", "at", "trades", "mart", "awp"])
def test_each_method_trains_two_epochs_and_writes_loadable_checkpoints(tmp_path, method):
    run_dir = tmp_path / method
    result = train(TrainConfig(method=method, **FAST), run_dir)
    refs = checkpoints.discover([run_dir])
    assert [r.epoch for r in refs] == [1, 2] and {r.run for r in refs} == {method}
    assert all(r.path.suffix == ".safetensors" for r in refs)  # trainer_state.pt is not one
    for ref in refs:
        model, info = checkpoints.load_model(ref.path)
        assert info.arch == "tiny" and info.dataset == "digits" and info.epoch == ref.epoch
        assert info.meta["config"]["method"] == method
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    rows = result.rows
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert all(0 <= r["heldout_robust_err"] <= 1 and r["heldout_n"] == 32 for r in rows)
    assert (rows[0]["train_robust_err"] is None) == (method == "clean")
    frame = tables.read_table(run_dir, "train_log")
    assert len(frame) == 2 and set(frame.method) == {method}
    run = read_run(run_dir)
    assert run["status"] == "done" and run["epochs_done"] == 2
    assert run["arch_kwargs"] == {"width": 4}  # tiny's default width, written out for readers
    assert run["best"]["epoch"] in (1, 2)
    assert run["best"]["checkpoint"] == f"epoch_{run['best']['epoch']:04d}.safetensors"
    # run.json alone rebuilds the model
    rebuilt = models.build(
        run["arch"],
        run["num_classes"],
        run["in_channels"],
        run["mean"],
        run["std"],
        **run["arch_kwargs"],
    )
    rebuilt.load_state_dict(load_file(refs[-1].path))
    expected = {"clean": None, "trades": 6.0, "mart": 6.0, "awp": 0.01}.get(method)
    key = {"trades": "trades_beta", "mart": "mart_beta", "awp": "awp_gamma"}.get(method)
    if key:
        assert run["config"][key] == expected
    assert (run["config"]["attack"] is None) == (method == "clean")


def test_at_lowers_the_robust_training_loss(tmp_path):
    config = TrainConfig(
        arch="small-cnn",
        epochs=4,
        train_examples=512,
        eps=0.1,
        attack="pgd3",
        milestones=(100,),
        heldout_every=100,
        heldout_attack="pgd3",
        heldout_examples=64,
    )
    rows = train(config, tmp_path / "at").rows
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < losses[0] - 0.3, losses
    assert rows[-1]["train_robust_err"] < rows[0]["train_robust_err"]
    assert [r["heldout_robust_err"] is None for r in rows] == [True, True, True, False]


def test_regularizers_schedules_and_bf16_run(tmp_path):
    import numpy as np

    from flatcli import data

    x, y = data.load_split("digits", "test", 100)
    np.savez(tmp_path / "extra.npz", x=x.numpy(), y=y.numpy())
    cases = {
        "crop-flip": dict(augment="crop-flip", schedule="cosine"),
        "cutout": dict(augment="cutout", schedule="cyclic"),
        "autoaugment": dict(augment="autoaugment", label_smoothing=0.1),
        "entropy": dict(optimizer="entropy-sgd", entropy_steps=2, label_noise=0.2),
        "extra": dict(
            extra_data=str(tmp_path / "extra.npz"), extra_fraction=0.25, weight_clip=0.05
        ),
        "bf16": dict(amp="bf16", milestones=(1,)),
    }
    for name, extra in cases.items():
        config = TrainConfig(**{**FAST, "epochs": 1, "heldout_attack": "pgd2", **extra})
        rows = train(config, tmp_path / name).rows
        assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"]), name
    ckpt = load_file(tmp_path / "extra" / "epoch_0001.safetensors")
    assert all(ckpt[n].abs().max() <= 0.05 for n in ("net.0.weight", "net.5.weight"))
    assert read_run(tmp_path / "extra")["config"]["extra_fraction"] == 0.25
    assert tables.read_table(tmp_path / "extra", "train_log").n_examples.item() == 196
    assert tables.read_table(tmp_path / "bf16", "train_log").dtype.item() == "bfloat16"


def test_save_every_k_epochs_and_the_last(tmp_path):
    run_dir = tmp_path / "run"
    rows = train(TrainConfig(**{**FAST, "epochs": 3, "save_every": 2}), run_dir).rows
    assert [r.epoch for r in checkpoints.discover([run_dir])] == [2, 3]
    assert [r["checkpoint"] is None for r in rows] == [True, False, False]
    best = read_run(run_dir)["best"]
    assert best["checkpoint"] == (
        None if best["epoch"] == 1 else checkpoints.checkpoint_name(best["epoch"])
    )


def test_schedules():
    assert schedules.resolve_milestones((0.4, 0.6, 0.8), 150) == (60, 90, 120)
    assert schedules.resolve_milestones((90, 60), 150) == (60, 90)
    lr = [
        schedules.learning_rate("multistep", 0.05, e, 0, 10, 150, (60, 90))
        for e in (0, 59, 60, 89, 90)
    ]
    assert lr == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])
    cyc = [schedules.learning_rate("cyclic", 1.0, 0, s, 100, 1, peak=0.4) for s in range(100)]
    assert max(cyc) == pytest.approx(1.0) and cyc.index(max(cyc)) == 39 and cyc[-1] == 0
    cos = [schedules.learning_rate("cosine", 1.0, 0, s, 100, 1) for s in (0, 50)]
    assert cos == pytest.approx([1.0, 0.5])


def test_resolved_config_is_explicit_and_stable():
    resolved = resolve_config(TrainConfig(method="trades"))
    assert resolved.epochs >= 1 and resolved.attack == "pgd7" and resolved.trades_beta == 6.0
    assert resolved.step_size == pytest.approx(0.007 / 0.0314 * resolved.eps)
    assert resolved.mart_beta is None and resolved.awp_gamma is None
    assert resolve_config(resolved) == resolved


# ---------------------------------------------------------------------------------------------
# AWP


def test_awp_perturbation_has_the_relative_size_per_layer_and_is_removed():
    torch.manual_seed(0)
    net = models.build("small-cnn", 10, 1)
    net.train()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gamma = 0.01
    layer_params = [p for _, p in weights.layers(net)]
    # AWP's code perturbs weights only (dim > 1); "all" takes the biases too
    only_weights = methods.awp_offset(net, x, y, gamma)
    assert len(only_weights) == len(layer_params) == 7  # 3 conv, 2 linear weights + biases
    for nu, w in zip(only_weights, layer_params, strict=True):
        expected = gamma * w.norm().item() if w.dim() > 1 else 0.0
        assert nu.norm().item() == pytest.approx(expected, rel=1e-4, abs=1e-12)
    offset = methods.awp_offset(net, x, y, gamma, which="all")
    for nu, w in zip(offset, layer_params, strict=True):
        assert nu.norm().item() == pytest.approx(gamma * w.norm().item(), rel=1e-4)
    # finding the offset changed nothing (weights, BN statistics)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training  # back in the mode it came in

    def grads_at(model):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in layer_params]

    plain = grads_at(net)
    with weights.perturbed(net, offset):
        assert all(
            torch.allclose(p, before[f"net.{n}"] + nu, atol=1e-6)
            for (n, p), nu in zip(weights.layers(net.net), offset, strict=True)
        )
        at_w_plus_v = grads_at(net)
    # removed bitwise after the step; the gradient was taken at w + v (it differs from at w)
    assert all(torch.equal(p.detach(), before[f"net.{n}"]) for n, p in weights.layers(net.net))
    assert any(not torch.allclose(a, b) for a, b in zip(plain, at_w_plus_v, strict=True))
    # an ascent direction: the loss at w + v is higher than at w
    with torch.no_grad():
        base = torch.nn.functional.cross_entropy(net(x), y).item()
        with weights.perturbed(net, offset):
            up = torch.nn.functional.cross_entropy(net(x), y).item()
    assert up > base


def test_awp_offset_is_computed_in_eval_mode_by_default_as_the_codes():
    """The code's AWP computes the weight perturbation with the model in eval mode: the offset
    is the normalized gradient of the CE at the BN running statistics, written out here;
    `mode="train"` (batch statistics) gives another one."""
    torch.manual_seed(0)
    net = models.build("small-cnn", 10, 1)
    with torch.no_grad():  # running statistics unlike the batch's
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    gamma = 0.01
    found = weights.layers(net)
    net.eval()
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    net.train()
    expected = [
        gamma * p.detach().norm() * p.grad / p.grad.norm() if p.dim() > 1 else torch.zeros_like(p)
        for _, p in found
    ]
    offset = methods.awp_offset(net, x, y, gamma)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(offset, expected, strict=True))
    train_mode = methods.awp_offset(net, x, y, gamma, mode="train")
    assert not torch.allclose(train_mode[0], expected[0], atol=1e-4)
    assert resolve_config(TrainConfig(method="awp")).awp_mode == "eval"


def test_weight_clipping_clamps_every_trainable_parameter_by_default_as_the_codes():
    """The code's BoxProjection clamps every trainable parameter, BN scale and shift included;
    `weights` keeps to the layers."""
    net = models.build("small-cnn", 10, 1)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    everything = regularizers.clipped(net, "all")
    assert len(everything) == len([p for p in net.parameters() if p.requires_grad])
    regularizers.clip_weights(everything, 0.05)
    assert all(p.abs().max() <= 0.05 for p in net.parameters())
    layers = regularizers.clipped(net, "weights")
    assert len(layers) == len(weights.layers(net)) < len(everything)
    config = TrainConfig(weight_clip=0.05)
    assert resolve_config(config).weight_clip_layers == "all"
    assert resolve_config(TrainConfig()).weight_clip_layers is None


def test_entropy_sgd_restores_weights_and_leaves_a_gradient():
    torch.manual_seed(0)
    net = models.build("tiny", 10, 1)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]

    def closure(_i):
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss.detach(), None

    esgd = regularizers.EntropySGD(params, steps=3, lr=0.1, gamma=1e-4, noise=1e-4, alpha=0.75)
    esgd.gradient(closure, torch.Generator().manual_seed(0))
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(p.grad.abs().sum().item() for p in params) > 0


def test_entropy_sgd_outer_step_on_a_quadratic_equals_the_reference_update():
    """f_i(w) = 1/2 (w - b_i)' A (w - b_i), batch i per Langevin step; the reference update of
    the paper's code (common/torch/optim.py) written out: Langevin d = grad + wd w', Nesterov
    momentum with a fresh buffer, + gamma (w' - w) + eps / sqrt(lr' / 2) z; mu <- 0.75 mu +
    0.25 w'; then the outer SGD step on w - mu (weight decay, Nesterov momentum, lr)."""
    torch.manual_seed(0)
    a = torch.diag(torch.tensor([1.0, 3.0, 0.5, 2.0]))
    b = torch.randn(3, 4)
    w0 = torch.randn(4)
    L, llr, gamma, eps, alpha = 3, 0.1, 1e-4, 1e-2, 0.75
    lr, mom, wd = 0.05, 0.9, 5e-4
    param = torch.nn.Parameter(w0.clone())
    seen = []

    def closure(i):
        seen.append(i)
        param.grad = None
        (0.5 * (param - b[i]) @ a @ (param - b[i])).backward()
        return i, None

    esgd = regularizers.EntropySGD([param], L, llr, gamma, eps, alpha, wd, mom, True)
    opt = torch.optim.SGD([param], lr=lr, momentum=mom, nesterov=True, weight_decay=wd)
    assert esgd.gradient(closure, torch.Generator().manual_seed(7)) == (0, None)
    opt.step()
    assert seen == [0, 1, 2]  # a new batch for every Langevin step

    gen = torch.Generator().manual_seed(7)
    w, mu, buf = w0.clone(), w0.clone(), torch.zeros(4)
    for i in range(L):
        d = a @ (w - b[i]) + wd * w
        buf = mom * buf + d
        d = d + mom * buf
        d = d + gamma * (w - w0) + eps / math.sqrt(0.5 * llr) * torch.randn(4, generator=gen)
        w = w - llr * d
        mu = 0.75 * mu + 0.25 * w
    g = (w0 - mu) + wd * w0  # no 1 / (lr L) scaling
    expected = w0 - lr * (g + mom * g)  # torch's first Nesterov step: buffer = g
    assert torch.allclose(param.detach(), expected, atol=1e-6)
    assert not torch.allclose(expected, w0 - lr * (w0 - mu) / (llr * L), atol=1e-4)


def test_entropy_sgd_without_momentum_by_default_equals_the_codes_update():
    """The code's get_entropy_optimizer reads the module-global momentum, 0: the Langevin steps
    and the outer step on w - mu are plain (no momentum buffer, no Nesterov)."""
    config = resolve_config(TrainConfig(optimizer="entropy-sgd", arch="tiny"))
    assert config.entropy_momentum == 0.0
    torch.manual_seed(1)
    a = torch.diag(torch.tensor([1.0, 3.0, 0.5, 2.0]))
    b = torch.randn(3, 4)
    w0 = torch.randn(4)
    param = torch.nn.Parameter(w0.clone())

    def closure(i):
        param.grad = None
        (0.5 * (param - b[i % 3]) @ a @ (param - b[i % 3])).backward()
        return i, None

    c = config
    esgd = regularizers.EntropySGD.from_config([param], c)
    assert (esgd.momentum, esgd.nesterov) == (0.0, False)
    from flatcli.training.config import momentum_of

    momentum, nesterov = momentum_of(c)
    opt = torch.optim.SGD([param], lr=c.lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=c.weight_decay)  # fmt: skip
    esgd.gradient(closure, torch.Generator().manual_seed(3))
    opt.step()
    gen = torch.Generator().manual_seed(3)
    w, mu, llr, wd = w0.clone(), w0.clone(), c.entropy_lr, c.weight_decay
    for i in range(c.entropy_steps):
        noise = c.entropy_noise / math.sqrt(0.5 * llr) * torch.randn(4, generator=gen)
        w = w - llr * (a @ (w - b[i % 3]) + wd * w + c.entropy_gamma * (w - w0) + noise)
        mu = c.entropy_alpha * mu + (1 - c.entropy_alpha) * w
    expected = w0 - c.lr * ((w0 - mu) + wd * w0)
    assert torch.allclose(param.detach(), expected, atol=1e-6)
    old = resolve_config(TrainConfig(optimizer="entropy-sgd", entropy_momentum=0.9))
    assert momentum_of(old) == (0.9, True)


def test_entropy_sgd_defaults_follow_the_code_and_equalize_compute():
    config = resolve_config(TrainConfig(optimizer="entropy-sgd"))
    assert config.entropy_gamma == 1e-4 and config.entropy_alpha == 0.75
    assert config.epochs == math.ceil(100 / config.entropy_steps)  # digits: 100 / L
    assert resolve_config(TrainConfig(optimizer="entropy-sgd", epochs=7)).epochs == 7


def test_entropy_sgd_run_draws_a_batch_per_langevin_step(tmp_path):
    config = TrainConfig(optimizer="entropy-sgd", entropy_steps=2, **{**FAST, "epochs": 1})
    result = train(config, tmp_path / "esgd")
    assert len(result.rows) == 1 and math.isfinite(result.rows[0]["train_loss"])
    assert read_run(tmp_path / "esgd")["config"]["entropy_steps"] == 2


# ---------------------------------------------------------------------------------------------
# the methods' registry and the paper's code's choices


def test_method_registry_is_what_resolve_config_help_and_objectives_know(capsys):
    from flatcli.training import registry

    assert set(methods.REGISTRY) == set(registry.METHODS)
    for name, info in registry.METHODS.items():
        method = methods.build(name)
        assert method.name == name and method.info is info
    code, out, _ = flatcli(capsys, "train", "--help")
    assert code == 0 and all(name in out for name in registry.METHODS)


def test_at_trains_on_the_best_pgd_iterate_by_default_and_final_on_request():
    from flatcli.attacks.base import ce_per_example
    from flatcli.attacks.presets import build_attack

    torch.manual_seed(0)
    net = models.build("tiny", 10, 1).eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    attack = build_attack("pgd5x2", "linf", 0.3, 0.3, 0, restart_choice="loss")  # step = eps
    best = methods.build("at", attack=attack).adversarial(
        net, x, y, torch.Generator().manual_seed(1)
    )
    final = methods.build("at", attack=attack, attack_point="final").adversarial(
        net, x, y, torch.Generator().manual_seed(1)
    )
    assert (best - x).abs().max() <= 0.3 + 1e-6 and (final - x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        loss_best, loss_final = ce_per_example(net(best), y), ce_per_example(net(final), y)
    assert (loss_best >= loss_final - 1e-5).all() and (loss_best > loss_final + 1e-4).any()
    assert resolve_config(TrainConfig()).attack_point == "best"
    assert resolve_config(TrainConfig(method="awp")).awp_layers == "weights"
    config = resolve_config(TrainConfig(attack="pgd5x2"))
    assert methods.from_config(config).attack.restart_choice == "loss"  # the training attack's


def test_label_noise_draws_from_all_classes_by_default():
    y = torch.zeros(4000, dtype=torch.int64)
    drawn = regularizers.noisy_labels(y, 1.0, 10, torch.Generator().manual_seed(0))
    assert 0.07 < (drawn == 0).float().mean().item() < 0.13  # the true class: 1 in 10
    others = regularizers.noisy_labels(y, 1.0, 10, torch.Generator().manual_seed(0), "others")
    assert (others != 0).all() and set(others.tolist()) == set(range(1, 10))


def test_extra_data_fraction_defaults_to_the_codes(tmp_path):
    import numpy as np

    npz = tmp_path / "extra.npz"
    np.savez(npz, x=np.zeros((4, 8, 8, 1), np.uint8), y=np.zeros(4, np.int64))
    assert resolve_config(TrainConfig(extra_data=str(npz))).extra_fraction == 0.7
    resolved = resolve_config(TrainConfig(extra_data=str(npz)))
    assert resolved.extra_steps == "same" and resolve_config(TrainConfig()).extra_steps is None


def _code_sampler_batches(n_sup: int, n_unsup: int, batch: int, fraction: float) -> list[int]:
    """The paper's code's SemiSupervisedSampler (common/datasets.py), as used by
    experiments/iccv/common.py, written out: int(batch * fraction) extra examples drawn with
    replacement, the rest labelled from a shuffled pass, ceil(n_sup / batch) batches; returns
    the labelled count of each batch."""
    unsup = int(batch * fraction)
    sup = batch - unsup
    labelled, k = [], 0
    while len(labelled) < math.ceil(n_sup / batch):
        labelled.append(len(range(n_sup)[k : k + sup]))
        k = k + sup if k + sup < n_sup else 0
    return labelled


def test_extra_data_batches_follow_the_codes_sampler(tmp_path):
    """89 extra + 39 labelled of 128 at 0.7, as many steps as without extra data (the train log
    says so), extra drawn with replacement; `labelled-pass` keeps one pass over the labelled."""
    from flatcli.training.batches import extra_draws
    from flatcli.training.config import extra_per_batch

    assert extra_per_batch(0.7, 128, "same") == 89
    assert extra_per_batch(0.7, 128, "labelled-pass") == 90
    assert _code_sampler_batches(1000, 5000, 128, 0.7) == [39] * 8
    assert len(_code_sampler_batches(50000, 500000, 128, 0.7)) == 391  # CIFAR-10
    drawn = extra_draws(10, 50, torch.Generator().manual_seed(0), replace=True)
    assert len(drawn) == 50 and len(set(drawn.tolist())) < 10 + 1
    assert torch.bincount(drawn, minlength=10).max() > 5  # repeats within a set-sized window
    passes = extra_draws(10, 20, torch.Generator().manual_seed(0), replace=False)
    assert sorted(passes[:10].tolist()) == list(range(10))
    npz = _extra_npz(tmp_path)
    base = {**FAST, "epochs": 1, "heldout_attack": "pgd2", "extra_fraction": 0.7}
    steps = {}
    for name, extra in {
        "none": {"extra_fraction": None},
        "same": dict(extra_data=npz),
        "pass": dict(extra_data=npz, extra_steps="labelled-pass"),
    }.items():
        train(TrainConfig(**{**base, **extra}), tmp_path / name)
        steps[name] = tables.read_table(tmp_path / name, "train_log").steps.item()
    # 96 labelled, batch 32: 3 steps with or without extra data; one labelled pass: 96 / 10
    assert steps == {"none": 3, "same": 3, "pass": math.ceil(96 / (32 - 22))}
    assert len(_code_sampler_batches(96, 100, 32, 0.7)) == steps["same"]


# ---------------------------------------------------------------------------------------------
# resume, refusal, faults


class _Killed(Exception):
    pass


def _kill_at(epoch: int, step: int | None):
    """An on_event that stops the run like a kill: mid-epoch (step) or right after an epoch."""

    def on_event(event):
        if step is None and event.kind == "epoch" and event.epoch == epoch:
            raise _Killed
        if (
            step is not None
            and event.kind == "batch"
            and (event.epoch, event.step) == (epoch, step)
        ):
            raise _Killed

    return on_event


def test_resume_equals_uninterrupted_bitwise(tmp_path):
    config = TrainConfig(
        **{
            **FAST,
            "epochs": 3,
            "method": "awp",
            "augment": "crop-flip",
            "label_noise": 0.1,
            "milestones": (2,),
        }
    )
    train(config, tmp_path / "a" / "run")
    b = tmp_path / "b" / "run"
    with pytest.raises(_Killed):  # killed mid-epoch 2 (after one completed epoch)
        train(config, b, on_event=_kill_at(2, 2))
    assert torch.load(b / STATE_FILE, weights_only=True)["epoch"] == 1
    (b / f".{STATE_FILE}.leftover.tmp").write_bytes(b"half-written")  # a kill mid-write
    with pytest.raises(_Killed):  # resumed, then killed right after epoch 2
        train(config, b, on_event=_kill_at(2, None))
    result = train(config, b)
    assert result.resumed_from == 2 and len(result.rows) == 3
    for epoch in (1, 2, 3):
        name = checkpoints.checkpoint_name(epoch)
        assert _same_checkpoint(tmp_path / "a" / "run" / name, b / name)
    assert _log(tmp_path / "a" / "run") == _log(b)
    assert read_run(b)["best"] == read_run(tmp_path / "a" / "run")["best"]
    assert len(read_run(b)["resumes"]) == 2


def test_kill_9_during_training_then_rerun_gives_the_same_final_checkpoint(tmp_path):
    epochs = 6
    args = [
        sys.executable,
        "-m",
        "flatcli",
        "train",
        "--arch",
        "tiny",
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        "--heldout-examples",
        "32",
        "--heldout-every",
        "3",
        "-q",
    ]
    # the uninterrupted reference runs in this process, with the subprocesses' thread count
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train(
        TrainConfig(
            arch="tiny", epochs=epochs, batch_size=32, heldout_examples=32, heldout_every=3
        ),
        tmp_path / "a" / "run",
    )
    b = tmp_path / "b" / "run"
    proc = subprocess.Popen(
        [*args, "--out", b], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 60
    while not (b / "epoch_0002.safetensors").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert read_run(b)["epochs_done"] < epochs  # killed mid-run
    subprocess.run([*args, "--out", b], check=True, env=env, cwd=ROOT, capture_output=True)
    name = checkpoints.checkpoint_name(epochs)
    assert _same_checkpoint(tmp_path / "a" / "run" / name, b / name)
    assert _log(tmp_path / "a" / "run") == _log(b)
    assert read_run(b)["resumes"][0]["epoch"] >= 1


def test_other_config_in_run_dir_is_refused_unless_force_and_rerun_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = flatcli(capsys, "train", *FAST_ARGS, "--out", out, "-f", "jsonl")
    assert code == 0 and len(stdout.splitlines()) == 2
    before = load_file(out / "epoch_0002.safetensors")
    code, stdout, err = flatcli(capsys, "train", *FAST_ARGS[:-1], "--out", out, "-f", "jsonl")
    assert code == 0 and "done already" in err and len(stdout.splitlines()) == 2
    code, _, err = flatcli(capsys, "train", *FAST_ARGS, "--lr", "0.1", "--out", out)
    assert code == 2 and "another configuration" in err and "lr 0.05 -> 0.1" in err
    assert len(err.strip().splitlines()) == 1
    assert all(
        torch.equal(v, before[k]) for k, v in load_file(out / "epoch_0002.safetensors").items()
    )
    code, _, _ = flatcli(capsys, "train", *FAST_ARGS, "--lr", "0.1", "--out", out, "--force")
    assert code == 0 and read_run(out)["config"]["lr"] == 0.1
    assert len(tables.read_table(out, "train_log")) == 2  # the old run's log is gone


def test_a_finished_run_extends_to_more_epochs_when_its_schedule_allows(tmp_path, capsys):
    """Milestones given as epochs (all passed): 2 -> 3 epochs continues the run, and equals a
    fresh 3-epoch run bitwise (checkpoint and log)."""
    args = [*FAST_ARGS[:-1], "--milestones", "1"]  # not quiet: the message is checked
    extended, fresh = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert flatcli(capsys, "train", *args, "--out", extended)[0] == 0
    code, _, err = flatcli(capsys, "train", *args, "--epochs", "3", "--out", extended)
    assert code == 0 and "extending from 2 epochs, at epoch 3" in err
    args3 = [a if a != "2" else "3" for a in args]  # --epochs 3
    assert flatcli(capsys, "train", *args3, "--out", fresh)[0] == 0
    assert _same_checkpoint(extended / "epoch_0003.safetensors", fresh / "epoch_0003.safetensors")
    assert _log(extended) == _log(fresh) and len(_log(extended)) == 3
    run = read_run(extended)
    assert run["epochs_done"] == 3 and run["extensions"][0]["from_epochs"] == 2
    assert run["config_hash"] == read_run(fresh)["config_hash"]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ([], "the milestones (fractions of --epochs) would move from [0] to [1]"),
        (["--schedule", "cosine"], "the cosine schedule depends on --epochs"),
    ],
)
def test_extension_is_refused_saying_why(tmp_path, capsys, extra, why):
    out = tmp_path / "run"
    assert flatcli(capsys, "train", *FAST_ARGS, *extra, "--out", out)[0] == 0
    code, _, err = flatcli(capsys, "train", *FAST_ARGS, *extra, "--epochs", "3", "--out", out)
    assert code == 2 and "cannot extend it to 3 epochs" in err and why in err, err
    assert len(err.strip().splitlines()) == 1 and read_run(out)["epochs_done"] == 2


def test_cli_defaults_equal_the_config_defaults():
    import dataclasses
    import inspect

    from flatcli.cli.train import train as command

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    shared = [p for p in inspect.signature(command).parameters.values() if p.name in fields]
    assert len(shared) >= 45
    for param in shared:
        assert param.default == fields[param.name], param.name


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_epoch(
    tmp_path, capsys, monkeypatch
):
    calls = {"n": 0}
    original = methods.AT.loss

    def exploding(self, *args):
        calls["n"] += 1
        loss, logits = original(self, *args)
        return (loss * math.nan if calls["n"] > 4 else loss), logits  # 3 batches per epoch

    monkeypatch.setattr(methods.AT, "loss", exploding)
    out = tmp_path / "run"
    code, _, err = flatcli(capsys, "train", *FAST_ARGS, "--out", out)
    assert code == 1 and "non-finite training loss" in err and "epoch 2, batch 2" in err
    assert "epoch_0001.safetensors" in err
    assert [r.epoch for r in checkpoints.discover([out])] == [1]
    assert torch.load(out / STATE_FILE, weights_only=True)["epoch"] == 1
    assert read_run(out)["status"] == "diverged"
    checkpoints.load_model(out / "epoch_0001.safetensors")
    with pytest.raises(TrainingDiverged):
        calls["n"] = 4
        train(TrainConfig(**FAST), tmp_path / "api")


# ---------------------------------------------------------------------------------------------
# DDP


def test_ddp_with_two_gloo_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "flatcli",
            "train",
            *FAST_ARGS,
            "--method",
            "awp",
            "--out",
            out,
            "-f",
            "jsonl",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone prints
    run = read_run(out)
    assert run["world_size"] == 2 and run["status"] == "done"
    assert [r.epoch for r in checkpoints.discover([out])] == [1, 2]
    assert rows[0]["n_examples"] == 96 and math.isfinite(rows[-1]["train_loss"])


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "sgd"], "unknown method 'sgd'"),
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--eps", "1.5"], "--eps 1.5 is outside [0, 1]"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar10"),
        (["--dataset", "npz:/nonexistent.npz"], "not found"),
        (["--method", "clean", "--attack", "pgd10"], "--method clean trains without an attack"),
        (["--method", "clean", "--eps", "0.1"], "drop --eps"),
        (["--method", "at", "--trades-beta", "3"], "--trades-beta applies to --method trades"),
        (["--attack", "aa-lite"], "training needs a PGD attack"),
        (["--schedule", "cosine", "--milestones", "10"], "--milestones applies to"),
        (["--entropy-steps", "3"], "needs --optimizer entropy-sgd"),
        (["--extra-fraction", "0.5"], "--extra-fraction needs --extra-data"),
        (["--augment", "mixup"], "unknown augment 'mixup'; --augment takes one of none, crop-flip"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--schedule", "step"], "'step' is not one of 'multistep', 'cyclic', 'cosine'"),
        (["--optimizer", "adam"], "'adam' is not one of 'sgd', 'entropy-sgd'"),
        (["--attack-point", "mean"], "--attack-point takes one of best, final"),
        (["--method", "awp", "--awp-layers", "bn"], "--awp-layers takes one of weights, all"),
        (["--label-noise-classes", "some"], "'some' is not one of 'all', 'others'"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    code, stdout, err = flatcli(capsys, "train", "--out", tmp_path / "run", *args)
    assert code == 2 and message in err, err
    assert err.startswith("flatcli: error:") and len(err.strip().splitlines()) == 1
    assert stdout == "" and not (tmp_path / "run").exists()


def test_unwritable_or_foreign_out_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = flatcli(capsys, "train", *FAST_ARGS, "--out", blocker / "run")
    assert code == 2 and "not writable" in err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = flatcli(capsys, "train", *FAST_ARGS, "--out", foreign)
    assert code == 2 and "holds no flatcli run" in err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_train_help_has_examples_and_imports_no_torch():
    code = (
        "import sys\nfrom flatcli.cli import main\ntry:\n main(['train', '--help'])\n"
        "except SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Example: flatcli train" in done.stdout and "--milestones 60,90,120" in done.stdout


# ---------------------------------------------------------------------------------------------
# speed without changing results: data on the device, no per-step host syncs, bf16, compile

# (train_loss, train_robust_err) of epochs 1 and 2 as recorded with the host-side data path
# (main at fba36f0, one CPU thread) before the data moved to the device. The resident path
# reproduced them bitwise on the CPU they were recorded on; another CPU model's kernels round the
# last bits of some sums differently (measured: up to 1e-6 relative after two epochs), so the
# losses must agree to 1e-5 relative and the error rates exactly; a change of what is trained
# moves the loss by orders of magnitude more.
RECORDED = {
    "at": ((2.4162023067474365, 0.9166666666666666), (2.4167333443959556, 0.90625)),
    "trades-noise": (
        (2.32091801961263, 0.9111111111111111),
        (2.3174982918633353, 0.8888888888888888),
    ),
    "mart-entropy": (
        (2.5652573903401694, 0.9166666666666666),
        (2.5776246388753257, 0.8854166666666666),
    ),
    "awp-extra-clip": ((2.353727877140045, 0.9453125), (2.3299221992492676, 0.9765625)),
    "at-bf16": ((2.4159468015034995, 0.9166666666666666), (2.41621732711792, 0.90625)),
    "clean-cnn": ((2.292000150680542, None),),
}


def _extra_npz(tmp_path) -> str:
    import numpy as np

    from flatcli import data

    x, y = data.load_split("digits", "test", 100)
    np.savez(tmp_path / "extra.npz", x=x.numpy(), y=y.numpy())
    return str(tmp_path / "extra.npz")


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_device_resident_training_reproduces_the_recorded_host_path(tmp_path, case):
    extra = {
        "at": {},
        "trades-noise": dict(method="trades", label_noise=0.2, train_examples=90),  # short batch
        "mart-entropy": dict(
            method="mart", optimizer="entropy-sgd", entropy_steps=2, entropy_momentum=0.9
        ),
        "awp-extra-clip": dict(  # the options that keep the recorded (earlier default) behaviour
            method="awp", extra_data=_extra_npz(tmp_path), extra_fraction=0.25, weight_clip=0.05,
            extra_steps="labelled-pass", weight_clip_layers="weights", awp_mode="train",
        ),  # fmt: skip
        "at-bf16": dict(amp="bf16"),
        "clean-cnn": dict(method="clean", arch="small-cnn", train_examples=80, epochs=1),
    }[case]
    rows = train(TrainConfig(**{**FAST, **extra}), tmp_path / "run").rows
    assert [r["train_robust_err"] for r in rows] == [err for _, err in RECORDED[case]]
    assert [r["train_loss"] for r in rows] == pytest.approx(
        [loss for loss, _ in RECORDED[case]], rel=1e-5
    )


def test_crop_flip_and_cutout_are_batched_draws_of_the_documented_transforms():
    x = torch.rand(256, 2, 8, 8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    out = regularizers.crop_flip(x, 1, torch.Generator().manual_seed(0))
    seen = set()
    for b in range(len(x)):
        for top in range(3):
            for left in range(3):
                window = padded[b, :, top : top + 8, left : left + 8]
                for flip in (False, True):
                    if torch.equal(out[b], window.flip(-1) if flip else window):
                        seen.add((top, left, flip))
                        break
                else:
                    continue
                break
            else:
                continue
            break
        else:
            raise AssertionError(f"image {b} is no (flipped) crop of the padded input")
    assert len(seen) == 18  # every offset, flipped and not
    again = regularizers.crop_flip(x, 1, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    ones = torch.ones(64, 3, 8, 8)
    cut = regularizers.cutout(ones, 4, torch.Generator().manual_seed(0))
    zeros = cut == 0
    assert (zeros.sum((1, 2, 3)) == 3 * 16).all()  # a 4x4 square, a quarter of 8x8, per image
    rows, cols = zeros[:, 0].any(2), zeros[:, 0].any(1)
    assert (rows.sum(1) == 4).all() and (cols.sum(1) == 4).all()
    assert len({tuple(r.nonzero().flatten().tolist()) for r in rows}) == 5  # every position
    aug = regularizers.Augmenter("cutout", 8)(ones, torch.Generator().manual_seed(1))
    assert aug.shape == ones.shape and (aug == 0).any()


_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _host_syncs_in_training(monkeypatch, tmp_path, config) -> int:
    """Reads of device values on the host (Tensor.item and friends) inside the epoch's steps."""
    from flatcli.training import loop

    counting = {"on": False, "n": 0}
    for name in _SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counting["n"] += counting["on"]
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train_epoch = loop._Trainer._train_epoch

    def watched(self, *args):
        counting["on"] = True
        try:
            return train_epoch(self, *args)
        finally:
            counting["on"] = False

    monkeypatch.setattr(loop._Trainer, "_train_epoch", watched)
    train(config, tmp_path / f"run{config.train_examples}")
    monkeypatch.undo()
    return counting["n"]


@pytest.mark.parametrize(
    "options",
    [
        dict(method="awp", label_noise=0.2, augment="crop-flip", weight_clip=0.5),
        dict(method="trades", optimizer="entropy-sgd", entropy_steps=2, augment="cutout"),
        dict(method="mart", extra_fraction=0.25),
    ],
)
def test_training_steps_never_wait_on_the_host(monkeypatch, tmp_path, options):
    if "extra_fraction" in options:
        options = {**options, "extra_data": _extra_npz(tmp_path)}
    counts = [
        _host_syncs_in_training(
            monkeypatch,
            tmp_path,
            TrainConfig(**{**FAST, "epochs": 1, "train_examples": n, **options}),
        )
        for n in (48, 160)  # 2 and 5 steps
    ]
    assert counts == [0, 0], counts


def test_bf16_training_runs_channels_last_and_its_loss_is_close_to_fp32s(tmp_path, monkeypatch):
    from flatcli.training import step

    layouts = []  # the layout of a 32-channel convolution's weight at each step
    gradient = step.Step.gradient

    def spy(self, *args, **kwargs):
        conv = [m.weight for m in self.net.modules() if isinstance(m, torch.nn.Conv2d)][1]
        layouts.append(conv.is_contiguous(memory_format=torch.channels_last))
        return gradient(self, *args, **kwargs)

    monkeypatch.setattr(step.Step, "gradient", spy)
    common = dict(arch="small-cnn", width=4, epochs=1, train_examples=64, batch_size=32, eps=0.1)
    common.update(attack="pgd2", heldout_examples=32, heldout_attack="pgd1")
    fp32 = train(TrainConfig(**common), tmp_path / "fp32").rows[0]
    assert layouts == [False, False]
    bf16 = train(TrainConfig(**common, amp="bf16"), tmp_path / "bf16").rows[0]
    assert layouts[2:] == [True, True]
    assert bf16["dtype"] == "bfloat16" and fp32["dtype"] == "float32"
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
    assert abs(bf16["train_robust_err"] - fp32["train_robust_err"]) <= 2 / 64
    cpu = torch.device("cpu")
    tiny, mlp = models.build("tiny", 10, 1), torch.nn.Sequential(torch.nn.Linear(4, 2))
    assert step.memory_format(tiny, cpu, None) == torch.contiguous_format
    assert step.memory_format(tiny, cpu, torch.bfloat16) == torch.channels_last
    assert step.memory_format(mlp, cpu, torch.bfloat16) == torch.contiguous_format


def test_compiled_training_traces_full_batches_only_and_equals_eager(tmp_path, monkeypatch):
    """`--compile on` through the trainer, with a recording backend (no inductor): every graph
    sees the full batch (the short last one runs eagerly) and the log equals eager's."""
    import torch._dynamo

    batch_sizes = []

    def recording(gm, example_inputs):
        images = [t for t in example_inputs if tuple(t.shape[1:]) == (1, 8, 8)]
        batch_sizes.extend(t.shape[0] for t in images)
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda m, **kw: real_compile(m, **{**kw, "backend": recording})
    )
    config = TrainConfig(**{**FAST, "epochs": 1, "train_examples": 80, "heldout_attack": "pgd1"})
    torch._dynamo.reset()
    try:
        on = train(dataclasses.replace(config, compile="on"), tmp_path / "on").rows
    finally:
        torch._dynamo.reset()
    off = train(dataclasses.replace(config, compile="off"), tmp_path / "off").rows
    assert batch_sizes and set(batch_sizes) == {32}  # 80 = 32 + 32 + 16: the 16 ran eagerly
    assert on[0]["train_loss"] == pytest.approx(off[0]["train_loss"], rel=1e-6)
    # A compiled graph may round differently from eager: at most one of the 80 examples may flip.
    assert_error_flips(on[0]["train_robust_err"], off[0]["train_robust_err"], 80, 1, "train err")


def test_inductor_compiled_training_step_equals_the_eager_step():
    """One real `torch.compile` (inductor, CPU) of the train-mode step: 3 updates of the tiny
    model give the eager losses and weights up to float rounding."""
    import torch._dynamo

    from flatcli.training.step import Step

    torch.manual_seed(0)
    x, y = torch.rand(3, 16, 1, 8, 8), torch.randint(0, 10, (3, 16))
    runs = []
    for policy in ("off", "on"):
        torch.manual_seed(1)
        net = models.build("tiny", 10, 1).train()
        sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        step = Step(net, net, methods.build("clean"), sgd, None, policy, torch.device("cpu"),
                    16, (0.0, "weights", "eval"))  # fmt: skip
        losses = []
        for k in range(3):
            loss, _, _ = step.gradient(x[k], y[k], y[k], None)
            sgd.step()
            losses.append(loss.item())
        runs.append((losses, [p.detach().clone() for p in net.parameters()]))
        torch._dynamo.reset()
    (eager, w_eager), (compiled, w_compiled) = runs
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(w_eager, w_compiled, strict=True))


def test_a_device_without_bf16_trains_in_fp32_and_says_so(tmp_path, monkeypatch):
    """`--amp bf16` on a GPU without native bf16 (the CUDA branch, forced on CPU): the run trains
    in fp32, its start line says so and run.json and the log say fp32."""
    from flatcli.attacks import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    events = []
    config = TrainConfig(**{**FAST, "epochs": 1, "heldout_attack": "pgd1", "amp": "bf16"})
    result = train(config, tmp_path / "run", on_event=events.append)
    start = [e.message for e in events if e.kind == "start"]
    assert len(start) == 1 and "no native bf16; computing in fp32" in start[0]
    assert result.config.amp == "none" and result.rows[0]["dtype"] == "float32"
    assert read_run(tmp_path / "run")["config"]["amp"] == "none"
