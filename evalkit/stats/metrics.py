"""Accuracy aggregation (micro / macro, as each official scorer does it) and bootstrap intervals.

micro (hendrycks MMLU, lm-eval everywhere): a group's accuracy is correct / questions over all of
its questions. macro (C-Eval, CMMLU official scorers): accuracy per subject first, then a group's
accuracy is the unweighted mean of its subjects' accuracies. points (GAOKAO-Bench): each file's
accuracy weighted by its total points, i.e. each question by its subject's points per question.
Only subjects that have results count, so a `--subjects` subset run reports the groups it touched
and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from evalkit.store.records import Metric
from evalkit.types import Aggregation, EvalkitError, QuestionResult, Task, unknown


@dataclass(frozen=True)
class Aggregate:
    """Accuracies of one run: per subject, per reporting group, and the benchmark's Average."""

    subjects: dict[str, Metric]
    groups: dict[str, Metric]  # task.categories then task.extra_groups, only those with results
    overall: Metric | None  # None when no result carries a gold answer (C-Eval test)


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval, in the units of the values resampled (accuracy in [0, 1])."""

    low: float
    high: float
    level: float


def correct_by_subject(results: Iterable[QuestionResult]) -> dict[str, np.ndarray]:
    """1.0 / 0.0 per labeled question, grouped by subject; unlabeled results are left out."""
    grouped: dict[str, list[float]] = {}
    for result in results:
        if result.correct is not None:
            grouped.setdefault(result.subject, []).append(1.0 if result.correct else 0.0)
    return {subject: np.asarray(values) for subject, values in grouped.items()}


def subject_points(task: Task) -> dict[str, float]:
    """Each subject's points per question: the weights of the `points` aggregation (GAOKAO-Bench)."""
    return {s.name: s.points for s in task.subjects}


def _points(weights: Mapping[str, float] | None) -> Mapping[str, float]:
    if weights is None:
        raise EvalkitError("the points aggregation needs each subject's points (subject_points(task))")
    return weights


def combine(
    values_by_subject: Mapping[str, np.ndarray],
    aggregation: Aggregation,
    weights: Mapping[str, float] | None = None,
) -> Metric:
    """One figure over several subjects: micro = mean over questions, macro = mean of subject means,
    points = each question weighted by its subject's points (`weights`), as GAOKAO-Bench totals a score."""
    if not values_by_subject:
        raise EvalkitError("no subjects with results to combine")
    n = sum(len(v) for v in values_by_subject.values())
    if aggregation == "points":
        w = _points(weights)
        total = sum(w[s] * len(v) for s, v in values_by_subject.items())
        accuracy = float(sum(w[s] * float(v.sum()) for s, v in values_by_subject.items()) / total)
    elif aggregation == "micro":
        accuracy = float(sum(float(v.sum()) for v in values_by_subject.values()) / n)
    elif aggregation == "macro":
        accuracy = float(np.mean([v.mean() for v in values_by_subject.values()]))
    else:
        raise unknown("aggregation", aggregation, get_args(Aggregation))
    return Metric(accuracy=accuracy, n=n, n_subjects=len(values_by_subject))


def group_members(task: Task, group: str, present: Iterable[str]) -> list[str]:
    """The subjects of `group` (category or extra group) that have results, in task order."""
    have = set(present)
    return [name for name in task.group_subjects(group) if name in have]


def aggregate(
    task: Task, aggregation: Aggregation, results: Iterable[QuestionResult], also: Iterable[Aggregation] = ()
) -> Aggregate:
    """Subject, group and overall accuracies of one run, the way the benchmark's scorer computes them;
    each of `also` (the scheme's other aggregations) as a group "Average (<aggregation>)" over all
    subjects."""
    results = list(results)
    for result in results:
        task.subject(result.subject)  # an unknown subject is an error naming the valid ones
    labeled = [r for r in results if r.correct is not None]
    if len(labeled) != len(results) and labeled:
        unlabeled = next(r for r in results if r.correct is None)
        raise EvalkitError(
            f"{task.name}: labeled and unlabeled results are mixed (e.g. {unlabeled.id} has "
            "no gold answer); a run scores one split"
        )
    values = correct_by_subject(labeled)
    if not values:
        return Aggregate(subjects={}, groups={}, overall=None)
    ordered = {s.name: values[s.name] for s in task.subjects if s.name in values}
    weights = subject_points(task)
    subjects = {name: combine({name: v}, aggregation, weights) for name, v in ordered.items()}
    groups = {}
    for group in task.categories + task.extra_groups:
        members = group_members(task, group, ordered)
        if members:
            groups[group] = combine({m: ordered[m] for m in members}, aggregation, weights)
    for other in also:
        groups[f"Average ({other})"] = combine(ordered, other, weights)
    return Aggregate(subjects=subjects, groups=groups, overall=combine(ordered, aggregation, weights))


def bootstrap_ci(
    values_by_subject: Mapping[str, Sequence[float] | np.ndarray],
    aggregation: Aggregation,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
) -> Interval:
    """Percentile interval of `combine(values_by_subject)`, resampling questions within each subject.

    Values are 1/0 correctness for an accuracy, or per-question differences (B - A) for a paired
    delta: both aggregations are linear, so the delta of two aggregates is the aggregate of the
    differences. A resample of n values drawn with replacement only matters through how often each
    distinct value is drawn, so it is drawn as multinomial counts: the same distribution as index
    resampling, at a cost independent of the number of questions.
    """
    if not 0 < level < 1:
        raise EvalkitError(f"confidence level must be in (0, 1), got {level}")
    arrays = {s: np.asarray(v, dtype=float) for s, v in values_by_subject.items() if len(v)}
    if not arrays:
        raise EvalkitError("no labeled results to bootstrap")
    rng = np.random.default_rng(seed)
    sums = []
    for subject in sorted(arrays):  # fixed order: the interval depends only on the seed
        distinct, counts = np.unique(arrays[subject], return_counts=True)
        draws = rng.multinomial(len(arrays[subject]), counts / counts.sum(), size=n_boot)
        sums.append(draws @ distinct)
    totals = np.stack(sums)  # subjects x n_boot: resampled sum of values per subject
    sizes = np.array([len(arrays[s]) for s in sorted(arrays)], dtype=float)
    if aggregation == "points":
        w = np.array([_points(weights)[s] for s in sorted(arrays)], dtype=float)
        stats = (totals * w[:, None]).sum(axis=0) / (sizes * w).sum()
    elif aggregation == "micro":
        stats = totals.sum(axis=0) / sizes.sum()
    elif aggregation == "macro":
        stats = (totals / sizes[:, None]).mean(axis=0)
    else:
        raise unknown("aggregation", aggregation, get_args(Aggregation))
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(low=float(low), high=float(high), level=level)
