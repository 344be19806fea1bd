"""Threat models, the ascent loop and PGD: closed-form cases and a torchattacks cross-check."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from flatcli.attacks.pgd import PGD
from flatcli.attacks.presets import PRESETS, build_attack, preset
from flatcli.attacks.threat import L2Ball, LinfBall
from flatcli.errors import UsageError


def test_linf_projection_respects_ball_and_box():
    x = torch.rand(16, 1, 4, 4)
    delta = torch.randn_like(x)
    p = LinfBall(0.1).project(delta, x)
    assert p.abs().max() <= 0.1 + 1e-7
    assert (x + p).min() >= 0 and (x + p).max() <= 1


def test_l2_projection_and_random_start_stay_in_ball():
    x = torch.full((32, 3, 4, 4), 0.5)
    ball = L2Ball(0.3)
    p = ball.project(torch.randn_like(x), x)
    assert p.flatten(1).norm(dim=1).max() <= 0.3 + 1e-6
    s = ball.random_start(x, torch.Generator().manual_seed(0))
    norms = s.flatten(1).norm(dim=1)
    assert norms.max() <= 0.3 + 1e-6 and norms.min() > 0


def _binary_linear(d: int = 12) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    x = torch.full((8, 1, 1, d), 0.5)  # box [0,1] cannot bind for eps < 0.5
    y = torch.randint(0, 2, (8,))
    return model.eval(), x, y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_closed_form_worst_case_of_a_linear_model(norm):
    """For logits z = Wx + b with two classes, max CE over the ball lowers the margin by
    eps * ||w_y - w_other||_1 (L-inf) or eps * ||w_y - w_other||_2 (L2)."""
    model, x, y = _binary_linear()
    eps = 0.1
    w, b = model[1].weight.detach(), model[1].bias.detach()
    diff = w[y] - w[1 - y]  # [B, d]
    margin = (diff * x.flatten(1)).sum(1) + b[y] - b[1 - y]
    dual = diff.abs().sum(1) if norm == "linf" else diff.norm(dim=1)
    expected = nn.functional.softplus(-(margin - eps * dual))
    attack = PGD("pgd", norm, eps, steps=50, step_size=eps / 4, restarts=2)
    out = attack(model, x, y, attack.draw_starts(x, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(out.loss, expected, atol=1e-4, rtol=1e-4)


def test_pgd_restarts_take_the_worst_per_example(trained_digits_model, digits_test):
    x, y = digits_test[0][:100], digits_test[1][:100]
    one = PGD("p1", "linf", 0.1, 10, 0.025, restarts=1)
    many = PGD("p4", "linf", 0.1, 10, 0.025, restarts=4, restart_choice="loss")
    g = lambda: torch.Generator().manual_seed(3)
    out1 = one(trained_digits_model, x, y, one.draw_starts(x, g()))
    out4 = many(trained_digits_model, x, y, many.draw_starts(x, g()))  # restart 0 = out1's start
    assert torch.all(out4.loss >= out1.loss - 1e-6)
    assert torch.all(out4.correct <= out1.correct)


def test_pgd_restart_choice_by_wrong_class_probability_as_the_codes(
    trained_digits_model, digits_test
):
    """The paper's code's evaluation keeps, per example, the restart whose adversarial example
    has the largest wrong-class probability (common/eval/adversarial_evaluation.py: argmin of the
    per-attempt errors). Written out from one-restart runs of the same starts: each restart's
    kept point, its largest wrong-class softmax probability, the argmax, its loss."""
    x, y = digits_test[0][:100], digits_test[1][:100]
    many = PGD("p4", "linf", 0.1, 5, 0.025, restarts=4)
    assert many.restart_choice == "wrong-class"  # the default
    starts = many.draw_starts(x, torch.Generator().manual_seed(3))
    one = PGD("p1", "linf", 0.1, 5, 0.025, restarts=1)
    losses, probs = [], []
    for s in starts:
        out = one(trained_digits_model, x, y, s[None], keep_points=True)
        with torch.no_grad():
            p = torch.softmax(trained_digits_model(out.points), 1)
        p[torch.arange(len(y)), y] = -1.0
        losses.append(out.loss)
        probs.append(p.max(1).values)
    losses, probs = torch.stack(losses), torch.stack(probs)
    expected = losses.gather(0, probs.argmax(0)[None])[0]
    found = many(trained_digits_model, x, y, starts)
    assert torch.allclose(found.loss, expected, atol=1e-5)
    by_loss = dataclasses.replace(many, restart_choice="loss")(trained_digits_model, x, y, starts)
    assert torch.allclose(by_loss.loss, losses.max(0).values, atol=1e-5)
    assert (by_loss.loss > found.loss + 1e-4).any()  # the rules differ on this data
    assert torch.equal(by_loss.correct, found.correct)  # robust error does not depend on it


@pytest.mark.reference
def test_pgd_is_at_least_as_strong_as_torchattacks(trained_digits_model, digits_test):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits_test
    eps, alpha, steps = 0.1, 0.025, 20
    torch.manual_seed(0)
    adv = torchattacks.PGD(
        trained_digits_model, eps=eps, alpha=alpha, steps=steps, random_start=True
    )(x, y)
    with torch.no_grad():
        theirs = (trained_digits_model(adv).argmax(1) != y).float().mean().item()
    ours_attack = PGD("pgd20", "linf", eps, steps, alpha)
    ours = ours_attack(
        trained_digits_model, x, y, ours_attack.draw_starts(x, torch.Generator().manual_seed(0))
    )
    ours_err = 1 - ours.correct.float().mean().item()
    assert theirs > 0.05  # the comparison means something
    assert ours_err >= theirs - 0.01


def test_presets_and_generic_pgd_names():
    assert preset("pgd20x10").steps == 20 and preset("pgd20x10").restarts == 10
    p = preset("pgd50x3")
    assert (p.kind, p.steps, p.restarts) == ("pgd", 50, 3)
    a = build_attack("pgd20x10", "linf", 0.0314)
    assert math.isclose(a.step_size, 0.007)  # docs/method.md's step at its eps
    assert build_attack("pgd7", "linf", 0.1, step_size=0.01).step_size == 0.01
    with pytest.raises(UsageError):
        preset("fgsm-nope")
    assert {"pgd20x10", "pgd7", "pgd10", "apgd-ce", "apgd-t", "aa-lite", "aa-standard"} <= set(
        PRESETS
    )


def test_pgd_points_are_the_points_behind_its_loss(trained_digits_model, digits_test):
    """keep_points returns x + delta where the reported loss was reached: re-evaluating the model
    there gives the loss back, inside the ball; `final` reports the final iterate's loss, never
    above the best iterate's."""
    model = trained_digits_model
    x, y = digits_test[0][:64], digits_test[1][:64]
    # A step as large as eps makes the iterates oscillate: the final one is often not the best.
    attack = PGD("pgd5x3", "linf", 0.1, 5, 0.1, restarts=3, restart_choice="loss")
    starts = attack.draw_starts(x, torch.Generator().manual_seed(1))
    plain = attack(model, x, y, starts)
    best = attack(model, x, y, starts, keep_points=True)
    last = attack(model, x, y, starts, keep_points=True, final=True)
    torch.testing.assert_close(best.loss, plain.loss)
    assert plain.points is None and best.points.shape == x.shape
    with torch.no_grad():
        again = nn.functional.cross_entropy(model(best.points), y, reduction="none")
        again_last = nn.functional.cross_entropy(model(last.points), y, reduction="none")
    torch.testing.assert_close(again, best.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again_last, last.loss, atol=1e-5, rtol=1e-5)
    assert (last.loss <= best.loss + 1e-6).all() and (last.loss < best.loss - 1e-4).any()
    assert (best.points - x).abs().max() <= 0.1 + 1e-6
    assert best.points.min() >= 0 and best.points.max() <= 1


