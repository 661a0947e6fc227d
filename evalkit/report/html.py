"""A report as one self-contained HTML page: the benchmark tables, the calibration and answer-order
tables, the precision table and plots (accuracy per category, the reliability diagram, Δ per precision,
and the distribution of the per-question letter KL per precision).

Plots are drawn with matplotlib's object API (a bare Figure renders through the Agg canvas: no
display and no pyplot global state), saved as PNG files beside the page and embedded in it as
base64 data URIs. The page uses no external CSS, script or font, so it opens offline and can be
mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from evalkit.report.calibration_tables import (
    NOTES,
    build_calibration_rows,
    calibration_frame,
    reliability_figure,
)
from evalkit.report.quantization import QuantTable, build_quant_table, show_precision
from evalkit.report.quantization_markdown import (
    CALIBRATION_NOTE,
    DIVERGENCE_NOTE,
    divergence_frame,
    quant_frame,
)
from evalkit.report.quantization_markdown import calibration_frame as quant_calibration_frame
from evalkit.report.tables import BenchmarkTable, build_tables
from evalkit.report.tables_markdown import count_frame, display_frame
from evalkit.stats.calibration import DEFAULT_BINS
from evalkit.stats.published import PublishedRow, name_key
from evalkit.store.records import ReportRun
from evalkit.types import LETTERS

CHANCE = 100 / len(LETTERS)  # accuracy (%) of a uniform guess among the four choices

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


def _legend(fig: Figure, extra: Sequence[Patch] = ()) -> None:
    handles, labels = fig.axes[0].get_legend_handles_labels()
    handles += list(extra)
    labels += [str(patch.get_label()) for patch in extra]
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")


def _whiskers(
    table: BenchmarkTable, label: str, values: Sequence[float], columns: Sequence[str]
) -> np.ndarray | None:
    """(2, columns) distances from each bar's top to its 95% CI bounds, in points; None without questions."""
    intervals = table.group_intervals.get(label)
    if not intervals:
        return None
    err = np.zeros((2, len(columns)))
    for j, (column, value) in enumerate(zip(columns, values, strict=True)):
        if (ci := intervals.get(column)) is not None:  # a percentile bound can sit a hair past the estimate
            err[:, j] = max(0.0, value - 100 * ci.low), max(0.0, 100 * ci.high - value)
    return err


