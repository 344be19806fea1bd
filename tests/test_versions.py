"""Every estimator version is pinned to a fingerprint of its measure on a fixed tiny case, so a
change of the numbers without a version bump fails here, printing the new pin; a bumped version
recomputes the rows of the older one."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from flatcli import api
from flatcli.attacks.presets import PRESETS
from flatcli.cli import main
from flatcli.config.registries import MEASURES, WORST_ESTIMATORS
from flatcli.measures import versions

ROOT = Path(__file__).resolve().parent.parent
# The fixed case: a committed checkpoint (regenerating sample_checkpoints changes every
# fingerprint at once: repin then, without bumping any version).
CASE = ROOT / "sample_checkpoints" / "at" / "epoch_0025.safetensors"
EXAMPLES = dict(dataset="digits", n_examples=24, eps=0.1, seed=0, device="cpu", compile="off")
DIGITS = 4  # significant digits of the fingerprint

# measure -> (version, fingerprint): what the measure gave on CASE when it had that version
PINS: dict[str, tuple[int, list]] = {
    "attack:pgd": (2, [0.0, 0.03299, 0.04167, 0.1533]),
    "attack:apgd-ce": (1, [0.0, 0.03299, 0.08333, 0.2082]),
    "attack:apgd-t": (1, [0.0, 0.03299, 0.08333, None]),
    "attack:aa-lite": (1, [0.0, 0.03299, 0.08333, 0.2087]),
    "attack:aa-standard": (1, [0.0, 0.03299, 0.08333, None]),
    "attack:worst": (2, [0.08333, 0.2082]),
    "flatness:average": (2, [0.1104, 0.7481, 0.6377, None, None]),
    "flatness:worst:paper": (2, [0.09482, 0.2728, 0.178, None, None]),
    "flatness:worst:per-batch": (2, [0.09482, 0.4753, 0.3805, None, None]),
    "hessian:flatcli": (2, [0.09482, None, None, 19.39, 105.5]),
    "hessian:paper": (1, [0.08424, None, None, 26.41, 179.4]),
    "landscape": (2, [0.3122, 0.6862, 0.1667, 0.03299, 0.09482, 0.0, 0.05887, 0.2954, 0.08333]),
}


def _numbers(frame: pd.DataFrame, columns: list[str]) -> list:
    values = frame[columns].to_numpy().ravel().tolist()
    return [None if v is None or not math.isfinite(v) else float(f"{v:.{DIGITS}g}") for v in values]


def _attack(name: str) -> list:
    rows = api.attack(CASE, attacks=name, **EXAMPLES)
    row = rows[rows.attack == name]
    return _numbers(row, ["clean_err", "clean_loss", "robust_err", "robust_loss"])


def _worst() -> list:
    rows = api.attack(CASE, attacks="pgd3x2,apgd-ce", **EXAMPLES)
    return _numbers(rows[rows.attack == "worst"], ["robust_err", "robust_loss"])


def _flatness(measure: str, **options) -> list:
    rows = api.flatness(CASE, measures=measure, **{**EXAMPLES, **options})
    return _numbers(rows, ["robust_loss", "perturbed_robust_loss", "flatness", "lambda_max",
                           "hessian_trace"])


def _landscape() -> list:
    rows = api.landscape(CASE, attack="pgd3", steps=3, n_directions=1, **EXAMPLES)
    return _numbers(rows.sort_values("alpha"), ["clean_loss", "robust_loss", "robust_err"])


WORST = dict(xi=0.01, iterations=3, restarts=2, attack="pgd3", weight_batch=8)
CASES = {
    "attack:pgd": lambda: _attack("pgd5x2"),
    "attack:apgd-ce": lambda: _attack("apgd-ce"),
    "attack:apgd-t": lambda: _attack("apgd-t"),
    "attack:aa-lite": lambda: _attack("aa-lite"),
    "attack:aa-standard": lambda: _attack("aa-standard"),
    "attack:worst": _worst,
    "flatness:average": lambda: _flatness("average", xi=0.5, samples=2, attack="pgd3x2"),
    "flatness:worst:paper": lambda: _flatness("worst", worst_estimator="paper", **WORST),
    "flatness:worst:per-batch": lambda: _flatness("worst", worst_estimator="per-batch", **WORST),
    "hessian:flatcli": lambda: _flatness("hessian", attack="pgd3", iterations=4, samples=2),
    "hessian:paper": lambda: _flatness("paper-hessian", iterations=4, samples=2),
    "landscape": _landscape,
}
SLOW = {"attack:apgd-t", "attack:aa-lite", "attack:aa-standard"}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums wherever the test runs
    yield
    torch.set_num_threads(threads)


def pin_failure(key: str, version: int, numbers: list) -> str | None:
    """Why `numbers` of measure `key` at `version` break its pin (None when they keep it)."""
    pinned_version, pinned = PINS.get(key, (None, None))
    if pinned_version == version and pinned == numbers:
        return None
    if pinned_version == version:
        why = (f"{key}: its numbers changed without a version bump; bump "
               f"flatcli.measures.versions.VERSIONS[{key!r}] to {version + 1} and pin")
        version += 1
    else:
        why = f"{key}: version {version}, pinned {pinned_version}; pin"
    return f"{why} in tests/test_versions.py PINS:\n    {key!r}: ({version}, {numbers!r}),"


@pytest.mark.parametrize(
    "key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in CASES]
)
def test_every_version_is_pinned_to_its_numbers(key):
    if key == "attack:aa-standard":
        pytest.importorskip("pyautoattack")
    failure = pin_failure(key, versions.VERSIONS[key], CASES[key]())
    assert failure is None, failure


def test_every_estimator_has_a_version_a_pin_and_a_case():
    assert set(versions.VERSIONS) == set(PINS) == set(CASES)
    assert all(isinstance(v, int) and v >= 1 for v in versions.VERSIONS.values())
    for name in PRESETS:
        assert versions.row_version("attack", {"attack": name}) >= 1
    assert versions.estimator("attack", {"attack": "pgd7x3"}) == "attack:pgd"
    for measure, entry in MEASURES.items():
        estimators = {"average": ["mean"], "worst": list(WORST_ESTIMATORS),
                      "hessian": ["paper" if measure == "paper-hessian" else "flatcli"]}
        for estimator in estimators[entry.family]:
            assert versions.row_version("flatness", {"measure": measure, "estimator": estimator})
    with pytest.raises(KeyError, match="no version"):
        versions.row_version("attack", {"attack": "new-attack"})


def test_an_unbumped_numeric_change_fails_its_pin_and_prints_the_new_one(monkeypatch):
    numbers = CASES["attack:pgd"]()
    assert pin_failure("attack:pgd", versions.VERSIONS["attack:pgd"], numbers) is None
    from flatcli import data

    load = data.load_split
    monkeypatch.setattr(data, "load_split", lambda *a, **k: _brighter(*load(*a, **k)))
    changed = CASES["attack:pgd"]()
    assert changed != numbers
    failure = pin_failure("attack:pgd", versions.VERSIONS["attack:pgd"], changed)
    version = versions.VERSIONS["attack:pgd"]
    assert f"bump flatcli.measures.versions.VERSIONS['attack:pgd'] to {version + 1}" in failure
    assert f"'attack:pgd': ({version + 1}, {changed!r})," in failure


def _brighter(x, y):
    """A stand-in for a change of an estimator: other inputs, other numbers."""
    return (x * 0.9 + 0.05, y)


def test_a_bumped_version_recomputes_older_rows_and_says_so(tmp_path, capsys, monkeypatch):
    run = tmp_path / "at"
    run.mkdir()
    shutil.copy(CASE, run / CASE.name)
    shutil.copy(CASE.with_suffix(".json"), run / CASE.with_suffix(".json").name)
    out = tmp_path / "out"
    args = ["attack", str(run), "--out", str(out), "--attacks", "pgd2,apgd-ce",
            "--n-examples", "16", "-f", "json"]  # fmt: skip

    def sweep() -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        return exit_info.value.code, capsys.readouterr().err

    assert sweep()[0] == 0
    first = pd.read_parquet(out / "attack")
    current = {"pgd2": versions.VERSIONS["attack:pgd"],
               "apgd-ce": versions.VERSIONS["attack:apgd-ce"],
               "worst": versions.VERSIONS["attack:worst"]}
    assert first.set_index("attack").estimator_version.to_dict() == current
    code, err = sweep()
    assert code == 0 and "0 done, 1 skipped" in err
    monkeypatch.setitem(versions.VERSIONS, "attack:apgd-ce", current["apgd-ce"] + 1)
    code, err = sweep()
    assert code == 0 and "1 done (1 recomputed: older estimator version), 0 skipped" in err
    again = pd.read_parquet(out / "attack").set_index("attack")
    assert again.estimator_version.to_dict() == {**current, "apgd-ce": current["apgd-ce"] + 1}
    assert len(list((out / "attack").glob("*.parquet"))) == 1
    code, err = sweep()
    assert code == 0 and "0 done, 1 skipped" in err


def test_attacks_of_different_versions_on_one_checkpoint_are_one_setting():
    """Each attack has its own version: PGD at one, APGD at another is one evaluation setting
    (the strongest attack is taken over both), while one attack at two versions is two."""
    from flatcli import tables
    from flatcli.report import repeats

    base = dict(run="at", epoch=25, split="test", dataset="digits", eps=0.15, norm="linf",
                n_examples=50, dtype="float32", seed=0, config_hash="c" * 16,
                created_at="2026-01-01T00:00:00+00:00", robust_err=0.3)
    rows = [
        {**base, "attack": "pgd20x10", "steps": 20, "restarts": 10, "estimator_version": 2},
        {**base, "attack": "aa-lite", "steps": 100, "restarts": 1, "estimator_version": 1},
    ]
    frame = tables.to_arrow(rows, "attack").to_pandas()
    notes: list[str] = []
    kept = repeats.attack_rows(frame, "test", notes)
    assert sorted(kept.attack) == ["aa-lite", "pgd20x10"] and notes == []
    older = {**rows[0], "estimator_version": 1, "epoch": 24}
    newer = [{**rows[0], "epoch": e} for e in (25, 26, 27)]
    frame = tables.to_arrow([older, *newer, {**older, "epoch": 25}], "attack").to_pandas()
    kept = repeats.attack_rows(frame, "test", notes)
    assert set(kept[kept.epoch == 25].estimator_version) == {2}
    assert any("estimator version 1 (used: 2)" in n for n in notes)
