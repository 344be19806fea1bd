"""Rendering: results on stdout (table | csv | json | jsonl), progress and logs on stderr.

stdout carries results only. stderr shows a live progress bar on a TTY, one plain line per
checkpoint otherwise, nothing with --quiet (errors and failures are always shown).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(
    rows: Sequence[dict], columns: Sequence[str], fmt: str, summary_columns: Sequence[str]
) -> None:
    """Print rows on stdout: `table` shows `summary_columns`, the machine formats every column."""
    out = sys.stdout
    if fmt == "json":
        json.dump([{c: _finite(r.get(c)) for c in columns} for r in rows], out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps({c: _finite(r.get(c)) for c in columns}) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if _finite(r.get(c)) is None else r.get(c) for c in columns])
    else:
        if not rows:
            return
        table = Table(box=None, pad_edge=False)
        for c in summary_columns:
            numeric = isinstance(rows[0].get(c), (int, float))
            table.add_column(c, justify="right" if numeric else "left", no_wrap=True)
        for r in rows:
            table.add_row(*(_cell(r.get(c)) for c in summary_columns))
        console = Console(file=out, highlight=False)
        if not console.is_terminal:  # pipes and files get whole lines, never wrapped or cut
            console = Console(file=out, highlight=False, width=100_000)
        console.print(table)


def error(message: str) -> None:
    err_console.print(f"flatcli: error: {message}", markup=False)


class Progress:
    """Renders sweep events on stderr: rich progress on a TTY, plain lines otherwise."""

    def __init__(self, quiet: bool, label: str):
        self.quiet = quiet
        self.label = label
        self.live = None
        if not quiet and err_console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            self.task = None

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)

    def _name(self, ref) -> str:
        return ref.key

    def __call__(self, event) -> None:
        name = self._name(event.ref)
        if event.kind == "failed":
            err_console.print(f"flatcli: failed: {event.ref.path}: {event.message}", markup=False)
        elif event.kind == "warning":
            err_console.print(f"flatcli: warning: {event.ref.path}: {event.message}", markup=False)
        if self.quiet:
            return
        if self.live is not None:
            if self.task is None:
                self.task = self.live.add_task(self.label, total=event.total)
            if event.kind in ("done", "skipped", "failed"):
                self.live.update(self.task, advance=1, description=f"{self.label} {name}")
            return
        if event.kind in ("done", "skipped"):
            err_console.print(
                f"[{event.index + 1}/{event.total}] {name}: {event.kind} ({event.message})",
                markup=False,
            )

    def log(self, message: str) -> None:
        if not self.quiet:
            err_console.print(message, markup=False)
