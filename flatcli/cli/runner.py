"""What every evaluation command does once its config is resolved: plan, dry-run, run the sweep
with progress on stderr, print the rows, exit with the sweep's code."""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from typer import Exit

from flatcli.cli import options as o
from flatcli.cli.output import Progress, render
from flatcli.errors import UsageError

PLAN_COLUMNS = ["run", "epoch", "key", "status", "checkpoint"]


def ensure_writable(out) -> None:
    """Create OUT or fail with one line before any work starts."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: not writable ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: not writable")


def run_command(
    *,
    table: str,
    units: Sequence,
    config,
    out,
    shard: str | None,
    force: bool,
    dry_run: bool,
    fmt: o.Format,
    quiet: bool,
    summary_columns: Sequence[str],
    describe: Callable[[object, int], str],
    measure: Callable[..., Callable],
    after: Callable[[list[dict], Progress], None] | None = None,
) -> None:
    """Sweep `measure(device)` over this shard's `units` into OUT/<table>; always raises Exit.

    `describe(device, n_units)` is the one stderr line that says what will run. `measure(device)`
    or `measure(device, on_batch)` builds the per-checkpoint measure; the second form gets
    `on_batch(done, total, label="examples")` for progress inside a checkpoint. `after(rows,
    progress)` may write extras (figures) from the rows before they are printed. Ends with
    `N done, N skipped, N failed (Xs)` on stderr (not with --quiet).
    """
    from flatcli import runtime, sweep, tables
    from flatcli.config import config_hash

    shard_spec = sweep.parse_shard(shard)
    device = runtime.resolve_device(config.device)
    chash = config_hash(config)
    if dry_run:
        plan = sweep.plan(units, table, out, chash, shard_spec, force)
        rows = [
            {
                "run": u.run,
                "epoch": u.epoch,
                "key": u.key,
                "status": status,
                "checkpoint": str(u.path),
            }
            for status, group in (("todo", plan.todo), ("done", plan.skipped))
            for u in group
        ]
        render(rows, PLAN_COLUMNS, fmt.value, PLAN_COLUMNS)
        raise Exit(0)
    ensure_writable(out)
    progress = Progress(quiet, table)
    progress.log(f"{table}: {describe(device, len(shard_spec.take(units)))}")
    with progress:
        summary = sweep.run(
            units,
            _build_measure(measure, device, progress.on_batch, progress.log),
            table,
            out,
            chash,
            shard_spec,
            force,
            progress,
            debug=o.debug_enabled(),
        )
    if after is not None:
        after(summary.rows, progress)
    render(summary.rows, tables.columns(table), fmt.value, summary_columns)
    progress.summary(len(summary.done), len(summary.skipped), len(summary.failed))
    raise Exit(summary.exit_code)


def _build_measure(measure: Callable[..., Callable], device, on_batch, on_note) -> Callable:
    """`measure(device, on_batch)` where the command's builder takes a progress callback;
    `measure(device)` where it does not yet (then only per-checkpoint progress shows);
    `measure(device, on_batch, on_note)` where it also reports lines (compile time) on stderr."""
    if len(inspect.signature(measure).parameters) >= 3:
        return measure(device, on_batch, on_note)
    if len(inspect.signature(measure).parameters) >= 2:
        return measure(device, on_batch)
    return measure(device)
