"""One measure over many checkpoints: shard, plan, compute, write, and report failures.

Shard, plan (skip, recompute, replace or refuse each unit), compute, write each unit's part,
report failures through `on_event` and go on. The rules: docs/method.md, "Implementation notes"."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from flatcli import runtime, tables
from flatcli.checkpoints import DIGEST_CHARS, ref_of
from flatcli.errors import (
    CheckpointError,
    DataError,
    SweepStopped,
    UsageError,
    WriteError,
    one_line,
)
from flatcli.files import atomic_write_text
from flatcli.measures import versions

# What fails one checkpoint and lets the sweep go on; anything else stops it (`SweepStopped`).
CHECKPOINT_ERRORS = (CheckpointError, DataError)


@dataclass(frozen=True)
class Shard:
    """Work unit i of n (0-based): this process takes refs[i::n]."""

    index: int = 0
    count: int = 1

    def take(self, items: Sequence) -> list:
        return list(items[self.index :: self.count])


def parse_shard(value: str | None, environ=os.environ) -> Shard:
    """`i/n` (0 <= i < n), `auto` (from SLURM_ARRAY_TASK_ID/COUNT/MIN), or None -> the whole."""
    if value is None or value == "":
        return Shard()
    if value == "auto":
        if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
            raise UsageError("--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT")
        task = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        return _checked_shard(task, int(environ["SLURM_ARRAY_TASK_COUNT"]), value)
    try:
        i, n = (int(part) for part in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r}: expected i/n (e.g. 0/4) or auto") from None
    return _checked_shard(i, n, value)


def _checked_shard(i: int, n: int, text: str) -> Shard:
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard {text}: need 0 <= i < n (shards are numbered 0..n-1)")
    return Shard(i, n)


@dataclass
class SweepEvent:
    """What the sweep reports as it goes: kind is start | done | skipped | failed | warning."""

    kind: str
    ref: object
    index: int
    total: int
    message: str = ""
    rows: list[dict] = field(default_factory=list)


@dataclass
class SweepSummary:
    """What a sweep did: units done (`recomputed`: those of them whose rows were of an older
    estimator version), skipped and failed (with why), and every row, old and new."""

    done: list = field(default_factory=list)
    recomputed: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: list[tuple[object, str]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when everything is done or skipped, 1 when some checkpoint failed."""
        return 1 if self.failed else 0


@dataclass(frozen=True)
class Plan:
    """This shard's units: to compute, already written, refused (unit, why), those to compute
    again because their rows are of an older estimator version, and per unit key the notes to
    say when it starts and the parts its new rows replace."""

    todo: list
    skipped: list
    refused: list = field(default_factory=list)
    outdated: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    replaces: dict = field(default_factory=dict)


def plan(
    refs: Sequence, table: str, out, config_hash: str, shard: Shard = Shard(), force: bool = False
) -> Plan:
    """This shard's refs, split into those to compute, those already written and those refused.

    A unit is done when its part (named by run, epoch and content digest) exists, reads, and
    holds rows of the current estimator versions (`flatcli.measures.versions`); older rows and an
    unreadable part are recomputed. A part of the same run and epoch but another digest holds rows
    of another content: when it was written for this very file (retrained in place) it is
    replaced; when for another file that got the same run name and epoch (another directory
    called `at`), the unit is refused, naming both, unless `force` (which replaces it). Refusing
    rather than renaming keeps a run's name independent of what an OUT already holds.
    """
    result = Plan([], [])
    said: set[str] = set()  # a run's naming note once, not for each of its checkpoints
    for ref in shard.take(refs):
        part = tables.part_path(out, table, ref.key, config_hash)
        notes = []
        if part.is_file() and not force:
            reason = tables.unreadable_reason(part)
            if reason is None and not _outdated(table, part):
                result.skipped.append(ref)
                continue
            if reason is None:
                result.outdated.append(ref)
            else:
                notes.append(f"unreadable part {part} ({reason}); recomputing it")
        note = getattr(ref_of(ref), "note", "")
        if note and note not in said:
            said.add(note)
            notes.append(note)
        stale = tables.other_parts(out, table, ref.key, _digest8(ref), config_hash)
        others = sorted({c for c in map(_written_for, stale) if not _same_file(c, ref.path)})
        if others and not force:
            result.refused.append((ref, (
                f"{out} already holds {table} rows of run {ref.run!r} epoch {ref.epoch} for "
                f"another file, {others[0]}; use another --out, or --force to replace them"
            )))
            continue
        if stale:
            result.replaces[ref.key] = stale
            notes.append(f"replacing {len(stale)} part(s) written for earlier contents of this "
                         "name (" + ", ".join(p.name for p in stale) + ")")
        result.notes[ref.key] = notes
        result.todo.append(ref)
    return result


def _outdated(table: str, part) -> bool:
    """Whether a readable part's rows come from an older version of their estimator."""
    try:
        rows = pq.read_table(part).to_pylist()
    except (OSError, pa.ArrowException):
        return True
    return versions.outdated(table, rows)


