"""The report page: its sections in order (figures drawn as they come, tables written after), as index.html and report.md."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.report.build import PaperPlan, cam_table, comparison_table, paper_plan, paper_table, per_finding_table
from harness.report.conclusions import Summary, summarise
from harness.report.context import Context
from harness.report.crossdata import records, transfer_figure, transfer_pairs_table, transfer_table
from harness.report.drawing import Drawn, supplementary
from harness.report.figures import (
    bar_figure,
    calibration_figure,
    cam_figures,
    heatmap_figure,
    loss_figure,
    roc_figures,
)
from harness.report.methods import methods
from harness.report.paired import axis_plan, family_comparisons, method_note, paired_table
from harness.report.paper import DASH, PAPER_TABLES, PLACEHOLDER_TITLE, SYNTHETIC_WARNING, WEIGHTS_WARNING
from harness.report.tables import Table
from harness.report.testset import testset_table


@dataclass
class Section:
    """One part of the page: its heading, its HTML and Markdown, and the tables whose files it links to."""

    title: str
    html: str
    markdown: str = ""
    tables: tuple[Table, ...] = ()  # written as .md, .tex and .csv by write_tables, apart from building the page


def _img(fig: Drawn) -> str:
    # The caption is the alt text too: a figure pasted without its caption, or read aloud, still says what it shows.
    alt = html.escape(fig.caption)
    pdf = f" <a href='{html.escape(fig.pdf)}'>PDF</a>" if fig.pdf else ""
    return f"<figure><img src='{html.escape(fig.png)}' alt='{alt}'><figcaption>{alt}{pdf}</figcaption></figure>\n"


def _md(fig: Drawn) -> str:
    return f"\n![{fig.caption}]({fig.png})" + (f" [PDF]({fig.pdf})" if fig.pdf else "") + "\n"


def _warning(texts: list[str]) -> Section:
    """Every warning of the page in one block at its top: what the numbers are not."""
    return Section(
        "Warning" if len(texts) == 1 else "Warnings",
        "".join(f"<p class='warning'>{html.escape(t)}</p>\n" for t in texts),
        "".join(f"**{t}**\n\n" for t in texts),
    )


def _summary(title: str, summary: Summary, method: str) -> Section:
    """The summary's sentences, one per line, and how they were tested: at the page's top and at its end."""
    lines = summary.sentences()
    return Section(
        title,
        "<div class='summary'><ul>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in lines)
        + f"</ul><p class='note'>{html.escape(method)}</p></div>\n",
        "\n".join(f"- {s}" for s in lines) + f"\n\n{method}\n",
    )


def _table(table: Table, fig: Drawn | None = None) -> Section:
    """A section headed by the table's own title (not repeated below it), with its figure where it has one."""
    return Section(
        table.title,
        table.html(heading=False) + (_img(fig) if fig else ""),
        table.markdown(heading=False) + (_md(fig) if fig else ""),
        tables=(table,),
    )


def _listing(title: str, items: list[str]) -> Section:
    return Section(
        f"{title} ({len(items)})",
        "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>\n",
        "\n".join(f"- {i}" for i in items) + "\n",
    )


def _methods(ctx: Context) -> Section:
    items = [(k, v if v.endswith(".") else v + ".") for k, v in methods(ctx)]  # each item ends as a sentence
    lead = (
        "Each choice the paper leaves open, and the value these trials used (read from each trial.json and "
        "metrics.json); rows marked as the harness's choice are not in the paper's recipe at all:"
    )
    return Section(
        "Methods",
        f"<p>{html.escape(lead)}</p><ul>"
        + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in items)
        + "</ul>\n",
        lead + "\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in items) + "\n",
    )


def _finding_names(ctx: Context) -> list[str]:
    # metrics.json is written with sorted keys, so the findings' order comes from "names", not per_finding.
    for r in ctx.results:
        if r.metrics.get("names"):
            return [str(n) for n in r.metrics["names"]]
    return [str(n) for n in ctx.predictions(ctx.results[0])["names"]] if ctx.results else []


