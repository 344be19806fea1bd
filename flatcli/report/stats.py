"""Rank and linear correlations of sharpness with robust generalization, and Holm's adjustment.
p-values only across runs, one checkpoint per run (why: docs/method.md, "Report statistics" and
"Implementation notes")."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from flatcli import tables
from flatcli.report.columns import SHARPNESS_COLUMNS, TARGETS
from flatcli.report.join import select

COEFFICIENTS = ("kendall", "spearman", "pearson")
MIN_PAIRS = 3


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values; None stays None.

    Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j)) with m the number of
    p-values given, so rejecting where the adjusted p < alpha controls the family-wise error.
    """
    given = [(p, i) for i, p in enumerate(pvalues) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    running, m = 0.0, len(given)
    for rank, (p, i) in enumerate(sorted(given)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def correlation(x: Sequence[float], y: Sequence[float], p_values: bool = True) -> dict:
    """Kendall tau-b, Spearman rho, Pearson r (scipy.stats) over the pairs where both are finite,
    with two-sided p-values unless `p_values` is False; null below 3 pairs or for constant
    input."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"n": int(ok.sum())}
    names = {"kendall": stats.kendalltau, "spearman": stats.spearmanr, "pearson": stats.pearsonr}
    for name, fn in names.items():
        value = p = None
        if len(x) >= MIN_PAIRS and np.ptp(x) > 0 and np.ptp(y) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = fn(x, y)
            value = float(result[0])
            p = float(result[1]) if p_values else None
        out[name], out[f"{name}_p"] = value, p
    return out


def correlations(df: pd.DataFrame, how: str, across: bool = True) -> pd.DataFrame:
    """Every (sharpness column present) x (target present) with at least 3 pairs: across runs at
    `how` (p-values, Holm-adjusted per coefficient over the rows tested; coefficient only for
    `all`), unless `across` is False, and across the epochs within each run (coefficient only).
    """
    measures = [c for c in SHARPNESS_COLUMNS if df[c].notna().any()]
    targets = [c for c in TARGETS if df[c].notna().any()]
    chosen = select(df, how)
    scope = "across runs" if how != "all" else "all checkpoints"
    rows, within = [], []
    for measure in measures:
        for target in targets:
            base = {"measure": measure, "target": target}
            if across:
                stats_ = correlation(chosen[measure], chosen[target], p_values=how != "all")
                rows.append({"scope": scope, "run": None, "select": how, **base, **stats_})
            for run, group in df.groupby("run"):
                stats_ = correlation(group[measure], group[target], p_values=False)
                within.append(
                    {"scope": "within run", "run": run, "select": "all", **base, **stats_}
                )
    for name in COEFFICIENTS:
        adjusted = holm([r[f"{name}_p"] for r in rows])
        tested = sum(p is not None for p in adjusted)
        for row, p in zip(rows, adjusted, strict=True):
            row[f"{name}_p_holm"] = p
            row["tests"] = tested if tested else None
    kept = [r for r in rows + within if r["n"] >= MIN_PAIRS]
    return tables.to_arrow(kept, "correlations").to_pandas()
