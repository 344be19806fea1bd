"""The commands' options: built from the config fields' metadata (flatcli.config.fields.option) by
`command`, plus the sweep options every evaluation command shares, declared once here.

Nothing here imports torch: `flatcli --help` must stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flatcli.config import fields
from flatcli.config.fields import OUTPUT


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


Paths = Annotated[
    list[Path],
    typer.Argument(
        metavar="CHECKPOINTS...",
        help="Checkpoint files or directories (searched recursively).",
        show_default=False,
    ),
]
Out = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        metavar="PATH",
        help="Output directory; tables go to OUT/<table>/.",
        rich_help_panel=OUTPUT,
    ),
]
FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", help="How results are printed on stdout.", rich_help_panel=OUTPUT
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        envvar="FLATCLI_QUIET",
        help="No progress or logs on stderr (failures still).",
        rich_help_panel=OUTPUT,
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute checkpoints already done for this configuration.",
        rich_help_panel=OUTPUT,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Show what would be computed and skipped, then exit.",
        rich_help_panel=OUTPUT,
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        metavar="I/N|auto",
        help="i/n: this process takes every n-th checkpoint from the i-th (0-based); "
        "auto: from SLURM_ARRAY_TASK_ID/COUNT.",
        show_default="all checkpoints",
        rich_help_panel=OUTPUT,
    ),
]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The options of every evaluation command that are not configuration: where the
    checkpoints are, where rows go, how they are printed, which shard, recompute or not."""

    paths: list[Path]
    out: Path
    fmt: Format = Format.table
    quiet: bool = False
    force: bool = False
    dry_run: bool = False
    shard: str | None = None


_SWEEP_LEADING = {"paths": Paths, "out": Out}
_SWEEP_TRAILING = {
    "fmt": FormatOpt,
    "quiet": Quiet,
    "force": Force,
    "dry_run": DryRun,
    "shard": ShardOpt,
}


@functools.cache
def _menu(name: str, choices: tuple) -> type[Enum]:
    """A str Enum of `choices` (click shows and checks them), one class per field."""
    title = "".join(part.title() for part in name.split("_"))
    return Enum(title, {str(c): str(c) for c in choices}, type=str)


def menu(config_type, name: str) -> type[Enum]:
    """The Enum that a menu field's option parses into (its choices, in order)."""
    f = next(f for f in dataclasses.fields(config_type) if f.name == name)
    return _menu(name, tuple(f.metadata["choices"]))


def _cli_type_and_default(f: dataclasses.Field, annotation):
    """The type Typer parses a field's option as, and the option's default in that type."""
    meta, default = f.metadata, f.default
    if meta.get("menu"):
        enum = _menu(f.name, tuple(meta["choices"]))
        return enum, enum(default)
    parse = meta.get("parse")
    if meta.get("repeat"):  # None: not given, so the field's default
        return list[str] | None, None
    if parse == "path":
        return Path | None, None
    if parse in ("names", "numbers") and default is not None:
        return str, ",".join(str(v) for v in default)
    if parse is not None:
        return str | None, None if default is None else str(default)
    return annotation, default


_PARSED = {"number": "X", "numbers": "LIST", "names": "LIST", "pair": "MIN,MAX", "path": "PATH"}


def _metavar(meta: dict, annotation) -> str:
    """A plain metavar for a field without its own: its choices (a|b), how it parses (X, LIST,
    MIN,MAX, PATH), else from its type (N for integers, X for floats, NAME for text)."""
    if meta.get("choices") and not meta.get("repeat"):
        return "|".join(str(c) for c in meta["choices"])
    if meta.get("parse") in _PARSED:
        return _PARSED[meta["parse"]]
    if meta.get("repeat"):
        return "LIST"
    kinds = {a for a in typing.get_args(annotation) if a is not type(None)} or {annotation}
    if kinds & {int}:
        return "N"
    if kinds & {float}:
        return "X"
    return "NAME"


def field_parameters(config_type) -> list[inspect.Parameter]:
    """One Typer option per config field that has a help text, in the fields' order."""
    hints = typing.get_type_hints(config_type)
    params = []
    for f in dataclasses.fields(config_type):
        meta = f.metadata
        if "help" not in meta:
            continue
        cli_type, default = _cli_type_and_default(f, hints[f.name])
        extra = {k: meta[k] for k in ("metavar", "show_default", "envvar", "min") if k in meta}
        if "metavar" not in extra and not meta.get("menu") and hints[f.name] is not bool:
            extra["metavar"] = _metavar(meta, hints[f.name])
        info = typer.Option(
            *meta.get("flags", ()), help=meta["help"], rich_help_panel=meta["panel"], **extra
        )
        params.append(
            inspect.Parameter(
                meta.get("param", f.name),
                inspect.Parameter.KEYWORD_ONLY,
                annotation=Annotated[cli_type, info],
                default=default,
            )
        )
    return params


def command(config_type, *, sweep: bool = True):
    """Decorator: `fn(config, [sweep,] **own)` becomes a Typer command whose options are the
    config's fields (metadata in flatcli.config), the shared sweep options when `sweep`
    (CHECKPOINTS..., --out first; --format, --quiet, --force, --dry-run, --shard last) and
    `fn`'s own keyword parameters. `fn` gets the parsed, validated config and a `Sweep`."""

    def wrap(fn):
        own = list(inspect.signature(fn, eval_str=True).parameters.values())
        own = [p for p in own if p.name not in ("config", "sweep")]
        first = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a)
            for n, a in (_SWEEP_LEADING.items() if sweep else ())
        ]
        last = [
            inspect.Parameter(
                n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=_sweep_default(n)
            )
            for n, a in (_SWEEP_TRAILING.items() if sweep else ())
        ]
        own_kw = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        required = [p for p in own_kw if p.default is inspect.Parameter.empty]
        keyword = [p for p in own_kw if p.default is not inspect.Parameter.empty]
        params = [*first, *required, *field_parameters(config_type), *keyword, *last]
        to_field = fields.parameters(config_type)
        sweep_names = {p.name for p in (*first, *last)}

        @functools.wraps(fn)
        def run(**kwargs):
            given = {to_field[n]: kwargs.pop(n) for n in list(kwargs) if n in to_field}
            config = fields.make(
                config_type, {k: v for k, v in given.items() if v is not None}, cli=True
            )
            extra = {"sweep": Sweep(**{n: kwargs.pop(n) for n in sweep_names})} if sweep else {}
            return fn(config=config, **extra, **kwargs)

        del run.__wrapped__  # Typer reads the built signature, not fn's
        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return wrap


def _sweep_default(name: str):
    return next(f.default for f in dataclasses.fields(Sweep) if f.name == name)


def debug_enabled() -> bool:
    return os.environ.get("FLATCLI_DEBUG", "") not in ("", "0")