def draw_sections(ctx: Context) -> list[Section]:
    """Every part of the report, in page order, with its figures drawn; no table is written (write_tables does).

    Drawing a figure writes its PNG and PDF (figures.py), so this writes those files; the tables are only built.
    """
    sections = _warning_sections(ctx)
    if ctx.results:
        sections += _results_sections(ctx)
    return sections + _cam_sections(ctx) + _left_out_sections(ctx)


def write_tables(out_dir: Path, sections: list[Section]) -> None:
    """Each section's tables as Markdown, LaTeX and CSV files: the files the page's links point at."""
    for section in sections:
        for table in section.tables:
            table.write(out_dir)


def _warning_sections(ctx: Context) -> list[Section]:
    """The warnings block, when there is anything the numbers are not (synthetic data, stand-in weights, ...)."""
    warnings = [
        *([SYNTHETIC_WARNING] if ctx.synthetic else []),
        *([WEIGHTS_WARNING.format(archs=", ".join(ctx.unverified_weights))] if ctx.unverified_weights else []),
        *([ctx.nih_warning()] if ctx.nih_warning() else []),
    ]
    return [_warning(warnings)] if warnings else []


def _results_sections(ctx: Context) -> list[Section]:
    """The sections of the finished trials: the paired tests run first, as one family, then each section."""
    plans = [
        (number, what, paper_plan(ctx, number=number, pretrained=pretrained, stem=stem, fig_stem=fig, what=what))
        for stem, number, pretrained, fig, what in PAPER_TABLES
        for what in [PLACEHOLDER_TITLE if pretrained and ctx.unverified_weights else what]
    ]
    axes = axis_plan(ctx)
    # One family: the axis tests and the tables' tests against their reference, each pair once. Settled before
    # any section is built, so that the summary at the top, the tables' marks and the paired table all read the
    # same adjusted p of a pair and none can contradict another.
    ctx.settle([(a, b, axis) for axis, a, b in axes.pairs] + [t for *_, plan in plans if plan for t in plan.pairs()])
    tests = family_comparisons(ctx)
    summary = summarise(ctx, tests)
    sections = [_summary("Summary", summary, method_note(ctx, tests)), _methods(ctx)]
    sections += [_paper_table_section(ctx, number, what, plan) for number, what, plan in plans]
    sections += _loss_sections(ctx)
    names = _finding_names(ctx)
    per_finding = per_finding_table(ctx, names)
    numbers = supplementary()  # S1, S2, ... in page order: each figure below takes the next as it is drawn
    sections.append(_table(per_finding, heatmap_figure(ctx, per_finding, names, next(numbers))))
    if (split := testset_table(ctx, names)) is not None:
        sections.append(_table(split))
    sections.append(_curves_section(ctx, numbers))
    sections += [_table(comparison_table(ctx)), _table(paired_table(ctx, tests, axes))]
    # The summary again at the end, where a reader who went through the tables looks for the verdict.
    sections.append(_summary("What can be concluded", summary, method_note(ctx, tests)))
    return sections + _transfer_sections(ctx, numbers)


def _paper_table_section(ctx: Context, number: int, what: str, plan: PaperPlan | None) -> Section:
    """One of the paper's Tables 1-2 with its bar chart, or a line saying this grid has no such results."""
    if plan is None:
        msg = f"Table {number} ({what}): no such results in this grid."
        return Section(f"Table {number}", f"<p>{html.escape(msg)}</p>\n", msg + "\n")
    return _table(paper_table(ctx, plan), bar_figure(ctx, plan))


def _loss_sections(ctx: Context) -> list[Section]:
    """The training loss per epoch (the paper's Figure 3), naming the trials whose history could not be read."""
    loss, skipped = loss_figure(ctx)
    if not (loss or skipped):
        return []
    msg = f"No readable history.csv for: {', '.join(skipped)}." if skipped else ""
    return [
        Section(
            "Loss per epoch",
            (_img(loss) if loss else "") + (f"<p class='note'>{html.escape(msg)}</p>\n" if msg else ""),
            (_md(loss) if loss else "") + (msg + "\n" if msg else ""),
        )
    ]


def _curves_section(ctx: Context, numbers: Iterator[str]) -> Section:
    """The ROC curves of each arch and the calibration figure, numbered in page order."""
    figs = [*roc_figures(ctx, numbers), calibration_figure(ctx, next(numbers))]
    return Section("Curves", "".join(_img(fig) for fig in figs), "".join(_md(fig) for fig in figs))


