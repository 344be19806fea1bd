"""--precision: the attack's search in tf32/bf16, every reported number re-evaluated in fp32
with TF32 off (CPU-testable: the same code path and switches run on CUDA)."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from flatcli import data, engine
from flatcli.api import load_model
from flatcli.attacks.precision import LowPrecisionSearch
from flatcli.attacks.presets import build_attack
from flatcli.cli import main
from flatcli.config.commands import AttackConfig, FlatnessConfig, config_hash, hashed_fields
from flatcli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_checkpoints" / "at" / "epoch_0025.safetensors"


def test_bf16_search_with_fp32_evaluation_matches_fp32_on_a_trained_checkpoint():
    """The bar: robust error within 0.5 points, robust loss within 1 % of fp32."""
    model = load_model(SAMPLE)
    x, y = data.load_split("digits", "test", 400)
    results = {}
    for precision in ("fp32", "bf16"):
        attack = build_attack("pgd10x2", "linf", 0.15, None, 0, precision)
        outcome = engine.robust_losses(model, x, y, [attack], (0, "k"), 512).robust["pgd10x2"]
        results[precision] = (engine.error_rate(outcome.correct), outcome.loss.mean().item())
    (err32, loss32), (err16, loss16) = results["fp32"], results["bf16"]
    assert abs(err16 - err32) <= 0.005
    assert abs(loss16 - loss32) <= 0.01 * loss32


def test_the_reported_loss_is_the_fp32_loss_at_the_returned_points():
    model = load_model(SAMPLE)
    x, y = data.load_split("digits", "test", 64)
    attack = build_attack("pgd5", "linf", 0.15, None, 0, "bf16")
    assert isinstance(attack, LowPrecisionSearch) and attack.name == "pgd5"
    out = attack(model, x, y, attack.draw_starts(x, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        logits = model(out.points)
        broken = model(out.broken_points).argmax(1) != y
    expected = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.dtype == torch.float32
    assert torch.equal(out.correct, (logits.argmax(1) == y) & ~broken)


def test_precision_is_part_of_the_configuration_and_fp32_keeps_old_hashes():
    assert "precision" not in hashed_fields(AttackConfig())  # rows written before it still match
    for config in (AttackConfig(), FlatnessConfig()):
        bf16 = type(config)(precision="bf16")
        assert hashed_fields(bf16)["precision"] == "bf16"
        assert config_hash(bf16) != config_hash(config)


def test_apgd_ce_in_bf16_reports_fp32_at_its_points_within_the_bar_of_fp32():
    """APGD-CE returns the point behind each example's loss, so it searches in bf16 too: the
    loss reported is the fp32 loss there, and error and loss stay within the bar."""
    from flatcli.attacks.apgd import APGDCE
    from flatcli.attacks.precision import with_precision

    model = load_model(SAMPLE)
    x, y = data.load_split("digits", "test", 200)
    fp32 = APGDCE("apgd-ce", "linf", 0.15, steps=20)
    results = {}
    for precision in ("fp32", "bf16"):
        attack = with_precision(fp32, precision)
        outcome = engine.robust_losses(model, x, y, [attack], (0, "k"), 512).robust["apgd-ce"]
        results[precision] = (engine.error_rate(outcome.correct), outcome.loss.mean().item())
    (err32, loss32), (err16, loss16) = results["fp32"], results["bf16"]
    assert abs(err16 - err32) <= 0.005
    assert abs(loss16 - loss32) <= 0.01 * loss32
    out = fp32(model, x[:32], y[:32], None, keep_points=True)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(out.points), y[:32], reduction="none")
    torch.testing.assert_close(out.loss, expected)  # the points are where the losses were reached
    assert (out.points - x[:32]).abs().amax() <= 0.15 + 1e-6


def test_attacks_that_cannot_return_points_are_refused_not_run_in_fp32():
    with pytest.raises(UsageError, match="cannot return its points"):
        build_attack("apgd-t", "linf", 0.1, None, 0, "bf16")
    with pytest.raises(UsageError, match="--precision"):
        build_attack("pgd5", "linf", 0.1, None, 0, "fp16")


def _flatcli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, *capsys.readouterr()


def test_cli_bf16_rows_are_their_own_and_bad_values_exit_2(tmp_path, capsys):
    common = [SAMPLE, "--out", tmp_path, "--attacks", "pgd3", "--n-examples", "32", "-q"]
    assert _flatcli(capsys, "attack", *common)[0] == 0
    code, _, err = _flatcli(capsys, "attack", *common, "--precision", "bf16", "-f", "csv")
    assert code == 0, err
    rows = pd.read_parquet(tmp_path / "attack")
    assert sorted(rows.dtype) == ["bfloat16", "float32"]  # the bf16 run was not skipped
    assert rows.config_hash.nunique() == 2
    code, _, err = _flatcli(capsys, "attack", *common, "--precision", "fp16")
    assert code == 2 and len(err.strip().splitlines()) == 1
    aa = ["--precision", "bf16", "--attacks", "aa-lite"]  # APGD-T cannot return its points
    code, _, err = _flatcli(capsys, "attack", *common, *aa)
    assert code == 2 and "cannot return its points" in err and len(err.strip().splitlines()) == 1


def test_a_channels_last_model_through_the_stacked_path_equals_one_setting_at_a_time():
    """CUDA evaluation converts models to channels_last; the stacked (vmap) path must take it."""
    from flatcli import weights

    model = load_model(SAMPLE).to(memory_format=torch.channels_last)
    x, _ = data.load_split("digits", "test", 8)
    w = [p for _, p in weights.require_layers(model)]
    offsets = [[0.01 * (g + 1) * torch.ones_like(p) for p in w] for g in range(2)]
    stacked = weights.Stacked(model, offsets)(x.repeat_interleave(2, 0)).view(8, 2, -1)
    for g, offset in enumerate(offsets):
        with torch.no_grad(), weights.perturbed(model, offset):
            torch.testing.assert_close(stacked[:, g], model(x), atol=1e-5, rtol=1e-5)


def test_a_device_without_bf16_searches_in_fp32_and_says_so(tmp_path, capsys, monkeypatch):
    """A GPU without native bf16 (pre-Ampere) falls back to fp32 with one line on stderr, and
    the rows say fp32 (dtype, config_hash): the branch CUDA takes, forced here on CPU."""
    from flatcli.attacks import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    common = [SAMPLE, "--out", tmp_path, "--attacks", "pgd3", "--n-examples", "32"]
    code, _, err = _flatcli(capsys, "attack", *common, "--precision", "bf16")
    assert code == 0, err
    assert sum("no native bf16; computing in fp32" in line for line in err.splitlines()) == 1
    code, _, err = _flatcli(capsys, "attack", *common, "-q")  # fp32: the same work, skipped
    rows = pd.read_parquet(tmp_path / "attack")
    assert code == 0 and rows.dtype.tolist() == ["float32"]


# ------------------------------------------------------------------ true labels: fp32 is IEEE fp32


def _switches() -> tuple:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.fixture
def cuda_defaults():
    """TF32 on, as PyTorch leaves cudnn on CUDA (and matmuls under 'high'); restored after."""
    saved = _switches()
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield (True, True, "high")
    torch.set_float32_matmul_precision(saved[2])
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fp32_sets_tf32_off_while_measuring_and_restores_it(cuda_defaults, precision, monkeypatch):
    """The CUDA switches, run on CPU: every reported number is computed with TF32 off; a tf32
    search turns it on for its own steps only; the caller's switches come back after."""
    from flatcli import api
    from flatcli.attacks.pgd import PGD

    seen = {}
    measure, search = engine.robust_losses, PGD.__call__

    def spy_measure(*args, **kwargs):
        seen["measure"] = _switches()
        return measure(*args, **kwargs)

    def spy_search(self, *args, **kwargs):
        seen["search"] = _switches()
        return search(self, *args, **kwargs)

    monkeypatch.setattr(engine, "robust_losses", spy_measure)
    monkeypatch.setattr(PGD, "__call__", spy_search)
    rows = api.attack(SAMPLE, attacks="pgd2", n_examples=8, precision=precision, device="cpu")
    assert seen["measure"] == (False, False, "highest")
    assert seen["search"] == ((True, True, "high") if precision == "tf32" else seen["measure"])
    assert _switches() == cuda_defaults
    assert rows.dtype.tolist() == ["float32" if precision == "fp32" else "tf32"]


