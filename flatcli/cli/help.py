"""Plain `--help` text that reads at any width: option names are never cut, words never broken,
metavars plain (N, X, LIST, PATH, a|b|c), flags without a metavar, and commands in examples
wrapped with shell line continuations so they can still be pasted."""

from __future__ import annotations

import enum
import inspect
import os
import shutil
import textwrap
import typing
from pathlib import Path

INDENT = 2
NAME_COLUMN = 28  # at most; a longer name puts its help on the next line
MIN_WIDTH, MAX_WIDTH = 40, 100
NBSP = "\u00a0"
_COMMAND_STARTS = ("flatcli ", "torchrun ", "python ", "srun ")


def width() -> int:
    """The terminal's columns ($COLUMNS first), kept between MIN_WIDTH and MAX_WIDTH."""
    columns = os.environ.get("COLUMNS", "")
    n = int(columns) if columns.isdigit() else shutil.get_terminal_size((80, 24)).columns
    return max(MIN_WIDTH, min(MAX_WIDTH, n))


def wrap(text: str, room: int, indent: str = "") -> list[str]:
    """`text` in lines of at most `room` characters, breaking only between words."""
    return textwrap.wrap(
        text,
        room,
        initial_indent=indent,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent.rstrip()]


def command_lines(command: str, room: int, indent: str) -> list[str]:
    """A shell command wrapped with ` \\` continuations (the next lines indented 2 more)."""
    words, lines, line = command.split(), [], indent
    for word in words:
        candidate = f"{line} {word}" if line.strip() else f"{line}{word}"
        if line.strip() and len(candidate) + 2 > room:
            lines.append(line + " \\")
            line = indent + "  " + word
        else:
            line = candidate
    return [*lines, line]


def paragraph(text: str, room: int, indent: str) -> list[str]:
    """A help paragraph; `Label: <command>` puts the command on its own continued lines."""
    label, sep, rest = text.partition(": ")
    if sep and rest.startswith(_COMMAND_STARTS) and len(label) < 60:
        return command_lines(text, room, indent)
    return wrap(text, room, indent)


def _annotation(param):
    descriptor = getattr(param, "type_descriptor", None)
    return getattr(descriptor, "annotation", None)


def metavar(param) -> str:
    """The value an option takes, plainly: its own metavar, else from its type."""
    if getattr(param, "is_flag", False):
        return ""
    if param.metavar:
        return param.metavar
    annotation = _annotation(param)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list or getattr(param, "multiple", False):
        return "LIST"
    if args and typing.get_origin(annotation) is not list:
        annotation = args[0]
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    if annotation is int:
        return "N"
    if annotation is float:
        return "X"
    if inspect.isclass(annotation) and issubclass(annotation, Path):
        return "PATH"
    return "TEXT"


def _default(param) -> str | None:
    show = param.show_default
    if isinstance(show, str):
        return show.strip("()")
    if show is False:
        return None
    value = param.default
    if value is None or callable(value):
        return None
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return (param.opts if value else param.secondary_opts)[0]
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value)


def notes(param) -> str:
    """[default: ...], [env var: ...], [>= N], [required], as the help's end; each note is
    kept on one line (no-break spaces, turned back by `definition_list`)."""
    parts = []
    default = _default(param)
    if default not in (None, ""):
        parts.append(f"[default: {default}]")
    if getattr(param, "envvar", None):
        parts.append(f"[env var: {param.envvar}]")
    if getattr(param, "min", None) is not None:
        parts.append(f"[>= {param.min}]")
    if param.required:
        parts.append("[required]")
    return " ".join(p.replace(" ", NBSP) if len(p) < 40 else p for p in parts)


def option_name(param) -> str:
    """`--out, -o PATH`; `--figures / --no-figures` for a pair of flags."""
    names = sorted(param.opts, key=lambda n: not n.startswith("--"))
    text = ", ".join(names)
    if param.secondary_opts:
        text += " / " + ", ".join(param.secondary_opts)
    value = metavar(param)
    return f"{text} {value}" if value else text


def definition_list(rows: list[tuple[str, str]], total: int) -> list[str]:
    """Two columns, names then help; a name wider than the column puts its help below it."""
    pad = " " * INDENT
    fitting = [len(n) for n, _ in rows if len(n) <= NAME_COLUMN]
    column = max(fitting, default=0) + 2
    if total - INDENT - column < 30:  # too narrow for two columns: help always below
        column = 6
    room = total - INDENT - column
    lines: list[str] = []
    for name, text in rows:
        body = wrap(text, room) if text else []
        if len(name) + 2 <= column and body:
            lines.append(pad + name.ljust(column) + body[0])
            body = body[1:]
        else:
            lines += wrap(name, total - INDENT, pad) if " " in name else [pad + name]
        lines += [pad + " " * column + b for b in body]
    return [line.replace(NBSP, " ") for line in lines]


def _section(title: str, rows: list[tuple[str, str]], total: int) -> list[str]:
    return ["", f"{title}:", *definition_list(rows, total)] if rows else []


def _helps(param) -> str:
    return " ".join(s for s in (param.help or "", notes(param)) if s)


def command_help(command, ctx) -> str:
    """A subcommand's help: usage, description, arguments, then the options panel by panel."""
    total = width()
    pad = " " * INDENT
    pieces = command.collect_usage_pieces(ctx)
    lines = wrap(f"Usage: {ctx.command_path} {' '.join(pieces)}", total, "")
    for text in (command.help or "").split("\n\n"):
        lines += ["", *paragraph(" ".join(text.split()), total - INDENT, pad)]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    lines += _section("Arguments", [(_arg_name(p), _helps(p)) for p in arguments], total)
    panels: dict[str, list] = {}
    for p in command.get_params(ctx):
        if p.param_type_name != "option" or getattr(p, "hidden", False):
            continue
        panel = getattr(p, "rich_help_panel", None) or "Options"
        panels.setdefault(panel, []).append((option_name(p), _helps(p)))
    for title in sorted(panels, key=lambda t: t == "Options"):  # stable: the params' order
        lines += _section(title, panels[title], total)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _arg_name(param) -> str:
    name = param.metavar or param.name.upper()
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


def group_help(group, ctx) -> str:
    """The root help: usage, description, options, and one line per command."""
    total = width()
    pad = " " * INDENT
    lines = wrap(f"Usage: {ctx.command_path} [OPTIONS] COMMAND [ARGS]...", total, "")
    for text in (group.help or "").split("\n\n"):
        lines += ["", *paragraph(" ".join(text.split()), total - INDENT, pad)]
    options = [
        (option_name(p), p.help or "")
        for p in group.get_params(ctx)
        if p.param_type_name == "option" and not getattr(p, "hidden", False)
    ]
    lines += _section("Options", options, total)
    commands = [
        (name, cmd.short_help or cmd.get_short_help_str(limit=200))
        for name, cmd in group.commands.items()
        if not cmd.hidden
    ]
    lines += _section("Commands", commands, total)
    return "\n".join(line.rstrip() for line in lines) + "\n"
