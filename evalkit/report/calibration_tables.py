"""The calibration and robustness table of a report: per benchmark, one row per run with ECE and Brier
(95% CI), mean letter mass (and the questions that carry it), circular accuracy, mean accuracy over
rotations and position bias; the same figures per category and Average for the CSV (the reliability
diagram: evalkit.report.plots). "–" where a run has no data for a figure (saved before it existed, a plain
run's rotations): nothing is recomputed or guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from evalkit.report.tables import _labels as row_labels  # the accuracy table's row labels, shared
from evalkit.report.text import AVERAGE, markdown_table
from evalkit.stats.calibration import DEFAULT_BINS
from evalkit.stats.summary import GroupFigures, run_summary
from evalkit.store.records import ReportRun
from evalkit.types import LETTERS

DASH = "–"
NOTES = (
    "ECE: expected calibration error of the top letter (renormalised over the four), points, {bins} "
    "equal-width confidence bins, pooled over the benchmark's questions; Brier: mean over questions of "
    "the sum over the four letters of (p - y)², 0-2. [95% CI]: bootstrap, questions resampled within "
    "subjects.",
    "Letter mass: mean over questions of the four letters' summed probability in the full vocabulary at "
    "the answer position (n/N where only n of N questions carry it: runs saved before it was recorded).",
    "Circular: right under all four cyclic rotations of the options (--permute cyclic runs only); Rot. "
    "mean: accuracy averaged over rotations. Picked vs gold: % of answers per letter A/B/C/D against % "
    "gold.",
)


@dataclass(frozen=True)
class CalibrationRow:
    """One run of a benchmark: its label and figures per group (categories, extra groups, Average)."""

    label: str
    run: ReportRun
    figures: dict[str, GroupFigures] | None  # None: no questions given


def build_calibration_rows(
    runs: Sequence[ReportRun | tuple], bins: int = DEFAULT_BINS
) -> dict[str, list[CalibrationRow]]:
    """task name -> one row per run, in the order and with the labels of the accuracy table."""
    runs = [ReportRun(*r) for r in runs]
    by_task: dict[str, list[ReportRun]] = {}
    for run in runs:
        by_task.setdefault(run.task.name, []).append(run)
    out = {}
    for name, group in by_task.items():
        labels = row_labels([run.result for run in group], group[0].task.eval_split)
        out[name] = [
            CalibrationRow(
                label,
                run,
                None
                if run.questions is None
                else run_summary(run.task, run.questions, run.result.scheme.aggregation, bins),
            )
            for label, run in zip(labels, group, strict=True)
        ]
    return out


def _points(value: float, ci) -> str:
    return f"{100 * value:.1f}" + (f" [{100 * ci.low:.1f}, {100 * ci.high:.1f}]" if ci else "")


def figure_cells(figures: GroupFigures | None) -> dict[str, str]:
    """One group's figures as table strings."""
    if figures is None:
        return dict.fromkeys(("ECE", "Brier", "Letter mass", "Circular", "Rot. mean", "Picked vs gold"), DASH)
    cal, mass, rob, bias = figures.calibration, figures.mass, figures.robustness, figures.bias
    mass_text = DASH
    if mass.mean is not None:
        mass_text = f"{mass.mean:.3f}" + (f" ({mass.n}/{mass.of})" if mass.n < mass.of else "")
    brier = DASH
    if cal is not None:
        brier = f"{cal.brier:.3f}" + (
            f" [{cal.brier_ci.low:.3f}, {cal.brier_ci.high:.3f}]" if cal.brier_ci else ""
        )
    picked = DASH
    if bias is not None:
        picked = " ".join(
            f"{letter} {100 * p:.0f}/{100 * g:.0f}"
            for letter, p, g in zip(LETTERS, bias.picked, bias.gold, strict=True)
        )
    return {
        "ECE": DASH if cal is None else _points(cal.ece, cal.ece_ci),
        "Brier": brier,
        "Letter mass": mass_text,
        "Circular": DASH if rob is None else f"{100 * rob.circular.accuracy:.1f}",
        "Rot. mean": DASH if rob is None else f"{100 * rob.mean_over_rotations.accuracy:.1f}",
        "Picked vs gold": picked,
    }


def calibration_frame(rows: Sequence[CalibrationRow]) -> pd.DataFrame:
    """One benchmark's table as strings: a row per run, the Average's figures."""
    data = {
        row.label: {
            "Accuracy": DASH
            if row.run.result.overall is None
            else f"{100 * row.run.result.overall.accuracy:.1f}",
            **figure_cells(None if row.figures is None else row.figures.get(AVERAGE)),
        }
        for row in rows
    }
    return pd.DataFrame.from_dict(data, orient="index").rename_axis("Model")


def calibration_markdown(runs: Sequence[ReportRun | tuple], bins: int = DEFAULT_BINS) -> str:
    """Every benchmark's calibration and robustness table, with the definitions."""
    text = ""
    for rows in build_calibration_rows(runs, bins).values():
        if all(row.figures is None for row in rows):
            continue
        title = rows[0].run.task.title
        text += f"### Calibration and answer order: {title}\n\n{markdown_table(calibration_frame(rows))}\n"
    if not text:
        return ""
    return text + "".join(f"- {note.format(bins=bins)}\n" for note in NOTES)


CSV_FIELDS = (
    "ece",
    "ece_ci95_low",
    "ece_ci95_high",
    "ece_bins",
    "brier",
    "brier_ci95_low",
    "brier_ci95_high",
    "letter_mass",
    "letter_mass_n",
    "circular_accuracy",
    "rotation_mean_accuracy",
    "picked_shares",
    "gold_shares",
    "position_skew",
    "permute",
)


def csv_fields(row: CalibrationRow, group: str) -> dict:
    """One (run, group) line's new CSV columns: ECE in points, Brier 0-2, accuracies x100; None: no data."""
    fields: dict = dict.fromkeys(CSV_FIELDS)
    fields["permute"] = row.run.result.config.permute
    figures = None if row.figures is None else row.figures.get(group)
    if figures is None:
        return fields
    if (cal := figures.calibration) is not None:
        fields.update(ece=100 * cal.ece, ece_bins=cal.bins, brier=cal.brier)
        if cal.ece_ci:
            fields.update(ece_ci95_low=100 * cal.ece_ci.low, ece_ci95_high=100 * cal.ece_ci.high)
        if cal.brier_ci:
            fields.update(brier_ci95_low=cal.brier_ci.low, brier_ci95_high=cal.brier_ci.high)
    fields.update(letter_mass=figures.mass.mean, letter_mass_n=figures.mass.n)
    if (rob := figures.robustness) is not None:
        fields.update(
            circular_accuracy=100 * rob.circular.accuracy,
            rotation_mean_accuracy=100 * rob.mean_over_rotations.accuracy,
        )
    if (bias := figures.bias) is not None:  # shares of A/B/C/D, and the largest |picked - gold| in points
        fields.update(
            picked_shares="/".join(f"{p:.4f}" for p in bias.picked),
            gold_shares="/".join(f"{g:.4f}" for g in bias.gold),
            position_skew=100 * bias.largest_skew,
        )
    return fields
