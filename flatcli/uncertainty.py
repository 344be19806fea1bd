"""Standard errors of the numbers flatcli reports.

Every estimate is a mean over a finite sample (examples, weight offsets, restarts, seeds), and
these say how far it could move on another.

- An error rate over n examples: the binomial SE sqrt(p (1 - p) / n).
- A mean loss over n examples: the sample standard deviation (ddof 1) over sqrt(n).
- Average-case flatness, a mean over S offsets of a mean over N examples minus the loss at w:
  the offsets' share, std over offsets of each offset's flatness / sqrt(S), and the examples'
  share, std over examples of each example's flatness (its mean over offsets minus its loss at w)
  / sqrt(N), added in quadrature. Each share counts the offset-by-example interaction once more
  than a crossed-design estimate would, so the sum errs on the large side. With few offsets the
  offsets' share dominates; with few examples, the examples' share does.
- Worst-case flatness, a maximum over restarts (not a mean): the spread, the standard deviation
  over restarts of each restart's value (ddof 1). It says how much one attempt varies, so
  how far the maximum of a few is from settled.
- Repeats that differ only in seed: their mean, with the SE across seeds, std / sqrt(k).

Pure functions of floats and tensors; None where an SE cannot be computed (fewer than two
values, or a non-finite one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def binomial_se(rate: float | None, n: int | None) -> float | None:
    """sqrt(p (1 - p) / n): the SE of an error rate p over n independent examples."""
    if rate is None or not n or not _finite(rate) or not 0 <= rate <= 1:
        return None
    return math.sqrt(rate * (1 - rate) / n)


def mean_se(values: Sequence[float]) -> float | None:
    """std (ddof 1) / sqrt(n) of `values`; None below 2 values or with a non-finite one."""
    values = [float(v) for v in values]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return statistics.stdev(values) / math.sqrt(len(values))


def spread(values: Sequence[float]) -> float | None:
    """std (ddof 1) of `values`: the spread of single attempts; None below 2 or non-finite."""
    values = [float(v) for v in values]
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return None
    return statistics.stdev(values)


def error_se(correct) -> float | None:
    """The binomial SE of the error rate of a bool tensor `correct` [N] (True: not broken)."""
    n = correct.numel()
    return binomial_se(int((~correct).sum()) / n, n) if n else None


def loss_se(loss) -> float | None:
    """The SE over examples of the mean of a per-example loss tensor [N]."""
    return tensor_se(loss)


def tensor_se(values) -> float | None:
    """std (ddof 1) / sqrt(N) of a float tensor [N] (float64 on the host); None below 2 values
    or with a non-finite one."""
    t = values.detach().double().cpu().flatten()
    if t.numel() < 2 or not bool(t.isfinite().all()):
        return None
    return float(t.std(unbiased=True)) / math.sqrt(t.numel())


def average_flatness_se(per_sample: Sequence[float], per_example) -> float | None:
    """The SE of average-case flatness: the offsets' share (`mean_se(per_sample)`, each
    offset's flatness) and the examples' share (`tensor_se(per_example)`, each example's mean
    perturbed loss minus its loss at w, a tensor [N]) in quadrature. With one offset the
    offsets' share is unknown: None."""
    offsets = mean_se(per_sample)
    if offsets is None:
        return None
    examples = None if per_example is None else tensor_se(per_example)
    return offsets if examples is None else math.hypot(offsets, examples)


def combined(*ses: float | None) -> float | None:
    """Independent SEs in quadrature (missing ones skipped); None when all are missing."""
    given = [s for s in ses if s is not None and _finite(s)]
    return math.sqrt(sum(s * s for s in given)) if given else None


def difference_se(se: float | None, other_se: float | None) -> float | None:
    """The SE of a difference of two independent estimates; None unless both are known."""
    if se is None or other_se is None or not (_finite(se) and _finite(other_se)):
        return None
    return math.hypot(se, other_se)


def z_one_sided_p(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))
