"""Learning-rate schedules as pure functions of the training step: no state, so a resumed run
sees exactly the rates of an uninterrupted one (docs/method.md, training)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flatcli.config import registries
from flatcli.errors import UsageError

SCHEDULES = tuple(registries.SCHEDULES)


def resolve_milestones(milestones: Sequence[float], epochs: int) -> tuple[int, ...]:
    """Milestones as epochs: values >= 1 are epochs, values in (0, 1) fractions of `epochs`."""
    values = [float(m) for m in milestones]
    if any(not math.isfinite(m) or m <= 0 for m in values):
        raise UsageError(f"--milestones must be positive epochs or fractions, got {values}")
    fractions = [m < 1 for m in values]
    if any(fractions) and not all(fractions):
        raise UsageError(
            f"--milestones mixes fractions (< 1) and epochs (>= 1): {values}; use one kind"
        )
    if all(fractions):
        out = [int(round(m * epochs)) for m in values]
    else:
        if any(m != int(m) for m in values):
            raise UsageError(f"--milestones given as epochs must be integers, got {values}")
        out = [int(m) for m in values]
    return tuple(sorted(out))


def learning_rate(
    schedule: str,
    base_lr: float,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    epochs: int,
    milestones: Sequence[int] = (),
    factor: float = 0.1,
    peak: float = 0.4,
) -> float:
    """The learning rate of batch `step` (0-based) of `epoch` (0-based).

    - `multistep`: `lr * factor**k` after k milestones (epochs; fractions are resolved to epochs
      by `resolve_milestones`); constant within an epoch, as `MultiStepLR` stepped once per
      epoch. Milestone m means: epochs m+1, m+2, ... (1-based) use the decayed rate.
    - `cosine`: `lr * (1 + cos(pi * t / T)) / 2`, per step t of T.
    - `cyclic`: one triangle (Smith; Rice et al. 2020): 0 -> lr linearly until `peak` of
      training, then linearly back to 0 at the end.
    """
    if schedule == "multistep":
        return base_lr * factor ** sum(1 for m in milestones if m <= epoch)
    total = max(1, epochs * steps_per_epoch)
    t = epoch * steps_per_epoch + step
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t / total))
    if schedule == "cyclic":
        top, t = peak * total, t + 1  # the rate at the end of the step, as Rice et al.
        if t < top:
            return base_lr * t / top
        return base_lr * max(0.0, (total - t) / max(1e-12, total - top))
    raise UsageError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
