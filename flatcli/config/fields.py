"""Config fields that carry their own command-line option: help text, panel, parser and checks
sit next to the default in flatcli.config.commands (flatcli.training.defaults for train), and the
options every command has are declared once here. Torch- and typer-free: flatcli.cli.options
builds the Typer options from this metadata, and the CLI and flatcli.api both build configs with
`make`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from enum import Enum
from fractions import Fraction

from flatcli.config import registries
from flatcli.errors import UsageError

# Help panels, spelled the same in every command (train adds Method, Optimization, Data).
INPUTS, THREAT, ATTACK, MEASURE = "Inputs", "Threat model", "Attack", "Measure"
OUTPUT, RUNTIME = "Output", "Runtime"
METHOD, OPTIMIZATION, DATA = "Method", "Optimization", "Data"


def option(help: str, panel: str, *, default=None, runtime=False, added=False, **cli):
    """A config field with its option: the help text and the --help panel it is listed under,
    then keywords only, so that a declaration reads the same whether ruff format keeps it on one
    line or gives each argument its own. `default` None means "resolved later" (the help says
    how). `runtime`: never hashed (must not change results); `added`: hashed only when it
    differs from `default` (rows written before it keep their hash).

    `cli` keys: flags (names, default --field-name), param (the CLI parameter's name where it is
    not the field's), metavar, show_default, envvar, menu (click shows and checks `choices`),
    choices, parse (number | numbers | names | pair | path: how text becomes the value),
    repeat (the option may be given several times), positive, low (>= low), within ("[0, 1)"),
    min (click's own range check, shown in --help).
    """
    meta = {"help": help, "panel": panel, **cli}
    if runtime:
        meta["hash"] = False
    if added:
        meta["hash_unless"] = default
    return dataclasses.field(default=default, metadata=meta)


def named(registry: dict, panel: str, *, before: str = "", after: str = "", **keywords):
    """A field whose value is a name in `registry` (flatcli.config.registries): its choices, and a
    help text that lists them between `before` and `after`."""
    help_text = f"{before}{registries.describe(registry)}.{after}"
    return option(help_text, panel, choices=tuple(registry), **keywords)


# -- the options every command has: functions, since each config class needs its own Field --

NORMS = ("linf", "l2")
COMPILE_POLICIES = ("auto", "on", "off")  # flatcli.runtime.COMPILE_CHOICES


def seed():
    return option(
        "Seed; every checkpoint derives its own generator from it.", RUNTIME, default=0, metavar="N"
    )


def data_dir():
    return option(
        "Root of the torchvision-layout data folders (never downloaded).",
        INPUTS,
        runtime=True,
        flags=("--data-dir",),
        envvar="FLATCLI_DATA_DIR",
        metavar="PATH",
        parse="path",
    )


def device():
    return option(
        "auto | cpu | cuda | cuda:N.",
        RUNTIME,
        default="auto",
        runtime=True,
        envvar="FLATCLI_DEVICE",
        metavar="DEVICE",
    )


def compile_policy():
    return option(
        "torch.compile the model: auto (on CUDA only), on, off. Results equal eager up to "
        "float rounding; compile time is reported on stderr. Not part of the configuration.",
        RUNTIME,
        default="auto",
        runtime=True,
        flags=("--compile",),
        menu=True,
        choices=COMPILE_POLICIES,
    )


def parameters(config_type) -> dict[str, str]:
    """CLI parameter name -> field name, for every field that is an option."""
    return {
        f.metadata.get("param", f.name): f.name
        for f in dataclasses.fields(config_type)
        if "help" in f.metadata
    }


def flag(f: dataclasses.Field) -> str:
    """The option's long name, as messages spell it."""
    names = f.metadata.get("flags") or ()
    long = [n for n in names if n.startswith("--")]
    return long[0].split("/")[0] if long else "--" + f.name.replace("_", "-")


# -- parsers: what a user writes (text, a number, a list) -> the field's value ---------------


def number(value, label) -> float:
    """`8/255`, `0.0314`, `1e-2` or a number -> float; `label(value)` names it in the error."""
    if isinstance(value, bool):
        raise UsageError(f"{label(value)} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(text)
    except ZeroDivisionError:
        raise UsageError(f"{label(value)}: division by zero") from None
    except ValueError:
        raise UsageError(f"{label(value)} is not a number or a fraction like 8/255") from None


def names(value, label) -> tuple[str, ...]:
    """`"a,b"`, `["a", "b,c"]` -> ("a", "b", "c")."""
    items = [value] if isinstance(value, (str, int, float)) else list(value)
    return tuple(p.strip() for item in items for p in str(item).split(",") if p.strip())


def numbers(value, label) -> tuple[float, ...]:
    """`"0.25,1/2"`, `[0.25, "1/2"]` or 0.5 -> a tuple of floats."""
    items = [value] if isinstance(value, (int, float)) else names(value, label)
    return tuple(number(item, label) for item in items)


def pair(value, label) -> tuple[float, float]:
    """`"MIN,MAX"` or two numbers -> (MIN, MAX)."""
    values = numbers(value, label)
    if len(values) != 2:
        raise UsageError(f"{label(value)}: expected MIN,MAX (e.g. -1,1)")
    return values


PARSERS = {"number": number, "numbers": numbers, "names": names, "pair": pair}


def coerce(f: dataclasses.Field, value, label):
    """A user's value (CLI text, enum member, path, script value) as the field stores it."""
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return None
    parse = f.metadata.get("parse")
    if parse == "path" or isinstance(value, os.PathLike):
        return str(value)
    if parse in PARSERS:
        return PARSERS[parse](value, label)
    return value


def make(config_type, options: dict, *, cli: bool):
    """`config_type(**options)` with every value coerced and the result validated; `cli` spells
    the names in messages as options (--eps '1/0'), else as keywords (eps='1/0')."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}

    def label_for(f):
        if cli:
            return lambda value: f"{flag(f)} {value!r}"
        return lambda value: f"{f.name}={value!r}"

    values = {n: coerce(fields[n], v, label_for(fields[n])) for n, v in options.items()}
    config = config_type(**values)
    config.validate()
    return config


# -- checks driven by the metadata -----------------------------------------------------------


@functools.cache
def _types(config_type) -> dict:
    return typing.get_type_hints(config_type)


def _kind(annotation) -> type | None:
    """int or float for a scalar number field (optional or not), else None."""
    args = set(typing.get_args(annotation)) - {type(None)} or {annotation}
    return next((t for t in (int, float, bool) if args == {t}), None)


def _check_value(f: dataclasses.Field, kind, value) -> None:
    meta, name = f.metadata, flag(f)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UsageError(f"{name} must be a number, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise UsageError(f"{name} must be true or false, got {value!r}")
    choices = meta.get("choices")
    if choices is not None:
        for item in value if isinstance(value, tuple) else (value,):
            if item not in choices:
                listed = ", ".join(str(c) for c in choices)
                noun = name.lstrip("-").replace("-", " ")
                raise UsageError(f"unknown {noun} {item!r}; {name} takes one of {listed}")
        if isinstance(value, tuple) and not value:
            raise UsageError(f"{name}: give at least one of " + ", ".join(choices))
    if meta.get("positive") and not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{name} must be positive, got {value:g}")
    if "low" in meta and not (value >= meta["low"] and math.isfinite(value)):
        raise UsageError(f"{name} must be >= {meta['low']}, got {value:g}")
    if "within" in meta and not inside(value, meta["within"]):
        raise UsageError(f"{name} must lie in {meta['within']}, got {value:g}")


def inside(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written as "[0, 1)", "(0, 1]", ..."""
    lo, hi = (float(v) for v in interval[1:-1].split(","))
    above = value >= lo if interval[0] == "[" else value > lo
    below = value <= hi if interval[-1] == "]" else value < hi
    return above and below


def validate_fields(config) -> None:
    """Every field's own checks (type, choices, positive, low, within); None is "the default",
    resolved and checked later. UsageError (one line) naming the option."""
    types = _types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is not None:
            _check_value(f, _kind(types[f.name]), value)


def require(ok: bool, message: str) -> None:
    """A check across fields: UsageError(message) unless `ok`."""
    if not ok:
        raise UsageError(message)
