"""Estimator versions: every measure's version, bumped whenever a change alters its numbers.

Each row carries the version of the estimator behind it (`estimator_version`); a rerun
recomputes the parts whose rows are older than the code, so numbers of earlier code are never
shown as current. `tests/test_versions.py` pins every version to a fingerprint of the measure's
output on a fixed tiny case: a numeric change without a bump fails there and prints the new pin.
A measure built on another (flatness on PGD) changes its own fingerprint when the one below
changes, so the pin asks for both bumps. Torch-free.
"""

from __future__ import annotations

import re

VERSIONS: dict[str, int] = {
    "attack:pgd": 2,  # every pgd<S>x<R> preset
    "attack:apgd-ce": 1,
    "attack:apgd-t": 1,
    "attack:aa-lite": 1,
    "attack:aa-standard": 1,  # the official AutoAttack's numbers, through flatcli's adapter
    "attack:worst": 2,  # the per-example worst case over several attacks
    "flatness:average": 2,  # average and clean-average
    "flatness:worst:paper": 2,  # worst and clean-worst, the paper's estimator
    "flatness:worst:per-batch": 2,
    "hessian:flatcli": 2,  # hessian and clean-hessian
    "hessian:paper": 1,  # paper-hessian
    "landscape": 2,
}
_PGD = re.compile(r"^pgd\d+(?:x\d+)?$")


def estimator(table: str, row: dict) -> str | None:
    """The VERSIONS key of the estimator behind a row of `table` (None for tables that hold
    no estimate: train_log, report)."""
    if table == "attack":
        name = str(row.get("attack"))
        return "attack:pgd" if _PGD.match(name) else f"attack:{name}"
    if table == "flatness":
        kind = row.get("estimator")
        if "hessian" in str(row.get("measure")):
            return f"hessian:{kind}"
        return "flatness:average" if kind == "mean" else f"flatness:worst:{kind}"
    if table == "landscape":
        return "landscape"
    return None


def row_version(table: str, row: dict) -> int | None:
    """The current version of the estimator behind `row`; `KeyError` names an estimator that has
    no version (a new measure must get one)."""
    key = estimator(table, row)
    if key is None:
        return None
    if key not in VERSIONS:
        raise KeyError(f"estimator {key!r} has no version in flatcli.measures.versions.VERSIONS")
    return VERSIONS[key]


def outdated(table: str, rows: list[dict]) -> bool:
    """Whether any of a part's rows was computed by an older version of its estimator (rows
    written before versions were recorded count as older)."""
    for row in rows:
        current = row_version(table, row)
        stored = row.get("estimator_version")
        if current is not None and (stored is None or stored < current):
            return True
    return False
