"""Errors that carry a one-line message for the user, and their exit codes.

The CLI maps them to exit codes:
`UsageError` (and `DataError`) -> 2; `CheckpointError` -> that checkpoint fails, the sweep goes
on (exit 1 at the end), or 2 for a single explicit load; `WriteError` (disk full, read-only,
quota) -> 1; `SweepStopped` (an unexpected error, its traceback in a log file) -> 3."""

import re


class FlatcliError(Exception):
    """Base class: `str(err)` is a complete one-line message for the user."""

    exit_code = 2


class UsageError(FlatcliError):
    """Bad option values or inputs detected before work started (exit 2)."""


class DataError(UsageError):
    """A dataset is missing, malformed, or too small for the request."""


class CheckpointError(FlatcliError):
    """One checkpoint cannot be used (unreadable, unsafe, wrong architecture, ...).

    In a sweep this fails only that checkpoint; for a single explicit load it is exit 2.
    """


class WriteError(FlatcliError):
    """A file could not be written (disk full, read-only file system, quota): nothing of it was
    left half-written; the message names the path and the cause (exit 1)."""

    exit_code = 1


class SweepStopped(FlatcliError):
    """An error that is not about a checkpoint or its data (a bug, a CUDA error) stopped a sweep;
    finished checkpoints are kept and the traceback is in a log file the message names (exit 3)."""

    exit_code = 3


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(err: BaseException | str, limit: int | None = None) -> str:
    """One line for the user: a flatcli error's own message, else `Type: message` (a bare
    string as is); ANSI codes dropped, whitespace runs joined, cut to `limit` with '...'."""
    if isinstance(err, BaseException) and not isinstance(err, FlatcliError):
        text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    else:
        text = str(err)
    text = " ".join(_ANSI_RE.sub("", text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text or type(err).__name__


def first_sentence(err: BaseException, limit: int = 160) -> str:
    """The first line and sentence of a third-party error (long library messages cut short)."""
    lines = [ln.strip() for ln in _ANSI_RE.sub("", str(err)).splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    return one_line(text.split(". ")[0], limit)
