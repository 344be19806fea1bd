"""`flatcli report`: one per-epoch table, correlations of flatness with robust generalization,
figures, report.md (and a self-contained report.html)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from flatcli.cli import options as o
from flatcli.cli.output import err_console, render
from flatcli.files import ensure_writable


class Select(str, Enum):
    last = "last"
    best = "best"
    all = "all"


Outs = Annotated[
    list[Path],
    typer.Argument(
        help="Output directories of attack/flatness/landscape (OUT of those commands).",
        show_default=False,
        metavar="OUT",
    ),
]
Runs = Annotated[
    list[Path] | None,
    typer.Option(
        "--runs",
        help="Report only these runs: their directories (of `flatcli train`: run.json, "
        "train_log); repeat for several. The report then goes to OUT/report-A-B unless --out "
        "is given. Default: every run in the tables and under each OUT.",
        rich_help_panel="Inputs",
        metavar="PATH",
    ),
]
SelectOpt = Annotated[
    Select,
    typer.Option(
        help="The epoch of each run correlated across runs: last, best (early stopping on "
        "held-out robust error), or all checkpoints pooled (coefficients only: the epochs "
        "of a run are not independent).",
        rich_help_panel="Measure",
    ),
]
Html = Annotated[
    bool,
    typer.Option(
        "--html",
        help="Also write a self-contained report.html (figures inline).",
        rich_help_panel="Output",
    ),
]
Figures = Annotated[
    bool,
    typer.Option(
        "--figures/--no-figures",
        help="Draw report_plots/ (PNG and SVG); --no-figures writes the tables and text only, "
        "much faster.",
        rich_help_panel="Output",
    ),
]
Label = Annotated[
    str | None,
    typer.Option(
        "--label",
        help="One label per OUT, comma-separated (e.g. a,b): run names become label/run, so two "
        "experiments with runs of the same name stay apart. Default: none, unless two OUTs hold "
        "different runs of one name (then each OUT's directory name, with a note).",
        rich_help_panel="Inputs",
        metavar="LIST",
    ),
]
ReportDir = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Where the report goes (default: the first OUT; with --runs, OUT/report-A-B, "
        "named after the runs, so the full report is never overwritten).",
        rich_help_panel="Output",
    ),
]


def default_directory(first_out: Path, runs: list[Path]) -> Path:
    """The first OUT for every run; OUT/report-A-B (the runs' directory names) for a subset."""
    if not runs:
        return first_out
    names = "-".join(dict.fromkeys(p.resolve().name or "run" for p in runs))
    return first_out / f"report-{names}"


def report(
    outs: Outs,
    runs: Runs = None,
    label: Label = None,
    select: SelectOpt = Select.last,
    fmt: o.FormatOpt = o.Format.table,
    html: Html = False,
    figures: Figures = True,
    out: ReportDir = None,
    quiet: o.Quiet = False,
):
    """Join the tables per (run, epoch), correlate flatness with robust generalization, draw
    the figures and state the findings; writes REPORT_DIR/report (Parquet), /correlations,
    /report_plots, report.md and, with --html, report.html. Prints one row per run.

    Missing tables are allowed: the report says what is missing and which command computes it.

    Runs measured with different settings are named (stderr and report.md); a different
    threat model (dataset, eps, norm) refuses the comparison across runs.

    Example: flatcli report demo_out --html

    Two runs only (written to demo_out/report-at-awp): flatcli report demo_out --runs
    demo_out/runs/at --runs demo_out/runs/awp --html
    """
    from flatcli import report as core
    from flatcli.errors import UsageError

    for path in outs:
        if not path.is_dir():  # before ensure_writable, which would create it
            raise UsageError(f"{path}: no such directory")
    directory = out if out is not None else default_directory(outs[0], runs or [])
    for run_dir in runs or []:
        if not run_dir.is_dir():
            raise UsageError(f"--runs {run_dir}: no such directory")
    ensure_writable(directory)
    labels = None if label is None else label.split(",")
    result = core.build(
        outs, runs or [], select.value, directory, html, labels, figures, only=bool(runs)
    )
    for warning in result.warnings:  # even with --quiet: a comparison may be invalid
        err_console.print(f"flatcli: warning: {warning}", markup=False)
    if not quiet:
        for note in result.missing:
            err_console.print(f"flatcli: note: {note}", markup=False)
        err_console.print(
            f"report: {len(result.table)} (run, epoch) row(s) of {result.table.run.nunique()} "
            "run(s); "
            f"wrote {', '.join(str(p) for p in result.written if p.suffix != '.svg')}",
            markup=False,
        )
    chosen = core.records(core.select(result.table, select.value))
    if fmt.value == "table":  # for reading: errors in %, each with ± its standard error
        chosen = [core.with_uncertainty(row) for row in chosen]
    render(chosen, list(result.table.columns), fmt.value, core.SUMMARY)
