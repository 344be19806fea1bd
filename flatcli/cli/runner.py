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
    resolve: Callable,
    summary_columns: Sequence[str],
    describe: Callable[[object, Sequence, object, int], str],
    measure: Callable[..., Callable],
    units: Callable[[object, Sequence], Sequence] = lambda config, refs: refs,
    after: Callable[[list[dict], Progress], None] | None = None,
) -> None:
    """Resolve `config` against the checkpoints under `args.paths`, then sweep
    `measure(config, device, on_batch, on_note)` over this shard's `units(config, refs)` into
    OUT/<table>;
    always raises Exit.

    `describe(config, refs, device, n_units)` is the one stderr line that says what will run;
    `on_batch(done, total, label="examples")` reports progress inside a checkpoint. `after(rows,
    progress)` may write extras (figures) from the rows before they are printed. Ends with
    `N done, N skipped, N failed (Xs)` on stderr (not with --quiet).
    """
    from flatcli import checkpoints, runtime, sweep, tables
    from flatcli.attacks import precision
    from flatcli.config import config_hash

    refs = checkpoints.discover(args.paths)
    config = resolve(config, refs)
    units = units(config, refs)
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
    progress = Progress(args.quiet, table)
    if precision_note is not None:
        progress.log(precision_note)
    progress.log(f"{table}: {describe(config, refs, device, len(shard_spec.take(units)))}")
    with progress:
        summary = sweep.run(
            units,
            measure(config, device, progress.on_batch, progress.log),
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
