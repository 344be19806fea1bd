"""The measures, one module each: attack (clean and robust error and loss), average and worst
(flatness of the robust loss, the worst case's estimators in worst_estimators), hessian
(curvature), landscape (the loss along weight directions); flatness composes average, worst and
hessian into one table; versions numbers each estimator. A measure registers its names beside
its implementation (`register`, as timm registers models), and each table its sweep
(`register_table`); looking one up imports the measure modules. The torch-free names and help
that --help lists (`flatcli.config.registries`) are checked against these entries by the tests.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

MODULES = ("attack", "average", "worst", "hessian", "flatness", "landscape")
_MEASURES: dict[str, Callable] = {}
_TABLES: dict[str, Table] = {}


def _checkpoints(config, refs):
    """The default work units: one per checkpoint."""
    return refs


@dataclass(frozen=True)
class Table:
    """How a table is measured: its config type, `resolve(config, refs)` (defaults filled, every
    option checked before work), `measure(config, device, on_batch, on_note)` (the sweep's
    `unit -> rows`), and `units(config, refs)` (the work units, default the checkpoints)."""

    name: str
    config_type: type
    resolve: Callable
    measure: Callable
    units: Callable = _checkpoints


def register(*names: str) -> Callable[[Callable], Callable]:
    """Decorator: the flatness measure(s) `names` are computed by the decorated function
    `(ctx, config, inputs) -> rows` (`measures.flatness.FlatnessInputs`)."""

    def decorate(function: Callable) -> Callable:
        for name in names:
            if name in _MEASURES:
                raise ValueError(f"measure {name!r} is registered twice")
            _MEASURES[name] = function
        return function

    return decorate


def register_table(name: str, config_type: type, resolve: Callable, measure: Callable,
                   units: Callable | None = None) -> None:  # fmt: skip
    """Register how the table `name` is measured (`Table`)."""
    _TABLES[name] = Table(name, config_type, resolve, measure, units or _checkpoints)


def _import_all() -> None:
    for module in MODULES:
        importlib.import_module(f"{__name__}.{module}")


def implementation(name: str) -> Callable:
    """The function registered for the flatness measure `name`."""
    _import_all()
    return _MEASURES[name]


def registered() -> dict[str, Callable]:
    """Every registered flatness measure: name -> its function."""
    _import_all()
    return dict(_MEASURES)


def table(name: str) -> Table:
    """How the table `name` (attack, flatness, landscape) is measured."""
    _import_all()
    return _TABLES[name]
