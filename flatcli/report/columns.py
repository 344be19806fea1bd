"""The report's vocabulary: which columns are measures and targets, their labels, and the one
test for a missing value."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from flatcli.config.commands import AVERAGE_XI, WORST_XI

SELECTIONS = ("last", "best", "all")
PLOTS = "report_plots"
ALPHA = 0.05  # significance level of every test the report states, after Holm's adjustment

# flatness measure -> (report column, the paper's radius)
MEASURES = {
    "average": ("flatness_average", AVERAGE_XI),
    "worst": ("flatness_worst", WORST_XI),
    "clean-average": ("flatness_clean_average", AVERAGE_XI),
    "clean-worst": ("flatness_clean_worst", WORST_XI),
}
HESSIAN = {"lambda_max": "lambda_max", "hessian_trace": "hessian_trace"}
FLATNESS_COLUMNS = [c for c, _ in MEASURES.values()] + list(HESSIAN.values())
FLATNESS_LABELS = {
    "flatness_average": "average-case flatness",
    "flatness_worst": "worst-case flatness",
    "flatness_clean_average": "average-case flatness of the clean loss",
    "flatness_clean_worst": "worst-case flatness of the clean loss",
    "lambda_max": "Hessian lambda_max",
    "hessian_trace": "Hessian trace",
    "landscape_random_rise": "random-direction landscape rise",
    "landscape_adversarial_rise": "adversarial-direction landscape rise",
}
SHORT_LABELS = {
    "flatness_average": "avg flatness",
    "flatness_worst": "worst flatness",
    "flatness_clean_average": "clean avg flatness",
    "flatness_clean_worst": "clean worst flatness",
    "lambda_max": "lambda_max",
    "hessian_trace": "Hessian trace",
    "landscape_random_rise": "random landscape rise",
    "landscape_adversarial_rise": "adversarial landscape rise",
}
SHARPNESS_COLUMNS = FLATNESS_COLUMNS + ["landscape_random_rise", "landscape_adversarial_rise"]
TARGETS = {
    "test_robust_err": "test robust error",
    "test_robust_loss": "test robust loss",
    "rce_gap": "robust loss gap (test - train)",
    "rerr_gap": "robust error gap (test - train)",
}
SUMMARY = [
    "run",
    "method",
    "regularizers",
    "epoch",
    "test_robust_err",
    "test_robust_loss",
    "rce_gap",
    "flatness_average",
    "flatness_worst",
]


# columns that define the threat model: runs that differ here are not comparable at all
THREAT = ["dataset", "eps", "norm"]
# how a setting's column is named in the report's sentences
SETTING_NAMES = {
    "n_examples": "examples",
    "weight_lr": "weight lr",
    "direction_kind": "kind",
    "step_size": "step size",
    "estimator_version": "estimator version",
    "conv_scale": "conv scale",
}


def show(value) -> str:
    """A setting as the report prints it: floats to 4 significant digits, missing as n/a."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def is_missing(value) -> bool:
    """None, pd.NA or NaN: a value the tables do not have."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def plain(value):
    """A table cell as a plain Python value (None when missing)."""
    if is_missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (None for missing), ready for `tables.to_arrow` or JSON."""
    return [{k: plain(v) for k, v in r.items()} for r in df.astype(object).to_dict("records")]
