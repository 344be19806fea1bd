"""The `flatcli` command line: root app, the subcommands, --version, and the error handler.

This package is the only one that imports typer/rich, prints, or exits. The core is imported
inside each command, so `flatcli --help` answers without importing torch.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import sys
import threading
from typing import Annotated

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from flatcli import __version__
from flatcli.cli import attack as _attack
from flatcli.cli import flatness as _flatness
from flatcli.cli import help as _help
from flatcli.cli import landscape as _landscape
from flatcli.cli import report as _report
from flatcli.cli import train as _train
from flatcli.cli.options import debug_enabled
from flatcli.cli.output import error
from flatcli.errors import FlatcliError


class _Argument(TyperArgument):
    """A positional argument shown by its metavar alone: `CHECKPOINTS...` in the usage line
    and in the Arguments panel, not typer's `{paths}...` and `<list[Path]>`."""

    def display_type_rich(self, ctx):
        return None

    def _usage_display_name(self) -> str:
        name = self.metavar or self.name.upper()
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"


PANEL_ORDER = ("Inputs", "Threat model", "Attack", "Measure", "Output", "Runtime")


def _panel_rank(param) -> int:
    """Positional arguments first, then the shared panels in PANEL_ORDER, a command's own
    panels (train's Method, ...) before Output and Runtime."""
    if isinstance(param, TyperArgument):
        return -1
    panel = getattr(param, "rich_help_panel", None)
    if panel in PANEL_ORDER:
        rank = PANEL_ORDER.index(panel)
        return rank if rank < PANEL_ORDER.index("Output") else rank + 1
    return PANEL_ORDER.index("Output")


def _prose(text: str | None) -> str | None:
    """Help text as paragraphs: single line breaks of the source joined (the help wraps)."""
    if text is None:
        return None
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


class _BareIsHelp:
    """A bare command shows its help on stderr (exit 2), as before rich help, which prints
    itself on stdout while click builds the error."""

    def parse_args(self, ctx, args):
        if args or not self.no_args_is_help:
            return super().parse_args(ctx, args)
        with contextlib.redirect_stdout(sys.stderr):
            return super().parse_args(ctx, args)


class _Group(_BareIsHelp, TyperGroup):
    def format_help(self, ctx, formatter):
        formatter.write(_help.group_help(self, ctx))


class _Command(_BareIsHelp, TyperCommand):
    """A subcommand whose --help groups options by panel in a fixed order and shows its
    positional arguments by metavar."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = _prose(self.help)
        for param in self.params:
            if type(param) is TyperArgument:  # typer builds the params; only their display changes
                param.__class__ = _Argument
            param.help = _prose(param.help)
        self.params.sort(key=_panel_rank)  # stable: within a panel, the signature's order

    def format_help(self, ctx, formatter):
        """Plain text (flatcli.cli.help) instead of rich's panels, which cut option names and
        break words at 80 columns."""
        formatter.write(_help.command_help(self, ctx))


app = typer.Typer(
    name="flatcli",
    help="Robust overfitting and flatness of the robust loss (Stutz, Hein & Schiele, ICCV 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # the panels (rich_help_panel) need it
    cls=_Group,
)


def _version(value: bool):
    if value:
        print(f"flatcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
):
    """Robust overfitting and flatness of the robust loss, per checkpoint, as Parquet tables."""


# One line each, so `flatcli --help` lists every command without cutting a description.
COMMANDS = {
    "attack": (_attack.attack, "Clean/robust error and robust loss of every checkpoint."),
    "flatness": (_flatness.flatness, "Average- and worst-case flatness of the robust loss."),
    "landscape": (_landscape.landscape, "Robust and clean loss along weight directions."),
    "train": (_train.train, "Adversarial training, a checkpoint every epoch."),
    "report": (_report.report, "Per-epoch table, correlations, figures, report.md/html."),
}
for _name, (_function, _short) in COMMANDS.items():
    app.command(_name, cls=_Command, short_help=_short, no_args_is_help=True)(_function)

EXIT_INTERRUPTED = 130
INTERRUPTED = "interrupted; rerun the same command to resume"
EXIT_TERMINATED = 143  # 128 + SIGTERM, what Slurm sends at a time limit or on preemption
TERMINATED = "terminated (SIGTERM); finished work is kept, rerun the same command to resume"
EXIT_INTERNAL = 3


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM: unwinds like Ctrl-C (open progress closed, finished
    parts kept, the part in hand never half-written), past the sweep's error handling."""


def _on_sigterm(signum, frame):
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises `Terminated` while the command runs (main thread only); the previous
    handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_click_error(err: BaseException) -> bool:
    """Click's own exceptions (usage errors, bad parameters), whether Typer vendors click or
    not: they carry `format_message` and an `exit_code`."""
    return callable(getattr(err, "format_message", None)) and isinstance(
        getattr(err, "exit_code", None), int
    )


def _usage_line(err) -> str:
    """A click usage error as one line, pointing at the command's --help."""
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else "flatcli"
    return f"{message} (see '{command} --help')"


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 done, 1 some checkpoints failed (or a file could not be written),
    2 bad usage/input, 130 interrupted, 143 terminated (SIGTERM), 3 internal error (a bug:
    traceback with FLATCLI_DEBUG=1, or in the log file a stopped sweep names)."""
    # Non-standalone: Typer returns exit codes (Ctrl-C -> 130) and raises click's usage errors,
    # which are printed here as one line like every other bad input.
    try:
        with _sigterm_unwinds():
            code = app(args=argv, prog_name="flatcli", standalone_mode=False)
    except KeyboardInterrupt:  # outside the command (Typer maps one inside it to 130)
        code = EXIT_INTERRUPTED
    except Terminated:
        print(f"flatcli: {TERMINATED}", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    except FlatcliError as err:
        error(str(err))
        sys.exit(err.exit_code)
    except Exception as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare command: its help, shown
            if err.format_message().strip():
                print(err.format_message(), file=sys.stderr)
            sys.exit(err.exit_code)
        if type(err).__name__ == "Abort":  # end of input at a prompt
            error("aborted")
            sys.exit(130)
        if _is_click_error(err):
            error(_usage_line(err))
            sys.exit(err.exit_code)
        if debug_enabled():
            raise
        error(f"internal error: {type(err).__name__}: {err} (set FLATCLI_DEBUG=1 for a traceback)")
        sys.exit(EXIT_INTERNAL)
    if code == EXIT_INTERRUPTED:  # Typer returns 130 for a Ctrl-C, silently
        print(f"flatcli: {INTERRUPTED}", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)
