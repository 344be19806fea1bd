"""Standard errors: the closed forms, and the SE columns of attack, flatness and landscape rows
checked against them on a constructed case (the shipped checkpoint, a few examples)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from flatcli import checkpoints, data, engine, evaluation, runtime, uncertainty, weights
from flatcli.attacks.pgd import PGD
from flatcli.attacks.presets import build_attack
from flatcli.config.commands import AttackConfig
from flatcli.measures import attack as attack_table
from flatcli.measures import average, worst
from flatcli.measures.landscape import _grid_row

EPS = 0.1
KEYS = (0, "digest")
CHECKPOINT = Path(__file__).resolve().parents[1] / "sample_checkpoints/at/epoch_0025.safetensors"


def test_closed_forms():
    assert uncertainty.binomial_se(0.3, 10) == pytest.approx(math.sqrt(0.3 * 0.7 / 10))
    assert uncertainty.binomial_se(0.0, 10) == 0.0
    assert uncertainty.binomial_se(None, 10) is None and uncertainty.binomial_se(0.5, 0) is None
    # 1, 2, 3, 4: variance (ddof 1) 5/3
    assert uncertainty.mean_se([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert uncertainty.spread([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3))
    assert uncertainty.mean_se([1.0]) is None and uncertainty.mean_se([1.0, math.nan]) is None
    correct = torch.tensor([True] * 7 + [False] * 3)
    assert uncertainty.error_se(correct) == pytest.approx(math.sqrt(0.3 * 0.7 / 10))
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert uncertainty.loss_se(loss) == pytest.approx(math.sqrt(5 / 3) / 2)
    # offsets' share sqrt(5/3)/2, examples' share std([0, 2]) / sqrt(2) = 1, in quadrature
    se = uncertainty.average_flatness_se([1, 2, 3, 4], torch.tensor([0.0, 2.0]))
    assert se == pytest.approx(math.sqrt(5 / 12 + 1))
    assert uncertainty.average_flatness_se([1.0], torch.tensor([0.0, 2.0])) is None
    assert uncertainty.difference_se(3.0, 4.0) == 5.0
    assert uncertainty.difference_se(3.0, None) is None
    assert uncertainty.combined(3.0, None, 4.0) == 5.0 and uncertainty.combined(None) is None
    assert uncertainty.z_one_sided_p(0.0) == 0.5
    assert uncertainty.z_one_sided_p(1.6448536) == pytest.approx(0.05, abs=1e-6)


@pytest.fixture(scope="module")
def model():
    loaded, _ = checkpoints.load_model(CHECKPOINT)
    for p in loaded.parameters():
        p.requires_grad_(False)
    return loaded


@pytest.fixture(scope="module")
def examples():
    x, y = data.load_split("digits", "test", 24)
    return x, y


def _pgd():
    return PGD("pgd2x1", "linf", EPS, 2, EPS / 4, 1)


def test_attack_rows_carry_binomial_and_per_example_standard_errors(model):
    (ref,) = checkpoints.discover([CHECKPOINT])
    config = AttackConfig(attacks=("pgd2x1", "pgd3x1"), eps=EPS, n_examples=24)
    config = attack_table.resolve_attack_config(config, [ref])
    rows = attack_table.attack_measure(config, torch.device("cpu"))(ref)
    assert [r["attack"] for r in rows] == ["pgd2x1", "pgd3x1", "worst"]
    x, y = data.load_split("digits", "test", 24)
    attacks = [
        build_attack(a, "linf", EPS, config.step_size, config.seed, config.precision)
        for a in config.attacks
    ]
    again = engine.robust_losses(model, x, y, attacks, evaluation.seed_keys(config, ref))
    clean = again.clean_loss.double()
    for row in rows:
        n = row["n_examples"]
        for kind in ("clean", "robust"):
            p = row[f"{kind}_err"]
            assert row[f"{kind}_err_se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
        assert row["clean_loss_se"] == pytest.approx(float(clean.std()) / math.sqrt(n), rel=1e-5)
        assert row["robust_loss_se"] > 0
    losses = again.robust["pgd3x1"].loss.double()
    assert rows[1]["robust_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert rows[1]["robust_loss_se"] == pytest.approx(float(losses.std()) / math.sqrt(24), rel=1e-5)


def test_average_flatness_se_is_offsets_and_examples_in_quadrature(model, examples):
    x, y = examples
    (result, _clean) = average.average_flatness(model, x, y, 0.5, 3, _pgd(), KEYS)
    assert result.measure == "average"
    w = weights.weights_of(model)
    ball = weights.ball_named("l2")(1.0)
    gens = [runtime.generator(*KEYS, "weight-direction", s) for s in range(3)]
    directions = [ball.random_start(w, gen) for gen in gens]
    at_w = engine.robust_losses(model, x, y, [_pgd()], KEYS).robust["pgd2x1"].loss.double()
    per_offset = [
        engine.robust_losses_at(model, [[0.5 * u for u in d]], x, y, [_pgd()], KEYS)[0]
        .robust["pgd2x1"].loss.double()
        for d in directions
    ]
    per_example = torch.stack(per_offset).mean(0) - at_w
    offsets = statistics.stdev(result.per_sample) / math.sqrt(3)
    examples_share = float(per_example.std()) / math.sqrt(len(y))
    assert result.flatness_se == pytest.approx(math.hypot(offsets, examples_share), rel=1e-4)
    assert result.flatness_se > result.flatness_std / math.sqrt(3)
    assert result.loss_se == pytest.approx(float(at_w.std()) / math.sqrt(len(y)), rel=1e-5)


@pytest.mark.parametrize("estimator", ["paper", "per-batch"])
def test_worst_case_keeps_each_restart_and_its_spread(model, examples, estimator):
    x, y = examples
    result = worst.worst_flatness(
        model, x, y, 0.01, eps=EPS, attack=_pgd(), estimator=estimator, iterations=2,
        restarts=3, weight_batch=8, seed_keys=KEYS,
    )
    assert len(result.per_restart) == 3 and len(set(result.per_restart)) == 3
    if estimator == "paper":  # the estimate is the best attempt
        assert max(result.per_restart) == pytest.approx(result.flatness, abs=1e-9)
    else:  # each batch keeps its best restart: at least every restart's set value
        assert result.flatness >= max(result.per_restart) - 1e-9
    row = worst._columns(result, _flatness_config())
    assert row["flatness_se"] == pytest.approx(statistics.stdev(result.per_restart))
    assert row["per_sample"] == pytest.approx(result.per_restart)
    assert row["robust_loss_se"] == pytest.approx(result.loss_se) and result.loss_se > 0


def _flatness_config():
    from flatcli.config.commands import FlatnessConfig

    return FlatnessConfig(eps=EPS)


def test_landscape_points_carry_per_example_standard_errors(model, examples):
    x, y = examples
    (result,) = engine.robust_losses_at(model, [[0 * t for t in weights.weights_of(model)]],
                                        x, y, [_pgd()], KEYS)
    row = _grid_row(result, _pgd())
    loss = result.robust["pgd2x1"].loss.double()
    assert row["robust_loss_se"] == pytest.approx(float(loss.std()) / math.sqrt(len(y)))
    clean = result.clean_loss.double()
    assert row["clean_loss_se"] == pytest.approx(float(clean.std()) / math.sqrt(len(y)))
