"""The precision table (evalkit.report.quantization) as text: its rows and the divergence table as
strings, and their markdown."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from evalkit.report.quantization import QuantCell, QuantTable
from evalkit.report.text import markdown_table
from evalkit.stats.divergence import divergence_cell

GIB = 2**30


def _cell(cell: QuantCell | None) -> str:
    if cell is None:
        return "–"
    text = f"{100 * cell.metric.accuracy:.1f}"
    if (d := cell.delta) is not None:
        text += f" ({100 * d.delta:+.1f} [{100 * d.ci.low:+.1f}, {100 * d.ci.high:+.1f}])"
    return text


def _row_labels(table: QuantTable) -> list[str]:
    """Each row's name in the frames; rows of different settings may share a label."""
    counts = Counter(row.label for row in table.rows)
    return [
        row.label if counts[row.label] == 1 else f"{row.label} (comparison {row.group + 1})"
        for row in table.rows
    ]


def quant_frame(table: QuantTable) -> pd.DataFrame:
    """The table as strings: "49.9 (-1.7 [-2.4, -1.0])" = Average (Δ [95% CI]) against the baseline."""

    def gib(value: int | None) -> str:
        return "–" if value is None else f"{value / GIB:.2f}"

    data = {
        name: {
            **{t: _cell(row.cells.get(name)) for name, t in table.titles.items()},
            "Weights (GiB)": gib(row.weight_bytes),
            "Peak load (GiB)": gib(row.peak_bytes) + (f" {row.peak_kind}" if row.peak_kind else ""),
            "Scoring (min)": f"{row.scoring_seconds / 60:.1f}" + ("*" if row.resumed else ""),
            "Load (s)": "–" if row.load_seconds is None else f"{row.load_seconds:.0f}",
        }
        for name, row in zip(_row_labels(table), table.rows, strict=True)
    }
    for pub in table.published:
        data[f"{pub.label} (published)"] = {
            **{
                t: "–"
                if name not in pub.averages
                else f"{pub.averages[name]:.1f}"
                + (f" ({pub.deltas[name]:+.1f})" if name in pub.deltas else "")
                for name, t in table.titles.items()
            },
            "GPU Mem (GB, published)": "–" if pub.memory_gb is None else f"{pub.memory_gb:.1f}",
        }
    return pd.DataFrame.from_dict(data, orient="index").fillna("–").rename_axis("Model")


def divergence_frame(table: QuantTable) -> pd.DataFrame:
    """Per compared row and benchmark, its letter distributions against its baseline's, as strings:
    "KL 0.012 [0.010, 0.015], p95 0.05, p99 0.21; agree 97.1 [96.3, 97.9]%; abs Δp(gold) 0.81%"."""
    data = {}
    for name, row in zip(_row_labels(table), table.rows, strict=True):
        if row.baseline is None:
            continue
        cells = {t: row.cells[task].delta for task, t in table.titles.items() if task in row.cells}
        if all(d is None for d in cells.values()):
            continue  # no questions behind the row: nothing to measure
        data[name] = {
            "against": row.baseline,
            **{t: "–" if d is None else divergence_cell(d.divergence) for t, d in cells.items()},
        }
    return pd.DataFrame.from_dict(data, orient="index").fillna("–").rename_axis("Model")


def calibration_frame(table: QuantTable) -> pd.DataFrame:
    """Per row and benchmark: ECE (points), Brier, mean letter mass, circular accuracy and position skew,
    as strings ("ECE 4.1 · Brier 0.612 · mass 0.873 · circular 31.0 · position skew 6.0"); "–" where a
    row has no such figure."""
    data = {}
    for name, row in zip(_row_labels(table), table.rows, strict=True):
        cells = {}
        for task, title in table.titles.items():
            cell = row.cells.get(task)
            figures = None if cell is None else cell.figures
            if figures is None:
                cells[title] = "–"
                continue
            cal, mass, rob = figures.calibration, figures.mass, figures.robustness
            parts = [f"ECE {100 * cal.ece:.1f} · Brier {cal.brier:.3f}" if cal else "ECE – · Brier –"]
            mass_text = "–" if mass.mean is None else f"{mass.mean:.3f}"
            if mass.mean is not None and mass.n < mass.of:
                mass_text += f" ({mass.n}/{mass.of})"
            parts.append(f"mass {mass_text}")
            parts.append(f"circular {'–' if rob is None else f'{100 * rob.circular.accuracy:.1f}'}")
            if figures.bias is not None:
                parts.append(f"position skew {100 * figures.bias.largest_skew:.1f}")
            cells[title] = " · ".join(parts)
        if any(v != "–" for v in cells.values()):
            data[name] = cells
    return pd.DataFrame.from_dict(data, orient="index").fillna("–").rename_axis("Model")


CALIBRATION_NOTE = (
    "ECE: top-letter expected calibration error in points (10 equal-width bins, pooled over the "
    "benchmark's questions); Brier: mean sum over the four letters of (p - y)², 0-2; mass: mean "
    "full-vocabulary probability of the four letters (n/N: questions that carry it); circular: right "
    "under all four option rotations (--permute cyclic runs); position skew: the largest |picked - gold| "
    "share of a letter, points."
)


DIVERGENCE_NOTE = (
    "Letter distributions: KL(P_A ‖ P_B) over the four letters, in nats, of the row (B) "
    "from its baseline (A): mean [95% CI], 95th and 99th percentile; agree: questions whose "
    "top letter is the same [95% CI]; abs Δp(gold): mean absolute change of the gold letter's "
    "probability. Paired bootstrap over the shared questions."
)


def quant_markdown(table: QuantTable) -> str:
    """The precision table, then (where rows have them) the letter distributions against full precision
    and the calibration, letter mass and answer-order figures per row."""
    notes = "".join(f"- {n}\n" for n in table.notes)
    text = f"## Precision\n\n{markdown_table(quant_frame(table))}\n{notes}"
    divergence = divergence_frame(table)
    if len(divergence):
        text += (
            f"\n### Letter distributions against full precision\n\n{markdown_table(divergence)}\n"
            f"- {DIVERGENCE_NOTE}\n"
        )
    calibration = calibration_frame(table)
    if len(calibration):
        text += f"\n### Calibration, letter mass and answer order\n\n{markdown_table(calibration)}\n"
        text += f"- {CALIBRATION_NOTE}\n"
    return text
