"""The report's plots: accuracy per category with 95% CIs, the reliability diagram, Δ per precision and
the distribution of the per-question letter KL per precision.

Drawn with matplotlib's object API: a bare Figure renders through the Agg canvas, with no display and no
pyplot global state. evalkit.report.html saves them as PNG files and embeds them in the page; only that
page imports this module, so `eval`, `report` without --html and `compare` never import matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from evalkit.report.calibration_tables import CalibrationRow
from evalkit.report.quantization import QuantTable
from evalkit.report.tables import BenchmarkTable
from evalkit.stats.calibration import DEFAULT_BINS, per_question, reliability
from evalkit.stats.published import name_key
from evalkit.types import LETTERS

CHANCE = 100 / len(LETTERS)  # accuracy (%) of a uniform guess among the four choices


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


def reliability_figure(rows: dict[str, list[CalibrationRow]], bins: int = DEFAULT_BINS) -> Figure | None:
    """The reliability diagram: accuracy against mean confidence per bin, one line per run and benchmark,
    each bin's marker area proportional to its questions (a bin of one question swings from 0 to 1 and
    must not look like evidence); None where no run has labeled questions."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    drawn = 0
    for task_rows in rows.values():
        for row in task_rows:
            if row.run.questions is None:
                continue
            points = [b for b in reliability(per_question(row.run.questions), bins) if b.n]
            if points:
                label = f"{row.run.task.title}: {row.label}"
                x, y = [b.confidence for b in points], [b.accuracy for b in points]
                (line,) = ax.plot(x, y, linewidth=1, alpha=0.8, label=label)
                total = sum(b.n for b in points)
                ax.scatter(x, y, s=[400 * b.n / total for b in points], color=line.get_color(), alpha=0.8)
                drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.set(
        xlabel="confidence of the top letter (bin mean)", ylabel="accuracy in bin", xlim=(0, 1), ylim=(0, 1)
    )
    ax.set_title(f"Reliability ({bins} equal-width bins; marker area: share of questions)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
