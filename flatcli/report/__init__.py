"""`flatcli report`: `build` reads (sources), states the settings (settings), joins one row per
(run, epoch) (join), correlates (stats), writes sentences (findings), draws (figures, plots) and
renders report.md/html (render). Statistics: docs/method.md, "Report statistics"."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flatcli import files, tables
from flatcli.errors import UsageError
from flatcli.report import headline
from flatcli.report.columns import (
    ALPHA,
    FLATNESS_COLUMNS,
    FLATNESS_LABELS,
    HESSIAN,
    MEASURES,
    PLOTS,
    SELECTIONS,
    SHARPNESS_COLUMNS,
    SUMMARY,
    TARGETS,
    records,
)
from flatcli.report.figures import write_figures
from flatcli.report.findings import (
    TOPICS,
    Finding,
    across_runs_finding,
    compare,
    finding_records,
    findings,
    flatness_finding,
    fmt_p,
    overfitting_finding,
    with_uncertainty,
)
from flatcli.report.join import (
    chosen_xi,
    describe_regularizers,
    flatness_rows,
    per_epoch,
    select,
)
from flatcli.report.render import Report, document, render_html, render_markdown, run_table
from flatcli.report.settings import flatness_xis, settings_of
from flatcli.report.sources import Sources, load_sources, only_runs
from flatcli.report.stats import correlation, correlations, holm

__all__ = [
    "ALPHA",
    "TOPICS",
    "Finding",
    "FLATNESS_COLUMNS",
    "FLATNESS_LABELS",
    "HESSIAN",
    "MEASURES",
    "PLOTS",
    "SELECTIONS",
    "SHARPNESS_COLUMNS",
    "SUMMARY",
    "TARGETS",
    "Report",
    "Sources",
    "across_runs_finding",
    "build",
    "compare",
    "correlation",
    "correlations",
    "describe_regularizers",
    "findings",
    "flatness_finding",
    "fmt_p",
    "finding_records",
    "holm",
    "load_sources",
    "only_runs",
    "overfitting_finding",
    "per_epoch",
    "records",
    "render_html",
    "render_markdown",
    "run_table",
    "select",
    "with_uncertainty",
    "write_figures",
]


def build(
    outs: Sequence[Path],
    run_dirs: Sequence[Path] = (),
    how: str = "last",
    report_dir: Path | None = None,
    html_page: bool = False,
    labels: Sequence[str] | None = None,
    figures: bool = True,
    only: bool = False,
) -> Report:
    """Read, join, correlate, draw and write the report under `report_dir` (default: OUT[0]).

    `figures=False` skips drawing (most of the time a report takes); tables, report.md and the
    page are written all the same, without figures.

    `labels` (one per OUT) prefix the run names of each OUT (`label/run`); without them, a run
    name two OUTs use for different checkpoints is prefixed by the OUT's directory name.
    `only`: report the runs of `run_dirs` alone.
    """
    if how not in SELECTIONS:
        raise UsageError(f"--select {how!r}: choose last, best or all")
    if not outs:
        raise UsageError("give at least one OUT directory (where attack/flatness wrote tables)")
    sources = load_sources([Path(o) for o in outs], [Path(r) for r in run_dirs], labels)
    if only and run_dirs:
        sources = only_runs(sources, [Path(r) for r in run_dirs])
    warnings = list(sources.notes)
    table = per_epoch(sources, warnings)
    if table.empty:
        raise UsageError(
            f"no attack, flatness, landscape or train_log tables under {', '.join(map(str, outs))}"
            "; run `flatcli attack RUNS --out OUT` first"
        )
    rows = flatness_rows(sources.flatness)
    measured = settings_of(sources.attack, rows, sources.landscape, flatness_xis(rows, chosen_xi))
    warnings += measured.differences
    if measured.refused:
        warnings.append(f"Not compared across runs: {measured.refused}.")
    directory = Path(report_dir) if report_dir is not None else Path(outs[0])
    corr = correlations(table, how, across=measured.refused is None)
    drawn, captions = {}, {}
    if figures:
        drawn, captions = write_figures(table, sources.landscape, directory / PLOTS, how, corr)
    found = finding_records(table, corr, how, measured.refused)
    report = Report(
        table=table,
        correlations=corr,
        runs=run_table(table),
        findings={topic: [f.text for f in found if f.topic == topic] for topic in TOPICS},
        missing=sources.missing(),
        figures=drawn,
        written=[],
        warnings=warnings,
        settings=measured.lines,
        captions=captions,
        headline=headline.sentences(table, corr, how, measured.refused),
        found=found,
    )
    report.written = _write(report, directory, how, outs, html_page)
    return report


def _write(
    report: Report, directory: Path, how: str, outs: Sequence[Path], html_page: bool
) -> list[Path]:
    """Write the report's tables, report.md (and report.html); returns every file written,
    the figures' too."""
    written = [
        tables.write_table(directory, "report", records(report.table)),
        tables.write_table(directory, "correlations", records(report.correlations)),
    ]
    blocks = document(report, how, outs)
    written.append(
        files.atomic_write_text(directory / "report.md", render_markdown(blocks, directory))
    )
    if html_page:
        written.append(files.atomic_write_text(directory / "report.html", render_html(blocks)))
    return written + [p.with_suffix(s) for p in report.figures.values() for s in (".png", ".svg")]
