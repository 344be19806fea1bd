"""What every evaluation command does with its config: resolve it against the checkpoints, plan or
dry-run, sweep with progress on stderr, print the rows, exit with the sweep's code."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from typer import Exit

from flatcli import files
from flatcli.cli import options as o
from flatcli.cli.output import Progress, render

PLAN_COLUMNS = ["run", "epoch", "key", "status", "checkpoint"]


def examples_line(config) -> str:
    """What every evaluation runs on, for the describe line: dataset, split, n, eps, norm."""
    return (
        f"{config.dataset} {config.split} n={config.n_examples}, eps={config.eps:g} "
        f"({config.norm})"
    )


def run_command(
    table: str,
    config,
    args: o.Sweep,
    *,
    summary_columns: Sequence[str],
    describe: Callable[[object, Sequence, object, int], str],
    progress_label: str = "examples",
    after: Callable[[list[dict], Progress], None] | None = None,
) -> None:
    """Resolve `config` against the checkpoints under `args.paths`, then sweep the table's
    registered measure (`flatcli.measures.table`) over this shard's units into OUT/<table>;
    always raises Exit.

    `describe(config, refs, device, n_units)` is the one stderr line that says what will run;
    Progress inside a unit is counted in `progress_label` (examples, grid points). `after(rows,
    progress)` may write extras (figures) from the rows before they are printed. Ends with
    `N done, N skipped, N failed (Xs)` on stderr (not with --quiet).
    """
    from flatcli import checkpoints, measures, runtime, sweep, tables
    from flatcli.attacks import precision
    from flatcli.config.commands import config_hash

    entry = measures.table(table)
    refs = checkpoints.discover(args.paths)
    config = entry.resolve(config, refs)
    units = entry.units(config, refs)
    shard_spec = sweep.parse_shard(args.shard)
    device = runtime.resolve_device(config.device)
    config, precision_note = precision.usable(config, device)
    chash = config_hash(config)
    if args.dry_run:
        plan = sweep.plan(units, table, args.out, chash, shard_spec, args.force)
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
        render(rows, PLAN_COLUMNS, args.fmt.value, PLAN_COLUMNS)
        raise Exit(0)
    files.ensure_writable(args.out)
    runtime.keep_freed_memory()
    progress = Progress(args.quiet, table)
    if precision_note is not None:
        progress.log(precision_note)
    progress.log(f"{table}: {describe(config, refs, device, len(shard_spec.take(units)))}")
    with progress:
        summary = sweep.run(
            units,
            entry.measure(config, device, _counted(progress, progress_label), progress.log),
            table,
            args.out,
            chash,
            shard_spec,
            args.force,
            progress,
            debug=o.debug_enabled(),
        )
    if after is not None:
        after(summary.rows, progress)
    render(summary.rows, tables.columns(table), args.fmt.value, summary_columns)
    progress.summary(len(summary.done), len(summary.skipped), len(summary.failed),
                     len(summary.recomputed))
    raise Exit(summary.exit_code)


def _counted(progress: Progress, label: str) -> Callable[[int, int], None]:
    """`on_batch(done, total)` for the measure, counting `label` on the progress bar."""
    return lambda done, total: progress.on_batch(done, total, label)
