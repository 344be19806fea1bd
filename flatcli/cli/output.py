"""Rendering: results only on stdout (table | csv | json | jsonl), progress and logs on stderr
(live on a TTY, a line per checkpoint otherwise, nothing with --quiet but failures)."""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import sys
import time
from collections.abc import Sequence

from rich.console import Console

err_console = Console(stderr=True, highlight=False, soft_wrap=True)

KEY_COLUMNS = ("run", "epoch")  # never dropped from a table, whatever the width
GAP = "  "


def _plain(value):
    """A Python scalar: numpy/pandas scalars unwrapped, so json and csv see ints and floats."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def as_computed(value):
    """`value` at the precision it was computed in: a float64 that equals its float32 cast
    (a float32 result widened by `.item()`) becomes the shortest decimal that reads back as
    that float32 (0.2799999713897705 -> 0.28); other floats are left alone (their repr is
    already the shortest float64); NaN/inf -> None."""
    value = _plain(value)
    if not isinstance(value, float) or isinstance(value, bool):
        return value
    if not math.isfinite(value):
        return None
    try:
        single = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range: a float64 result
        return value
    if single != value:
        return value
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == single:
            return short
    return value


def _cell(value) -> str:
    value = _plain(value)
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
        json.dump([{c: as_computed(r.get(c)) for c in columns} for r in rows], out, indent=1)
        out.write("\n")
    elif fmt == "jsonl":
        for r in rows:
            out.write(json.dumps({c: as_computed(r.get(c)) for c in columns}) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if (v := as_computed(r.get(c))) is None else v for c in columns])
    elif rows:
        for line in table_lines(rows, summary_columns, available_width(out)):
            out.write(line.rstrip() + "\n")


def available_width(out) -> int | None:
    """Columns to fit: $COLUMNS when set, else the terminal's; None (no limit) for pipes and
    files, which get whole lines."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns or None  # 0: size never set
    except (AttributeError, OSError, ValueError):
        pass
    return None


def table_lines(rows: Sequence[dict], columns: Sequence[str], width: int | None) -> list[str]:
    """`rows` as an aligned table in `width` characters, never cutting a value.

    Too wide, it narrows step by step: headers break at underscores, columns empty in every row
    are left out, columns with one value in every row move to a line above the table; if that
    is still too wide, each row becomes a block of `column value` lines. Keys stay columns.
    """
    cells = {c: [_cell(r.get(c)) for r in rows] for c in columns}
    numeric = {c: any(isinstance(_plain(r.get(c)), (int, float)) for r in rows) for c in columns}
    shown = list(columns)
    lines = _grid(shown, cells, numeric, stacked=False)
    if width is None or _fits(lines, width):
        return lines
    shown = [c for c in shown if c in KEY_COLUMNS or any(cells[c])]
    lines = _grid(shown, cells, numeric, stacked=True)
    if _fits(lines, width):
        return lines
    constant = [
        c for c in shown if c not in KEY_COLUMNS and len(rows) > 1 and len(set(cells[c])) == 1
    ]
    shown = [c for c in shown if c not in constant]
    caption = _wrap([f"{c} {cells[c][0]}" for c in constant], width)
    lines = caption + _grid(shown, cells, numeric, stacked=True)
    if _fits(lines, width):
        return lines
    return _blocks([c for c in columns if any(cells[c]) or c in KEY_COLUMNS], cells)


def _fits(lines: list[str], width: int) -> bool:
    return all(len(line.rstrip()) <= width for line in lines)


def _header_parts(name: str, room: int) -> list[str]:
    """`name` broken at underscores into lines of at most `room` characters where possible."""
    parts: list[str] = []
    for word in name.split("_"):
        if parts and len(parts[-1]) + 1 + len(word) <= room:
            parts[-1] += "_" + word
        else:
            parts.append(word)
    return parts


def _grid(shown: list[str], cells: dict, numeric: dict, stacked: bool) -> list[str]:
    heads, widths = {}, {}
    for c in shown:
        value_width = max((len(v) for v in cells[c]), default=0)
        room = max([value_width, *(len(w) for w in c.split("_"))]) if stacked else len(c)
        heads[c] = _header_parts(c, room) if stacked else [c]
        widths[c] = max([value_width, *(len(h) for h in heads[c])])
    depth = max((len(h) for h in heads.values()), default=1)

    def line(values: dict) -> str:
        return GAP.join(
            values[c].rjust(widths[c]) if numeric[c] else values[c].ljust(widths[c]) for c in shown
        )

    header = [
        line({c: ([""] * (depth - len(heads[c])) + heads[c])[i] for c in shown})
        for i in range(depth)
    ]
    n = len(next(iter(cells.values()), []))
    return header + [line({c: cells[c][i] for c in shown}) for i in range(n)]


def _wrap(items: list[str], width: int) -> list[str]:
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            lines.append(item)
    return lines


def _blocks(shown: list[str], cells: dict) -> list[str]:
    """One block of `column value` lines per row, a blank line between blocks."""
    label = max(len(c) for c in shown)
    n = len(cells[shown[0]])
    lines: list[str] = []
    for i in range(n):
        if i:
            lines.append("")
        lines += [f"{c.ljust(label)}{GAP}{cells[c][i]}" for c in shown if cells[c][i] != ""]
    return lines


