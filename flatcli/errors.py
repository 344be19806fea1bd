"""Errors that carry a one-line message for the user.

The CLI maps them to exit codes: `UsageError` (and subclasses) -> 2 before any work started,
`CheckpointError` -> the checkpoint is reported and skipped, the sweep goes on (exit 1 at the end).
"""


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