_SYNCS = ("item", "cpu", "tolist", "nonzero", "__bool__", "__float__", "__int__", "__index__")


def _host_syncs(monkeypatch, run) -> int:
    """How often `run()` reads a tensor back to the host (a device sync on CUDA)."""
    calls = []
    for name in _SYNCS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    try:
        run()
    finally:
        monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("kind", ["pgd", "apgd-ce", "apgd-t"])
def test_host_syncs_do_not_grow_with_the_steps(
    kind, monkeypatch, trained_digits_model, digits_test
):
    from flatcli.attacks.apgd import APGDCE, APGDT, checkpoints

    x, y = digits_test[0][:24], digits_test[1][:24]
    gen = torch.Generator().manual_seed(0)

    def attack(steps):
        if kind == "pgd":
            return PGD("pgd", "linf", 0.1, steps=steps, step_size=0.03, restarts=2)
        if kind == "apgd-ce":
            return APGDCE("apgd-ce", "linf", 0.1, steps=steps, restarts=2)
        return APGDT("apgd-t", "linf", 0.1, steps=steps, n_targets=3)

    def syncs(steps):
        a = attack(steps)
        starts = a.draw_starts(x, gen)
        return _host_syncs(monkeypatch, lambda: a(trained_digits_model, x, y, starts))

    few, many = syncs(5), syncs(60)
    if kind == "apgd-t":  # a subset per target class; the early-stop check at checkpoints
        bound = 3 * (1 + len(checkpoints(60)))
        assert few <= bound and many <= bound
    else:
        assert few == many == 0
