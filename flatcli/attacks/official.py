"""Adapter to the official AutoAttack (Croce & Hein 2020, `pyautoattack`) as an Attack: its own
seeding and starts, no printing; correctness per example, no loss estimate (NaN).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from flatcli.attacks.base import AttackOutcome
from flatcli.errors import UsageError
from flatcli.runtime import eager

_NORMS = {"linf": "Linf", "l2": "L2"}
_MISSING = "aa-standard needs the official AutoAttack: pip install 'flatcli[autoattack]'"


def _require_pyautoattack():
    try:
        import pyautoattack
    except ImportError as err:
        raise UsageError(_MISSING) from err
    return pyautoattack


@dataclass(frozen=True)
class OfficialAutoAttack:
    """The official AutoAttack (`version`, e.g. "standard": APGD-CE, APGD-T, FAB-T, Square)."""

    name: str
    norm: str
    eps: float
    seed: int = 0
    version: str = "standard"
    steps: int = 100
    restarts: int = 1
    estimates_loss: bool = field(default=False, init=False)
    keeps_rows: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.norm not in _NORMS:
            raise UsageError(f"AutoAttack supports the norms linf and l2, got {self.norm!r}")
        _require_pyautoattack()

    def draw_starts(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """AutoAttack draws its own starts from `seed`."""
        return None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, starts) -> AttackOutcome:
        pyautoattack = _require_pyautoattack()
        model = eager(model)  # its subsets change shape every step: compiled, each recompiles
        if len(y) == 0:
            empty = torch.empty(0, device=x.device)
            return AttackOutcome(loss=empty, correct=empty.bool())
        was_training = model.training
        model.eval()
        fork_devices = [x.device] if x.device.type == "cuda" else []
        try:
            with _silenced(), torch.random.fork_rng(devices=fork_devices):
                adversary = pyautoattack.AutoAttack(
                    model,
                    device=x.device,
                    eps=self.eps,
                    norm=_NORMS[self.norm],
                    seed=self.seed,
                    version=self.version,
                )
                adversary.verbose = False
                x_adv, _ = adversary.run_standard_evaluation(
                    x.detach(), y.detach(), batch_size=max(len(y), 1)
                )
            with torch.no_grad():
                correct = model(x_adv.to(x.device)).argmax(1) == y
        finally:
            model.train(was_training)
        return AttackOutcome(
            loss=torch.full((len(y),), torch.nan, device=x.device), correct=correct
        )


@contextlib.contextmanager
def _silenced():
    """No prints, log records or warnings from the official code (the core never prints).

    Its dynamic-defense check calls `sys.settrace(None)`; a tracer (coverage, debugger) is put back.
    """
    logger = logging.getLogger("auto-attack")
    disabled = logger.disabled
    tracer = sys.gettrace()
    logger.disabled = True
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled
        if tracer is not None and sys.gettrace() is None:
            sys.settrace(tracer)


def official_autoattack(name: str, norm: str, eps: float, seed: int = 0) -> OfficialAutoAttack:
    """The official AutoAttack ("standard"); UsageError now if `pyautoattack` is missing."""
    _require_pyautoattack()
    return OfficialAutoAttack(name=name, norm=norm, eps=eps, seed=seed)
