"""The `flatcli` command line: root app, the subcommands, --version, and the error handler.

This package is the only one that imports typer/rich, prints, or exits. The core is imported
inside each command, so `flatcli --help` answers without importing torch.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flatcli import __version__
from flatcli.cli import attack as _attack
from flatcli.cli import flatness as _flatness
from flatcli.cli import landscape as _landscape
from flatcli.cli import report as _report
from flatcli.cli import train as _train
from flatcli.cli.options import debug_enabled
from flatcli.cli.output import error
from flatcli.errors import FlatcliError

app = typer.Typer(
    name="flatcli",
    help="Robust overfitting and flatness of the robust loss (Stutz, Hein & Schiele, ICCV 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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


app.command("attack", no_args_is_help=True)(_attack.attack)
app.command("flatness", no_args_is_help=True)(_flatness.flatness)
app.command("landscape", no_args_is_help=True)(_landscape.landscape)
app.command("train", no_args_is_help=True)(_train.train)
app.command("report", no_args_is_help=True)(_report.report)

EXIT_INTERNAL = 3


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
    """Entry point: exit 0 done, 1 some checkpoints failed, 2 bad usage/input, 130 interrupted,
    3 internal error (a bug: traceback with FLATCLI_DEBUG=1)."""
    # Non-standalone: Typer returns exit codes (Ctrl-C -> 130) and raises click's usage errors,
    # which are printed here as one line like every other bad input.
    try:
        code = app(args=argv, prog_name="flatcli", standalone_mode=False)
    except FlatcliError as err:
        error(str(err))
        sys.exit(err.exit_code)
    except Exception as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # a bare command: its help
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
    sys.exit(code if isinstance(code, int) else 0)
