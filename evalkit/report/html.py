"""A report as one self-contained HTML page: the benchmark tables, the calibration and answer-order
tables, the precision table and plots (accuracy per category, the reliability diagram, Δ per precision,
and the distribution of the per-question letter KL per precision).

Plots (evalkit.report.plots) are saved as PNG files beside the page and embedded in it as base64
data URIs. The page uses no external CSS, script or font, so it opens offline and can be
mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from evalkit.report.calibration_tables import (
    NOTES,
    build_calibration_rows,
    calibration_frame,
)
from evalkit.report.plots import category_figure, kl_figure, precision_figure, reliability_figure
from evalkit.report.quantization import build_quant_table, show_precision
from evalkit.report.quantization_markdown import (
    CALIBRATION_NOTE,
    DIVERGENCE_NOTE,
    divergence_frame,
    quant_frame,
)
from evalkit.report.quantization_markdown import calibration_frame as quant_calibration_frame
from evalkit.report.tables import build_tables
from evalkit.report.tables_markdown import count_frame, display_frame
from evalkit.stats.calibration import DEFAULT_BINS
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ReportRun

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: center; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
tr.published td { font-style: italic; background: #f4f7fb; }
tr.delta td { color: #555; background: #fafafa; }
ul.notes { font-size: 0.85em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


@dataclass(frozen=True)
class HtmlReport:
    path: Path  # the page
    plots: tuple[Path, ...]  # the PNG files beside it (also embedded in the page)


def _html_table(frame: pd.DataFrame, kinds: Sequence[str] | None = None) -> str:
    """A plain table of strings; each body row gets its kind ("measured", "published", "delta") as class."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [frame.index.name or "", *frame.columns])
    body = []
    for i, (label, row) in enumerate(frame.iterrows()):
        cls = f' class="{kinds[i]}"' if kinds else ""
        cells = "".join(f"<td>{html.escape(str(v))}</td>" for v in [label, *row])
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _save(fig: Figure, path: Path) -> str:
    """Write the PNG file and return the same bytes as an <img> data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    data = buffer.getvalue()
    path.write_bytes(data)
    encoded = base64.b64encode(data).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{encoded}">'


def _notes(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    return '<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"


def _calibration_section(runs: Sequence[ReportRun], path: Path, plots: list[Path], bins: int) -> list[str]:
    """Calibration and answer-order tables per benchmark, with the reliability diagram (a PNG in `plots`)."""
    rows = build_calibration_rows(runs, bins)
    body = []
    for task_rows in rows.values():
        if any(row.figures is not None for row in task_rows):
            title = html.escape(task_rows[0].run.task.title)
            body.append(
                f"<h3>{title}: calibration and answer order</h3>" + _html_table(calibration_frame(task_rows))
            )
    figure = reliability_figure(rows, bins)
    if figure is not None:
        plots.append(path.with_name(f"{path.stem}-reliability.png"))
        body.append(_save(figure, plots[-1]))
    if body:
        body = ["<h2>Calibration and answer order</h2>", *body, _notes([n.format(bins=bins) for n in NOTES])]
    return body


def write_html(
    runs: Sequence[ReportRun | tuple],
    path: str | Path,
    published: Sequence[PublishedRow] = (),
    extra: Sequence[str] = (),
    quant_published: Sequence[PublishedRow] = (),
    quant: bool | None = None,
    bins: int = DEFAULT_BINS,
) -> HtmlReport:
    """The page at `path` and its plots beside it (`<stem>-<benchmark>.png`, `<stem>-precision.png`).

    `quant`: show the precision table (True), never (False), or when some model has several (None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [ReportRun(*r) for r in runs]
    body, plots = [], []
    for name, table in build_tables(runs, published, extra).items():
        body.append(f"<h2>{html.escape(table.title)}</h2>")
        if len(table.scores) or len(table.published):
            body.append(_html_table(display_frame(table), [kind for _, kind, _ in table.rows()]))
            plots.append(path.with_name(f"{path.stem}-{name}.png"))
            body.append(_save(category_figure(table), plots[-1]))
        if len(table.scores):
            body.append(
                "<details><summary>Questions (subjects) behind each figure</summary>"
                f"{_html_table(count_frame(table))}</details>"
            )
        body.append(_notes(table.notes))
    body += _calibration_section(runs, path, plots, bins)
    precision = build_quant_table(runs, quant_published)
    if show_precision(precision, quant):
        kinds = ["measured"] * len(precision.rows) + ["published"] * len(precision.published)
        body.append(
            "<h2>Precision</h2>" + _html_table(quant_frame(precision), kinds) + _notes(precision.notes)
        )
        if any(row.baseline is not None for row in precision.rows):
            plots.append(path.with_name(f"{path.stem}-precision.png"))
            body.append(_save(precision_figure(precision), plots[-1]))
        calibration = quant_calibration_frame(precision)
        if len(calibration):
            body.append(
                "<h3>Calibration, letter mass and answer order</h3>"
                + _html_table(calibration)
                + _notes([CALIBRATION_NOTE])
            )
        divergence = divergence_frame(precision)
        if len(divergence):
            body.append(
                "<h3>Letter distributions against full precision</h3>"
                + _html_table(divergence)
                + _notes([DIVERGENCE_NOTE])
            )
            plots.append(path.with_name(f"{path.stem}-kl.png"))
            body.append(_save(kl_figure(precision), plots[-1]))
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>evalkit report</title>'
        f"<style>{STYLE}</style></head><body><h1>evalkit report</h1>"
        f"<p>{len(runs)} runs. Accuracy in %, one decimal; Δ in accuracy points.</p>"
        f"{''.join(body)}</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return HtmlReport(path=path, plots=tuple(plots))
