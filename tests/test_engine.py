"""The robust-loss engine: batch-size invariance, out-of-memory shrinking, worst case."""

import math

import torch
from conftest import assert_flips
from torch import nn

from flatcli import engine
from flatcli.attacks.base import AttackOutcome
from flatcli.attacks.pgd import PGD


def _attack():
    return PGD("pgd5x2", "linf", 0.1, steps=5, step_size=0.03, restarts=2)


def test_results_do_not_depend_on_batch_size(trained_digits_model, digits_test):
    x, y = digits_test[0][:64], digits_test[1][:64]
    a = engine.robust_losses(trained_digits_model, x, y, [_attack()], (0, "run", 1), batch_size=64)
    b = engine.robust_losses(trained_digits_model, x, y, [_attack()], (0, "run", 1), batch_size=7)
    torch.testing.assert_close(a.clean_loss, b.clean_loss)
    torch.testing.assert_close(
        a.robust["pgd5x2"].loss, b.robust["pgd5x2"].loss, atol=1e-5, rtol=1e-5
    )
    # Another batch size rounds the attack's sums differently: at most one of 64 may flip.
    assert_flips(a.clean_correct, b.clean_correct, 1, "clean, batch 64 vs 7")
    assert_flips(a.robust["pgd5x2"].correct, b.robust["pgd5x2"].correct, 1, "pgd, batch 64 vs 7")
    assert torch.all(a.robust["pgd5x2"].loss >= a.clean_loss - 1e-6)


class _OOMAbove(nn.Module):
    """Raises an out-of-memory error for batches larger than `limit`, as CUDA would."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(
    trained_digits_model, digits_test
):
    x, y = digits_test[0][:40], digits_test[1][:40]
    ref = engine.robust_losses(trained_digits_model, x, y, [_attack()], (0,), batch_size=40)
    small = _OOMAbove(trained_digits_model, limit=24)  # PGD batches restarts: 2 x examples
    got = engine.robust_losses(small, x, y, [_attack()], (0,), batch_size=40)
    failed = [i for i, size in enumerate(small.sizes) if size > 24]
    assert small.sizes[0] == 40 and failed  # the whole batch was tried first and ran out
    assert all(small.sizes[i + 1] <= small.sizes[i] // 2 for i in failed)  # retried halved
    assert len(failed) == 2  # once in the clean pass, once in the attack: the half then sticks
    torch.testing.assert_close(
        got.robust["pgd5x2"].loss, ref.robust["pgd5x2"].loss, atol=1e-5, rtol=1e-5
    )


def test_worst_over_attacks_is_per_example():
    res = engine.ExampleLosses(
        torch.zeros(3),
        torch.ones(3, dtype=torch.bool),
        {
            "a": AttackOutcome(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])),
            "b": AttackOutcome(torch.full((3,), math.nan), torch.tensor([True, True, False])),
        },
    )
    w = res.worst()
    assert w.correct.tolist() == [True, False, False]
    assert w.loss.tolist() == [1.0, 2.0, 3.0]


def test_stacked_weight_settings_equal_one_setting_at_a_time(trained_digits_model, digits_test):
    """robust_losses_at == moving the weights by each offset and calling robust_losses (PGD and
    APGD-CE, odd batch sizes so batches split mid-way)."""
    from flatcli import weights
    from flatcli.attacks.apgd import APGDCE

    x, y = digits_test[0][:20], digits_test[1][:20]
    model = trained_digits_model
    w = weights.weights_of(model)
    gen = torch.Generator().manual_seed(3)
    offsets = [weights.random_offset(w, xi, gen) for xi in (0.0, 0.2, 0.5)]
    attacks = [_attack(), APGDCE("apgd-ce", "linf", 0.1, steps=5)]
    stacked = engine.robust_losses_at(model, offsets, x, y, attacks, (0, "r", 2), batch_size=7)
    for offset, got in zip(offsets, stacked, strict=True):
        with weights.perturbed(model, offset):
            ref = engine.robust_losses(model, x, y, attacks, (0, "r", 2), batch_size=7)
        torch.testing.assert_close(got.clean_loss, ref.clean_loss, atol=1e-5, rtol=1e-5)
        for name in ("pgd5x2", "apgd-ce"):
            torch.testing.assert_close(
                got.robust[name].loss, ref.robust[name].loss, atol=1e-4, rtol=1e-4
            )
            # Stacked sums round differently from one setting's: at most one of 20 may flip.
            assert_flips(got.robust[name].correct, ref.robust[name].correct, 1, name)
    assert not torch.equal(stacked[0].robust["pgd5x2"].loss, stacked[2].robust["pgd5x2"].loss)


def test_stacking_refuses_attacks_on_a_subset(trained_digits_model, digits_test):
    import pytest

    from flatcli import weights
    from flatcli.attacks.presets import build_attack
    from flatcli.errors import UsageError

    x, y = digits_test[0][:4], digits_test[1][:4]
    w = weights.weights_of(trained_digits_model)
    attack = build_attack("aa-lite", "linf", 0.1)
    with pytest.raises(UsageError, match="subset"):
        engine.robust_losses_at(trained_digits_model, [weights.zeros_like(w)] * 2, x, y, [attack])


def test_error_rate_is_the_exact_fraction_of_the_counts():
    """28 wrong of 100 is written as 0.28, not 1 - float32(0.72) = 0.2799999713897705."""
    correct = torch.tensor([True] * 72 + [False] * 28)
    assert engine.error_rate(correct) == 0.28
    assert engine.error_rate(torch.ones(3, dtype=torch.bool)) == 0.0