def error(message: str) -> None:
    err_console.print(f"flatcli: error: {message}", markup=False)


def with_path(path, message: str) -> str:
    """`path: message`, unless the message already names the path (one path per line)."""
    return message if str(path) in message else f"{path}: {message}"


def eta(elapsed: float | None, done: float, total: float | None) -> float | None:
    """Seconds left at the mean pace so far (`done` of `total` units in `elapsed` seconds);
    None before any progress."""
    if elapsed is None or total is None or done <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


def eta_column():
    """rich's remaining-time column at the mean pace since the task started, counting the
    current unit's share done (the task field `partial`): rich's own keeps a 30 s window of
    samples, so it shows `-:--:--` forever when each unit takes longer than that."""
    from datetime import timedelta

    from rich.progress import ProgressColumn
    from rich.text import Text

    class Eta(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished:
                return Text("0:00:00", style="progress.remaining")
            done = task.completed + task.fields.get("partial", 0.0)
            left = eta(task.elapsed, done, task.total)
            if left is None:
                return Text("-:--:--", style="progress.remaining")
            return Text(str(timedelta(seconds=round(left))), style="progress.remaining")

    return Eta()


class _LiveBars:
    """A context that starts and stops `self.live` (rich bars, on a TTY) when there is one."""

    live = None

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)


class EpochProgress(_LiveBars):
    """Training on stderr: on a TTY a bar over the current epoch's steps with its ETA, the
    epoch lines printed above it; otherwise the epoch lines only; nothing with `quiet`."""

    def __init__(self, quiet: bool, console: Console = err_console):
        self.quiet, self.console = quiet, console
        self.live = self.task = None
        self._epoch = None
        if not quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                eta_column(),
                console=console,
                transient=True,
            )

    def step(self, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Step `step` of `steps` of epoch `epoch` (1-based) of `epochs` is done."""
        if self.live is None:
            return
        if self.task is None:
            self.task = self.live.add_task("", total=steps)
        if epoch != self._epoch:
            self._epoch = epoch
            self.live.reset(self.task, total=steps, completed=step,
                            description=f"train: epoch {epoch}/{epochs}")  # fmt: skip
        else:
            self.live.update(self.task, completed=step)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)


class Progress(_LiveBars):
    """Renders a sweep on stderr: rich bars on a TTY (checkpoints, and inside the current one
    whatever `on_batch(done, total, label)` reports, with ETA), one plain line per checkpoint
    otherwise, nothing with `quiet` but failures and warnings."""

    def __init__(self, quiet: bool, label: str, console: Console = err_console):
        self.quiet = quiet
        self.label = label
        self.console = console
        self.live = None
        self.started = time.perf_counter()
        self._unit = ""
        self._phase: tuple[str, int] | None = None  # (label, last done) of the inner bar
        if not quiet and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                eta_column(),
                console=console,
                transient=True,
            )
            self.outer = None
            self.inner = None

    def __call__(self, event) -> None:
        """A sweep event: start | done | skipped | failed | warning."""
        name = event.ref.key
        if event.kind in ("failed", "warning"):
            text = with_path(event.ref.path, event.message)
            self.console.print(f"flatcli: {event.kind}: {text}", markup=False)
        if self.quiet:
            return
        if self.live is not None:
            self._live_event(event, name)
        elif event.kind in ("done", "skipped"):
            self.console.print(
                f"[{event.index + 1}/{event.total}] {name}: {event.kind} ({event.message})",
                markup=False,
            )

    def _live_event(self, event, name: str) -> None:
        if self.outer is None:
            self.outer = self.live.add_task(self.label, total=event.total)
            self.inner = self.live.add_task("", total=None, visible=False)
        if event.kind == "start":
            self._unit, self._phase = name, None
            self.live.reset(self.inner, total=None, description=f"  {name}", visible=True)
        elif event.kind in ("done", "skipped", "failed"):
            self.live.update(self.outer, advance=1, partial=0.0)
            self.live.update(self.inner, visible=False)

    def on_batch(self, done: int, total: int, label: str = "examples") -> None:
        """Progress inside the current checkpoint: `done` of `total` (in units of `label`).
        A new label, or `done` going back, starts a new phase (its own bar and ETA)."""
        if self.live is None or self.inner is None:
            return
        last = self._phase
        if last is None or last[0] != label or done < last[1]:
            self.live.reset(
                self.inner,
                total=total,
                completed=done,
                description=f"  {self._unit} {label}",
                visible=True,
            )
        else:
            self.live.update(self.inner, total=total, completed=done)
        self._phase = (label, done)
        if self.outer is not None and total:  # the outer ETA counts the unit's share done
            self.live.update(self.outer, partial=min(done / total, 0.999))

    def summary(self, done: int, skipped: int, failed: int, recomputed: int = 0) -> None:
        """The closing line: `N done, N skipped, N failed (Xs)`; `N done (K recomputed: older
        estimator version)` when rows of older code were replaced."""
        seconds = time.perf_counter() - self.started
        again = f" ({recomputed} recomputed: older estimator version)" if recomputed else ""
        self.log(f"{self.label}: {done} done{again}, {skipped} skipped, {failed} failed "
                 f"({seconds:.1f}s)")

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False)
