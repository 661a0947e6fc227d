"""The benchmark tables (evalkit.report.tables) as text: figures and counts as strings, and the
README-style markdown of a whole report."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from evalkit.report.tables import BenchmarkTable, build_tables
from evalkit.report.text import markdown_table
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ReportRun


def display_frame(table: BenchmarkTable) -> pd.DataFrame:
    """Every row as one-decimal strings ("–" where absent, Δ signed), plus the CI column when there is one."""
    rows = table.rows()
    shown = pd.DataFrame(
        [[_cell(v, kind) for v in figures] for _, kind, figures in rows],
        index=[label for label, _, _ in rows],
        columns=table.scores.columns,
    )
    if table.intervals:
        shown["95% CI"] = [
            f"{100 * i.low:.1f}–{100 * i.high:.1f}" if (i := table.intervals.get(label)) else "–"
            for label in shown.index
        ]
    return shown.rename_axis(table.first_column)


def _cell(value: float, kind: str) -> str:
    return "–" if math.isnan(value) else f"{value:+.1f}" if kind == "delta" else f"{value:.1f}"


def count_frame(table: BenchmarkTable) -> pd.DataFrame:
    """The "questions (subjects)" behind each measured figure."""
    counts = table.questions.astype(str) + " (" + table.subjects.astype(str) + ")"
    return counts.where(table.questions.notna(), "–").rename_axis(table.first_column)


def to_markdown(
    runs: Sequence[ReportRun | tuple], published: Sequence[PublishedRow] = (), extra: Sequence[str] = ()
) -> str:
    """The README-style markdown: per benchmark the scores, the counts behind them, and the notes."""
    parts = []
    for table in build_tables(runs, published, extra).values():
        parts.append(f"## {table.title}\n")
        if len(table.scores) or len(table.published):
            parts.append(markdown_table(display_frame(table)))
        if len(table.scores):
            parts.append("Questions (subjects) behind each figure:\n")
            parts.append(markdown_table(count_frame(table)))
        parts.extend(f"- {note}" for note in table.notes)
        parts.append("")
    return "\n".join(parts)