def category_figure(table: BenchmarkTable) -> Figure:
    """Grouped bars: one group per category (and Average), one bar per run or published row; a published
    row shares the colour of the run it is set beside, hatched. Measured bars carry their bootstrap 95% CI
    as whiskers (where the run's questions were given); a dashed line marks chance (25%)."""
    rows = [(label, kind, figures) for label, kind, figures in table.rows() if kind != "delta"]
    columns = list(table.scores.columns)
    fig = Figure(figsize=(max(7.0, 1.2 * len(columns) + 0.2 * len(rows) + 3), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    colors: dict[str, str] = {}
    for label, kind, _ in rows:
        linked = [run for run, names in table.links.items() if label in names]
        if kind == "published" and linked:
            colors[label] = colors[linked[0]]
        else:
            colors[label] = f"C{len(set(colors.values())) % 10}"
    whiskers = False
    for i, (label, kind, figures) in enumerate(rows):
        x = np.arange(len(columns)) + (i - (len(rows) - 1) / 2) * width
        values = [0.0 if math.isnan(figures[c]) else figures[c] for c in columns]
        err = _whiskers(table, label, values, columns) if kind == "measured" else None
        whiskers = whiskers or err is not None
        ax.bar(
            x,
            values,
            width,
            label=label,
            yerr=err,
            capsize=3,
            error_kw={"linewidth": 0.9},
            color=colors[label],
            hatch="//" if kind == "published" else None,
            alpha=0.5 if kind == "published" else 1.0,
            edgecolor="black",
            linewidth=0.3,
        )
    ax.axhline(CHANCE, color="dimgray", linestyle="--", linewidth=1.0, label=f"chance ({CHANCE:.0f}%)")
    ax.set_xticks(np.arange(len(columns)), columns)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{table.title} per category" + (" (whiskers: 95% CI)" if whiskers else ""))
    ax.grid(axis="y", alpha=0.3)
    published = any(kind == "published" for _, kind, _ in rows)
    _legend(
        fig,
        [Patch(facecolor="white", edgecolor="black", hatch="//", label="hatched: published")]
        if published
        else [],
    )
    return fig


def precision_figure(table: QuantTable) -> Figure:
    """Δ of every compared row against its baseline per benchmark with its 95% CI; the published Δ of the
    same model and precision as a diamond on the bar."""
    rows = [row for row in table.rows if row.baseline is not None]
    tasks = list(table.titles)
    fig = Figure(figsize=(max(7.0, 2.0 * len(tasks) + 4), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(rows), 1)
    marked = set()
    for i, row in enumerate(rows):
        x = np.arange(len(tasks)) + (i - (len(rows) - 1) / 2) * width
        deltas = [row.cells[t].delta if t in row.cells else None for t in tasks]
        err = np.array(
            [[100 * (d.delta - d.ci.low), 100 * (d.ci.high - d.delta)] if d else [0.0, 0.0] for d in deltas]
        ).T
        ax.bar(
            x,
            [100 * d.delta if d else math.nan for d in deltas],
            width,
            yerr=err,
            capsize=3,
            label=f"{row.label} vs {row.baseline}",
            color=f"C{i % 10}",
        )
        for pub in table.published:
            if pub.precision == row.precision and name_key(pub.model) == name_key(row.model) and pub.deltas:
                ax.scatter(
                    [x[tasks.index(t)] for t in pub.deltas],
                    list(pub.deltas.values()),
                    marker="D",
                    color="crimson",
                    edgecolor="white",
                    zorder=3,
                    label=None if marked else "published Δ",
                )
                marked.add(pub.label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(tasks)), [table.titles[t] for t in tasks])
    ax.set_ylabel("Δ accuracy (points)")
    ax.set_title("Average against full precision (95% CI)")
    ax.grid(axis="y", alpha=0.3)
    _legend(fig)
    return fig


KL_FLOOR = 1e-6  # nats: a KL of 0 (identical letters) is drawn here, on the log axis


def kl_figure(table: QuantTable) -> Figure:
    """One panel per benchmark: the cumulative distribution of the per-question KL(P_A || P_B) of every
    compared row against its baseline (log axis, a KL of 0 drawn at KL_FLOOR; the median and the 99th
    percentile read off the curve)."""
    rows = [row for row in table.rows if row.baseline is not None]
    tasks = [t for t in table.titles if any(t in row.cells and row.cells[t].delta for row in rows)]
    fig = Figure(figsize=(max(8.0, 3.6 * len(tasks) + 5), 3.8), layout="constrained")
    axes = fig.subplots(1, max(len(tasks), 1), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=False):
        for i, row in enumerate(rows):
            delta = row.cells[task].delta if task in row.cells else None
            if delta is None or not delta.divergence.kl:
                continue
            kl = np.sort(np.maximum(np.asarray(delta.divergence.kl), KL_FLOOR))
            share = np.arange(1, len(kl) + 1) / len(kl)
            ax.step(
                kl,
                share,
                where="post",
                color=f"C{i % 10}",
                label=f"{row.label} vs {row.baseline} (mean {delta.divergence.kl_mean.value:.3g})",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.01 0.02 0.05 0.1 ...
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axhline(0.99, color="dimgray", linestyle=":", linewidth=0.8)
        ax.set_title(table.titles[task])
        ax.set_xlabel("KL(P_A ‖ P_B) per question (nats)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of questions (cumulative)")
    fig.suptitle("Letter KL per question against full precision (dotted: 99% of questions)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize="small")
    return fig


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
