"""report.md and report.html from one list of blocks: the settings and headline numbers first,
then the figures, then the per-run detail (collapsible in HTML) and the correlation tables."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from flatcli.report import headline, plots
from flatcli.report.columns import SHORT_LABELS, TARGETS, is_missing
from flatcli.report.findings import (
    ACROSS,
    OVERFITTING,
    compared,
    fmt_p,
    per_run,
    statistics_note,
)
from flatcli.report.headline import run_table  # noqa: F401  (flatcli.report exports it)


@dataclass
class Report:
    """What `build` computed and wrote."""

    table: pd.DataFrame  # per (run, epoch), `report` schema
    correlations: pd.DataFrame  # `correlations` schema
    runs: pd.DataFrame  # one row per run
    findings: dict[str, list[str]]
    missing: list[str]
    figures: dict[str, Path]
    written: list[Path]
    warnings: list[str] = field(default_factory=list)  # settings that differ, renamed runs
    settings: list[str] = field(default_factory=list)  # how each table was measured
    captions: dict[str, str] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)  # the first screen's sentences
    found: list = field(default_factory=list)  # findings.Finding records (value, se, test)


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if is_missing(value):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def correlation_view(corr: pd.DataFrame, within: bool = False) -> pd.DataFrame:
    """The across-run rows (with p and Holm p), or the within-run rows against the robust loss
    gap (coefficients only), with display names and formatted p-values."""
    if within:
        rows = corr[(corr.scope == "within run") & (corr.target == "rce_gap")]
    else:
        rows = corr[corr.scope != "within run"]
    rows = rows[rows.kendall.notna()]
    view = pd.DataFrame(
        {
            **({"run": rows.run} if within else {}),
            "measure": rows.measure.map(SHORT_LABELS),
            "target": rows.target.map(TARGETS),
            "n": rows.n,
            "Kendall tau": rows.kendall,
            **({} if within else {"p": rows.kendall_p.map(fmt_p)}),
            **({} if within else {"Holm p": rows.kendall_p_holm.map(fmt_p)}),
            "Spearman rho": rows.spearman,
            "Pearson r": rows.pearson,
        }
    )
    if not within and rows.kendall_p.isna().all():
        view = view.drop(columns=["p", "Holm p"])
    return view


def document(report: Report, how: str, outs: Sequence[Path]) -> list[tuple[str, object]]:
    """The report as blocks (kind, content), rendered to Markdown and HTML alike: the title and
    the findings first, then the settings, the runs' table, the figures, per-run detail (open
    where a run holds a finding) and the correlation tables."""
    df = report.table
    blocks: list[tuple[str, object]] = [
        ("h1", headline.title(df)),
        ("findings", report.headline or ["No finding: not enough data (see below)."]),
        ("h2", "Settings"),
        (
            "p",
            f"Inputs: {', '.join(f'`{o}`' for o in outs)}: {df.run.nunique()} run(s), "
            f"{df.checkpoint.notna().sum()} checkpoint(s) ({len(df)} epochs with a row).",
        ),
        ("ul", report.settings or ["No measurement rows."]),
    ]
    if report.warnings:
        blocks += [("h2", "Warnings"), ("ul", report.warnings)]
    if report.missing:
        blocks += [("h2", "Missing inputs"), ("ul", report.missing)]
    blocks += [("h2", "Runs"), ("table", report.runs), ("note", headline.TABLE_NOTE)]
    blocks += [("h2", ACROSS)]
    blocks += [("ul", report.findings[ACROSS] or ["Not enough data to compare runs."])]
    if not report.correlations.empty:
        blocks.append(("p", statistics_note(report.correlations, how)))
    if report.figures:
        blocks.append(("h2", "Figures"))
        for name, path in report.figures.items():
            blocks.append(("figure", (path, report.captions.get(name, name))))
    detail = per_run(df)
    overfit = {f.run for f in report.found if f.topic == OVERFITTING and f.beyond_noise}
    for title in ("Robust overfitting", "Flatness over training"):
        items = [(run, found[title], run in overfit)
                 for run, found in detail.items() if found[title]]  # fmt: skip
        blocks += [("h2", title), ("details", items or [("", ["Not enough data."], False)])]
    across = correlation_view(report.correlations)
    if not across.empty:
        which = compared(how)[0]
        blocks += [("h2", f"Correlations across runs ({which})"), ("table", across)]
    within = correlation_view(report.correlations, within=True)
    if not within.empty:
        blocks += [
            ("h2", "Correlations across the epochs of each run (with the robust loss gap)"),
            ("p", "Coefficients only: the epochs of one run are not independent samples."),
            ("table", within),
        ]
    return blocks


def _markdown_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = [
        "| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body]) + "\n"


def render_markdown(blocks, directory: Path) -> str:
    """report.md from the blocks; figure paths relative to `directory` (where it is written)."""
    lines = []
    for kind, content in blocks:
        if kind == "h1":
            lines.append(f"# {content}\n")
        elif kind == "h2":
            lines.append(f"\n## {content}\n")
        elif kind in ("p", "note"):
            lines.append(f"\n{content}\n")
        elif kind == "findings":
            lines += ["", "## Findings", "", *[f"- **{s}**" for s in content], ""]
        elif kind == "ul":
            lines += [f"- {s}" for s in content]
        elif kind == "details":
            lines += [f"- {s}" for _, sentences, _ in content for s in sentences]
        elif kind == "table":
            lines.append(_markdown_table(content))
        elif kind == "figure":
            path, caption = content
            lines.append(f"![{caption}]({path.relative_to(directory).as_posix()})\n\n{caption}\n")
    return "\n".join(lines) + "\n"


def inline(text: str) -> str:
    """Markdown's inline code as HTML: escaped text, `code` as <code>code</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


