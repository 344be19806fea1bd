"""APGD-CE, APGD-T, Ensemble and the official-AutoAttack adapter.

Unit tests use few examples and iterations; `reference` tests compare robust errors with the
official implementation (`pyautoattack`) on the adversarially trained digits model at eps 0.1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest
import torch
from conftest import assert_flips
from torch import nn

from flatcli.attacks.apgd import APGDCE, APGDT, Ensemble, checkpoints, dlr_targeted
from flatcli.attacks.base import AttackOutcome, ce_per_example, slice_starts
from flatcli.attacks.pgd import PGD
from flatcli.errors import UsageError

EPS = {"linf": 0.1, "l2": 0.5}


@pytest.fixture(autouse=True)
def _one_thread():
    """These batches are tiny; one thread is as fast and does not collapse when the machine is
    shared (two OpenMP threads on a loaded 2-core machine run up to 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _subset(digits_test, n):
    x, y = digits_test
    return x[:n], y[:n]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _error(outcome: AttackOutcome) -> float:
    return 1.0 - outcome.correct.float().mean().item()


class Recorder(nn.Module):
    """Wraps a model and keeps every input it sees."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


# ---------------------------------------------------------------- unit tests


def test_checkpoint_schedule_matches_the_paper():
    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]
    assert all(0 < a < b for a, b in zip(checkpoints(20), checkpoints(20)[1:], strict=False))


def test_dlr_targeted_loss():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) with y = 0, t = 1
    expected = -(5.0 - 3.0) / (5.0 - 0.5 * (1.0 + 0.0))
    got = dlr_targeted(logits, torch.tensor([0]), torch.tensor([1]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_invalid_configurations_are_usage_errors():
    with pytest.raises(UsageError):
        APGDCE("x", "l1", 0.1)
    with pytest.raises(UsageError):
        APGDT("x", "linf", 0.1, steps=0)
    with pytest.raises(UsageError):
        Ensemble("x", ())


@pytest.mark.parametrize("cls", [APGDCE, APGDT])
def test_outcome_shapes_and_starts(cls, trained_digits_model, digits_test):
    x, y = _subset(digits_test, 40)
    attack = cls("a", "linf", 0.1, steps=5, restarts=2)
    starts = attack.draw_starts(x, _gen())
    assert starts.shape == (2, *x.shape)
    out = attack(trained_digits_model, x, y, starts)
    assert out.loss.shape == (40,) and out.loss.dtype == torch.float32
    assert out.correct.shape == (40,) and out.correct.dtype == torch.bool
    assert attack.estimates_loss == (cls is APGDCE)
    assert torch.isfinite(out.loss).all() if cls is APGDCE else torch.isnan(out.loss).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("cls", [APGDCE, APGDT])
def test_every_point_tried_lies_in_ball_and_box(cls, norm, trained_digits_model, digits_test):
    x, y = _subset(digits_test, 30)
    eps = EPS[norm]
    attack = cls("a", norm, eps, steps=12, restarts=2)
    recorder = Recorder(trained_digits_model)
    attack(recorder, x, y, attack.draw_starts(x, _gen()))
    seen = torch.cat(recorder.inputs)
    assert len(seen) > len(x)
    assert seen.min() >= 0 and seen.max() <= 1
    # Digits are far apart, so the nearest clean example is the attacked one (rows get compacted
    # in targeted runs, so their order is not known).
    diff = (seen[:, None] - x[None]).flatten(2)
    dist = diff.abs().amax(2) if norm == "linf" else diff.norm(dim=2)
    assert dist.min(1).values.max() <= eps * (1 + 1e-5)


def test_apgd_ce_is_at_least_as_strong_as_clean_and_pgd(trained_digits_model, digits_test):
    x, y = _subset(digits_test, 150)
    model = trained_digits_model
    with torch.no_grad():
        logits = model(x)
    clean_loss, clean_correct = ce_per_example(logits, y), logits.argmax(1) == y
    apgd = APGDCE("apgd-ce", "linf", 0.1, steps=50)
    out = apgd(model, x, y, apgd.draw_starts(x, _gen()))
    assert (out.loss >= clean_loss - 1e-6).all()
    assert not (out.correct & ~clean_correct).any()
    assert _error(out) > 1.0 - clean_correct.float().mean().item()  # the model is not that robust
    pgd = PGD("pgd20", "linf", 0.1, steps=20, step_size=0.025)
    ref = pgd(model, x, y, pgd.draw_starts(x, _gen()))
    assert _error(out) >= _error(ref) - 0.01
    assert out.loss.mean() >= ref.loss.mean() - 0.01


def test_apgd_l2_breaks_more_with_larger_eps(trained_digits_model, digits_test):
    x, y = _subset(digits_test, 100)
    errors = []
    for eps in (0.25, 1.0):
        attack = APGDCE("apgd-ce", "l2", eps, steps=20)
        errors.append(_error(attack(trained_digits_model, x, y, attack.draw_starts(x, _gen()))))
    assert errors[1] > errors[0]


def test_results_do_not_depend_on_the_batch_split(trained_digits_model, digits_test):
    x, y = _subset(digits_test, 60)
    attack = APGDCE("apgd-ce", "linf", 0.1, steps=10)
    starts = attack.draw_starts(x, _gen())
    whole = attack(trained_digits_model, x, y, starts)
    parts = [
        attack(trained_digits_model, x[s], y[s], slice_starts(starts, s, x.device))
        for s in (slice(0, 25), slice(25, 60))
    ]
    loss = torch.cat([p.loss for p in parts])
    correct = torch.cat([p.correct for p in parts])
    assert torch.allclose(loss, whole.loss, rtol=1e-4, atol=1e-5)
    # Halves of the batch round APGD's sums differently: at most one of 60 may flip.
    assert_flips(correct, whole.correct, 1, "apgd-ce, split vs whole")


def test_apgd_t_attacks_only_correct_examples(trained_digits_model, digits_test):
    x, y = _subset(digits_test, 30)
    wrong_labels = (y + 1) % 10  # every example misclassified from the start
    attack = APGDT("apgd-t", "linf", 0.1, steps=10)
    recorder = Recorder(trained_digits_model)
    out = attack(recorder, x, wrong_labels, attack.draw_starts(x, _gen()))
    assert not out.correct.any()
    assert len(recorder.inputs) == 1  # the clean forward only


def test_apgd_t_needs_four_classes(digits_test):
    x, y = _subset(digits_test, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    attack = APGDT("apgd-t", "linf", 0.1, steps=2)
    with pytest.raises(UsageError):
        attack(model, x, y % 3, attack.draw_starts(x, _gen()))


@dataclass(frozen=True)
class FakeAttack:
    """Breaks the examples whose label is in `breaks`; records the labels it was called on."""

    name: str
    breaks: tuple[int, ...]
    loss_value: float | None
    steps: int = 7
    restarts: int = 3
    calls: list = field(default_factory=list, compare=False)

    @property
    def estimates_loss(self) -> bool:
        return self.loss_value is not None

    def draw_starts(self, x, generator):
        return torch.rand((self.restarts, *x.shape), generator=generator)

    def __call__(self, model, x, y, starts):
        self.calls.append((y.clone(), None if starts is None else starts.clone()))
        broken = torch.isin(y, torch.tensor(self.breaks))
        value = torch.nan if self.loss_value is None else self.loss_value
        return AttackOutcome(loss=torch.full((len(y),), value) + y, correct=~broken)


def test_ensemble_semantics():
    x = torch.zeros(6, 1, 2, 2)
    y = torch.arange(6)
    first = FakeAttack("first", breaks=(0, 1), loss_value=1.0)
    second = FakeAttack("second", breaks=(2,), loss_value=None, restarts=1)
    third = FakeAttack("third", breaks=(3,), loss_value=10.0)
    ens = Ensemble("ens", (first, second, third))
    assert (ens.steps, ens.restarts, ens.estimates_loss) == (7, 3, True)
    starts = ens.draw_starts(x, _gen())
    assert [s.shape[0] for s in starts] == [3, 1, 3]
    out = ens(None, x, y, starts)
    assert out.correct.tolist() == [False, False, False, False, True, True]
    assert first.calls[0][0].tolist() == [0, 1, 2, 3, 4, 5]
    assert second.calls[0][0].tolist() == [2, 3, 4, 5]
    assert third.calls[0][0].tolist() == [3, 4, 5]
    assert torch.equal(third.calls[0][1], starts[2][:, 3:])  # starts follow their examples
    # max over loss-estimating members where they ran; untouched examples keep the first's loss
    assert out.loss.tolist() == [1.0, 2.0, 3.0, 13.0, 14.0, 15.0]
    only_second = Ensemble("n", (second,))
    assert not only_second.estimates_loss
    assert torch.isnan(only_second(None, x, y, None).loss).all()


def test_ensemble_of_real_attacks(trained_digits_model, digits_test):
    x, y = _subset(digits_test, 40)
    ce = APGDCE("apgd-ce", "linf", 0.1, steps=10)
    ens = Ensemble("apgd", (ce, APGDT("apgd-t", "linf", 0.1, steps=10, n_targets=2)))
    starts = ens.draw_starts(x, _gen())
    out = ens(trained_digits_model, x, y, starts)
    alone = ce(trained_digits_model, x, y, starts[0])
    assert torch.equal(out.loss, alone.loss)
    assert not (out.correct & ~alone.correct).any()


def test_official_adapter_is_a_usage_error_without_pyautoattack(monkeypatch):
    from flatcli.attacks import official

    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # import raises ImportError
    with pytest.raises(UsageError) as err:
        official.official_autoattack("aa-standard", "linf", 0.1, 0)
    assert "pip install 'flatcli[autoattack]'" in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- reference tests


def _official_error(model, attack, x, y) -> float:
    with torch.random.fork_rng(devices=[]):  # the official code reseeds the global generator
        adv = attack.perturb(x, y)
    with torch.no_grad():
        return (model(adv).argmax(1) != y).float().mean().item()


@pytest.mark.reference
@pytest.mark.parametrize("kind, norm", [("ce", "linf"), ("ce", "l2"), ("t", "linf")])
def test_apgd_matches_official(kind, norm, trained_digits_model, digits_test):
    pyautoattack = pytest.importorskip("pyautoattack")
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    x, y = _subset(digits_test, 200)
    model, eps = trained_digits_model, EPS[norm] if kind == "ce" else 0.1
    options = dict(n_iter=100, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, seed=0,
                   device="cpu")
    if kind == "ce":
        ours = APGDCE("apgd-ce", norm, eps)
        official = APGDAttack(model, loss="ce", **options)
    else:
        ours = APGDT("apgd-t", norm, eps, n_targets=3)
        official = APGDAttack_targeted(model, n_target_classes=3, **options)
    mine = _error(ours(model, x, y, ours.draw_starts(x, _gen())))
    theirs = _official_error(model, official, x, y)
    assert theirs > 0.1, pyautoattack.__version__  # a meaningful comparison
    assert mine >= theirs - 0.01, (mine, theirs)


@pytest.mark.reference
def test_official_autoattack_adapter(trained_digits_model, digits_test):
    pytest.importorskip("pyautoattack")
    from flatcli.attacks.official import official_autoattack

    x, y = _subset(digits_test, 30)
    model = trained_digits_model
    aa = official_autoattack("aa-standard", "linf", 0.1, seed=0)
    assert aa.draw_starts(x, _gen()) is None and not aa.estimates_loss
    state = torch.random.get_rng_state()
    out = aa(model, x, y, None)
    assert torch.equal(state, torch.random.get_rng_state())  # global generator untouched
    assert torch.isnan(out.loss).all() and out.correct.shape == (30,)
    assert not model.training
    ce = APGDCE("apgd-ce", "linf", 0.1)
    assert _error(out) >= _error(ce(model, x, y, ce.draw_starts(x, _gen()))) - 0.01
