"""What accuracy hides, per subject, category and benchmark of one run: calibration (ECE, Brier, with
intervals), letter mass (and how many questions carry it) and answer-order robustness (circular accuracy,
mean accuracy over rotations, position bias). One record per group; the report, the CSV and the sweep's
precision table all read these (evalkit.report.calibration_tables). Computed from the saved questions
only: a run saved before these figures existed gets None where it has no data, never a recomputation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evalkit.stats.calibration import (
    DEFAULT_BINS,
    N_BOOT,
    Calibration,
    LetterMass,
    calibration,
    letter_mass,
    per_question,
)
from evalkit.stats.metrics import group_members
from evalkit.stats.permutation import PositionBias, Robustness, position_bias, robustness
from evalkit.types import Aggregation, QuestionResult, Task

AVERAGE = "Average"  # the benchmark as a whole (evalkit.report.text.AVERAGE, without importing report/)


@dataclass(frozen=True)
class GroupFigures:
    """One subject, category or benchmark Average of one run."""

    calibration: Calibration | None  # None: no labeled questions
    mass: LetterMass
    robustness: Robustness | None  # None: not a complete --permute cyclic run
    bias: PositionBias | None


def group_figures(
    questions: Sequence[QuestionResult],
    aggregation: Aggregation,
    bins: int = DEFAULT_BINS,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> GroupFigures:
    """The figures of one group of questions (calibration pooled over them whatever the aggregation)."""
    parts = per_question(questions)
    return GroupFigures(
        calibration=calibration(parts, bins, n_boot=n_boot, seed=seed) if parts else None,
        mass=letter_mass(questions),
        robustness=robustness(questions, aggregation),
        bias=position_bias(questions),
    )


def run_summary(
    task: Task,
    questions: Sequence[QuestionResult],
    aggregation: Aggregation,
    bins: int = DEFAULT_BINS,
    *,
    subjects: bool = False,
    n_boot: int = N_BOOT,
) -> dict[str, GroupFigures]:
    """{group: figures} for the task's categories and extra groups that have questions, then "Average";
    with `subjects`, every subject first."""
    by_subject: dict[str, list[QuestionResult]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    out: dict[str, GroupFigures] = {}
    if subjects:
        for s in task.subjects:
            if s.name in by_subject:
                out[s.name] = group_figures(by_subject[s.name], aggregation, bins, n_boot=n_boot)
    for group in task.categories + task.extra_groups:
        members = group_members(task, group, by_subject)
        if members:
            chosen = [q for m in members for q in by_subject[m]]
            out[group] = group_figures(chosen, aggregation, bins, n_boot=n_boot)
    if questions:
        out[AVERAGE] = group_figures(list(questions), aggregation, bins, n_boot=n_boot)
    return out