_NUMBER = re.compile(r"^[-+]?\d[\d.]*(e[-+]?\d+)?( ± [\d.]+)?[kM]?$")


def _align(value) -> str:
    """Numbers (and numbers written as text, `12.3 ± 0.4`) right-aligned, text left."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )
    if isinstance(value, str):
        number = bool(_NUMBER.match(value))
    return " class='num'" if number else ""


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{_align(v)}>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_WIDTH = round(plots.PAGE_WIDTH * plots.DPI) + 40  # the column fits the widest figure unscaled
_STYLE = (
    f"body{{font-family:sans-serif;max-width:{_WIDTH}px;margin:2em auto;padding:0 1em;"
    "line-height:1.45;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}th{background:#f3f3f3}"
    "img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{font-size:14px;color:#444}"
    "code{background:#f3f3f3;padding:0 3px;border-radius:3px}"
    "details{margin:.3em 0}summary{cursor:pointer;font-weight:600}"
    ".scroll{overflow-x:auto}"
    "#findings{background:#f6f8fa;border-left:4px solid #2f6fb0;padding:.2em 1em;margin:1em 0}"
    "#findings h2{margin:.4em 0}#findings li{margin:.4em 0}"
    "p.note{font-size:13px;color:#444;margin-top:0}h1{font-size:1.6em;line-height:1.25}"
)


def render_html(blocks) -> str:
    """A self-contained page: inline CSS, figures as base64 PNG data URIs, no external links."""
    title = next((c for k, c in blocks if k == "h1"), "flatcli report")
    parts = ["<!doctype html><html><head><meta charset='utf-8'>"]
    parts.append(f"<title>{html.escape(title)}</title>")
    parts.append(f"<style>{_STYLE}</style></head><body>")
    for kind, content in blocks:
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{inline(content)}</{kind}>")
        elif kind == "note":
            parts.append(f"<p class='note'>{inline(content)}</p>")
        elif kind == "findings":
            items = "".join(f"<li>{inline(s)}</li>" for s in content)
            parts.append(f"<section id='findings'><h2>Findings</h2><ul>{items}</ul></section>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{inline(s)}</li>" for s in content) + "</ul>")
        elif kind == "details":
            for summary, sentences, is_open in content:
                body = "".join(f"<p>{inline(s)}</p>" for s in sentences)
                attr = " open" if is_open else ""
                parts.append(
                    f"<details{attr}><summary>{inline(summary)}</summary>{body}</details>"
                )
        elif kind == "table":
            parts.append(f"<div class='scroll'>{_html_table(content)}</div>")
        elif kind == "figure":
            path, caption = content
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{inline(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "".join(parts)