@pytest.mark.parametrize("name", ["pgd4x2", "apgd-ce"])
def test_the_least_margin_point_is_misclassified_exactly_where_an_example_is_broken(name):
    """In fp32 robust error counts any point tried; `broken_points` is misclassified exactly
    there, so the fp32 re-check after a low-precision search counts the same points."""
    model = load_model(SAMPLE)
    x, y = data.load_split("digits", "test", 96)
    attack = build_attack(name, "linf", 0.15, None, 0)
    out = attack(model, x, y, attack.draw_starts(x, torch.Generator().manual_seed(0)),
                 keep_points=True)
    with torch.no_grad():
        broken = model(out.broken_points).argmax(1) != y
        at_loss = model(out.points).argmax(1) != y
    assert torch.equal(~out.correct, broken)
    assert (broken | ~at_loss).all() and broken.any()


def test_a_low_precision_search_counts_any_point_it_broke_rechecked_in_fp32():
    """Under bf16 an example whose worst-loss point is classified right but another point it
    tried is misclassified (in fp32) counts as broken, as in fp32."""
    from flatcli.attacks.base import AttackOutcome

    model = load_model(SAMPLE)
    x, y = data.load_split("digits", "test", 32)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    wrong_x = torch.roll(x, 1, 0)  # other digits: misclassified wherever their label differs
    with torch.no_grad():
        wrong = model(wrong_x).argmax(1) != y

    class Fixed:
        name, steps, restarts, returns_points = "fixed", 1, 1, True

        def __call__(self, model, x, y, starts, **options):
            assert options.get("keep_points")
            return AttackOutcome(loss=torch.zeros(len(y)), correct=torch.ones_like(y, dtype=bool),
                                 points=x, broken_points=wrong_x)

    out = LowPrecisionSearch(Fixed(), "bf16")(model, x, y, None)
    assert torch.equal(out.correct, right & ~wrong) and (right & wrong).any()