def _digest8(unit) -> str:
    return (getattr(ref_of(unit), "digest", "") or "")[:DIGEST_CHARS]


def _written_for(part) -> str:
    """The checkpoint path a part's rows were computed from ('' if it cannot be read)."""
    try:
        rows = pq.read_table(part, columns=["checkpoint"]).column("checkpoint").to_pylist()
    except (OSError, pa.ArrowException, KeyError):
        return ""
    return rows[0] if rows and rows[0] else ""


def _same_file(written: str, path) -> bool:
    if not written:
        return True  # an unreadable old part: nothing to protect, it is replaced
    try:
        return os.path.samefile(written, path)
    except OSError:
        return os.path.abspath(written) == os.path.abspath(path)


def _stamped(rows: list[dict], wall: float) -> list[dict]:
    """`rows` with the unit's wall time (s, its whole measure) and one creation time."""
    stamp = runtime.now_iso()
    return [{**row, "wall_time_s": wall, "created_at": stamp} for row in rows]


def _versioned(table: str, rows: list[dict]) -> list[dict]:
    """`rows` with the version of the estimator behind each (`flatcli.measures.versions`)."""
    return [{**row, "estimator_version": versions.row_version(table, row)} for row in rows]


def run(
    refs: Sequence,
    measure: Callable[[object], list[dict]],
    table: str,
    out,
    config_hash: str,
    shard: Shard = Shard(),
    force: bool = False,
    on_event: Callable[[SweepEvent], None] | None = None,
    debug: bool = False,
) -> SweepSummary:
    """Compute `measure(ref)` for this shard's refs not yet written, writing each atomically.

    `measure` returns complete rows except `wall_time_s`, `created_at` and `estimator_version`,
    which are added here. A `CHECKPOINT_ERRORS` error fails that checkpoint and the sweep goes
    on; any other error (a bug, a CUDA error) stops it with `SweepStopped`, its traceback written
    to `OUT/logs/` (re-raised as it is with `debug`). Finished checkpoints stay written.
    A row with a `note` is reported as a warning (e.g. non-finite weights) but still written.
    """
    emit = on_event or (lambda event: None)
    work = plan(refs, table, out, config_hash, shard, force)
    summary = SweepSummary(skipped=list(work.skipped))  # rows: the skipped ones' too, as written
    total = len(work.todo) + len(work.skipped) + len(work.refused)
    for i, ref in enumerate(work.skipped):
        summary.rows.extend(tables.read_part(out, table, ref.key, config_hash))
        emit(SweepEvent("skipped", ref, i, total, "already done"))
    for i, (ref, message) in enumerate(work.refused, start=len(work.skipped)):
        summary.failed.append((ref, message))
        emit(SweepEvent("failed", ref, i, total, message))
    for i, ref in enumerate(work.todo, start=len(work.skipped) + len(work.refused)):
        for note in work.notes.get(ref.key, []):
            emit(SweepEvent("warning", ref, i, total, note))
        emit(SweepEvent("start", ref, i, total))
        started = time.perf_counter()
        try:
            rows = measure(ref)
        except CHECKPOINT_ERRORS as err:  # one bad checkpoint must not stop the sweep
            if debug:
                raise
            summary.failed.append((ref, one_line(err)))
            emit(SweepEvent("failed", ref, i, total, one_line(err)))
            continue
        except Exception as err:
            if debug:
                raise
            raise _stopped(err, ref, table, out, len(summary.done)) from None
        wall = time.perf_counter() - started
        rows = _versioned(table, _stamped(rows, wall))
        tables.write_part(out, table, ref.key, config_hash, rows)
        for stale in work.replaces.get(ref.key, []):
            stale.unlink(missing_ok=True)
        summary.done.append(ref)
        if ref in work.outdated:
            summary.recomputed.append(ref)
        summary.rows.extend(rows)
        notes = sorted({r["note"] for r in rows if r.get("note")})
        if notes:
            emit(SweepEvent("warning", ref, i, total, "; ".join(notes), rows))
        emit(SweepEvent("done", ref, i, total, f"{wall:.1f}s", rows))
    return summary


def _stopped(err: Exception, unit, table: str, out, done: int) -> SweepStopped:
    """The one line of an unexpected error, its traceback written to OUT/logs/ first."""
    stamp = runtime.now_iso().replace(":", "").replace("-", "")[:15]
    log = os.path.join(os.fspath(out), "logs", f"{table}-{stamp}-{os.getpid()}.log")
    text = (f"flatcli {table}: stopped while measuring {ref_of(unit).path} ({unit.key})\n"
            + "".join(traceback.format_exception(err)))
    try:
        atomic_write_text(log, text)
        where = f"traceback in {log}"
    except (OSError, WriteError):  # the log's own disk is full
        where = "the traceback could not be written (set FLATCLI_DEBUG=1 to see it)"
    return SweepStopped(
        f"stopped at {ref_of(unit).path}: {one_line(err, 300)} (not a problem of the checkpoint: "
        f"{done} finished checkpoint(s) kept; {where})"
    )