def _transfer_sections(ctx: Context, numbers: Iterator[str]) -> list[Section]:
    """`harness evaluate`'s scores on other datasets, when there are any: the table, its figure, the pairs."""
    found = records(ctx)
    if not found:
        return []
    sections = [_table(transfer_table(ctx, found), transfer_figure(ctx, found, next(numbers)))]
    if (pairs := transfer_pairs_table(ctx, found)) is not None:
        sections.append(_table(pairs))
    return sections


def _cam_sections(ctx: Context) -> list[Section]:
    """The Grad-CAM box scores and overlays of the trials `harness cam` ran on (also with no finished trials)."""
    cam = cam_table(ctx)
    if cam is None:
        return []
    figures = cam_figures(ctx)
    return [
        Section(
            cam.title,
            cam.html(heading=False) + "".join(_img(Drawn(f, f)) for f in figures),
            cam.markdown(heading=False) + "".join(f"\n![{f}]({f})" for f in figures) + "\n",
            tables=(cam,),
        )
    ]


def _left_out_sections(ctx: Context) -> list[Section]:
    """The failed trials with their reasons, and the broken ones left out: nothing is dropped silently."""
    sections = []
    if ctx.failures:
        items = [
            f"{f.get('label', '?')} ({f.get('key', '?')}): {f.get('reason', 'no reason recorded')}"
            for f in ctx.failures
        ]
        sections.append(_listing("Failed trials", items))
    if ctx.broken:
        sections.append(_listing("Broken trials, left out", [str(b) for b in ctx.broken]))
    return sections


# .wide: a table with a column per cell of a large grid scrolls sideways instead of squeezing its numbers into
# columns too narrow to read.
_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:90%}"
    "th{background:#eee}.note,.files{font-size:85%;color:#444;margin:.2em 0}"
    ".warning{background:#c00;color:#fff;font-weight:bold;padding:.8em;font-size:110%}"
    "img{max-width:100%}figure{margin:1em 0}.wide{overflow-x:auto;max-width:100%}"
    ".summary{border:1px solid #888;background:#f6f6f6;padding:.2em 1em}"
)


def _header(ctx: Context) -> tuple[str, list[tuple[str, str]]]:
    """The page's title and the facts table under it: what was run, by which code, and when."""
    # Every commit the trials were made by, each marked -dirty when its tree had changes: a report that mixes
    # code versions says so in its second table, where a reader checks what produced the numbers.
    commits = sorted(
        {
            f"{r.metrics.get('git_commit', 'unknown')}{'-dirty' if r.metrics.get('git_dirty') else ''}"
            for r in ctx.results
        }
    ) or ["none"]
    versions = sorted({str(r.metrics.get("harness_version", "?")) for r in ctx.results}) or ["none"]
    # UTC: reports made on machines in different time zones still order by date.
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"{ctx.grid_dir.name}: {ctx.dataset_title if ctx.results else 'no finished trials'}"
    trials = f"{len(ctx.results)} done, {len(ctx.failures)} failed" + (
        f", {len(ctx.broken)} broken (left out)" if ctx.broken else ""
    )
    facts = [
        ("Dataset", ctx.dataset_title if ctx.results else DASH),
        ("Grid", ctx.grid_dir.name),
        ("Results", str(ctx.grid_dir)),
        ("Commit(s)", ", ".join(commits)),
        ("Harness version(s)", ", ".join(versions)),
        ("Trials", trials),
        ("Report date", date),
    ]
    return title, facts


def render_html(ctx: Context, sections: list[Section]) -> str:
    title, facts = _header(ctx)
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    body = "".join(f"<section><h2>{html.escape(s.title)}</h2>\n{s.html}</section>\n" for s in sections)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n<table>{facts_html}</table>\n"
        f"{body}</body></html>\n"
    )


def render_markdown(ctx: Context, sections: list[Section]) -> str:
    title, facts = _header(ctx)
    head = "\n".join(f"- {k}: {v}" for k, v in facts)
    return f"# {title}\n\n{head}\n\n" + "\n".join(f"## {s.title}\n\n{s.markdown}" for s in sections)
