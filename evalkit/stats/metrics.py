"""Accuracy aggregation (micro / macro, as each official scorer does it) and bootstrap intervals.

micro (hendrycks MMLU, lm-eval everywhere): a group's accuracy is correct / questions over all of
its questions. macro (C-Eval, CMMLU official scorers): accuracy per subject first, then a group's
accuracy is the unweighted mean of its subjects' accuracies. points (GAOKAO-Bench): each file's
accuracy weighted by its total points, i.e. each question by its subject's points per question.
Only subjects that have results count, so a `--subjects` subset run reports the groups it touched
and nothing else.

Bootstrap intervals resample questions, not lines: the four option rotations of a `--permute cyclic`
question are one draw (a cluster bootstrap), since they are four looks at one question, not four
independent questions; a plain run has one line per question and the two are the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from evalkit.questions.permute import base_id
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


def question_index(ids: Iterable[str]) -> np.ndarray:
    """Line -> question number, in first-seen order: a question's option rotations share one number,
    every other line has its own. The unit a bootstrap draws."""
    seen: dict[str, int] = {}
    return np.asarray([seen.setdefault(base_id(i), len(seen)) for i in ids], dtype=int)


def questions_by_subject(results: Iterable[QuestionResult]) -> dict[str, np.ndarray]:
    """question_index of the labeled results per subject, aligned with correct_by_subject."""
    ids: dict[str, list[str]] = {}
    for result in results:
        if result.correct is not None:
            ids.setdefault(result.subject, []).append(result.id)
    return {subject: question_index(values) for subject, values in ids.items()}


def bootstrap_weights(rng: np.random.Generator, questions: np.ndarray, size: int) -> np.ndarray:
    """(size, lines) bootstrap weights of one subject: its questions drawn with replacement as
    multinomial counts, every line weighted by how often its question (`question_index`) was drawn."""
    n = int(questions.max()) + 1 if len(questions) else 0
    return rng.multinomial(n, np.full(n, 1 / n), size=size)[:, questions]  # (size, questions) -> lines


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
    questions: Mapping[str, np.ndarray] | None = None,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
) -> Interval:
    """Percentile interval of `combine(values_by_subject)`, resampling questions within each subject.

    Values are 1/0 correctness for an accuracy, or per-line differences (B - A) for a paired delta:
    both aggregations are linear, so the delta of two aggregates is the aggregate of the differences.
    `questions` (question_index per subject; default: every line its own question) makes the lines of
    one question (its option rotations) one draw, each drawn question bringing the sum and count of its
    lines. A resample of n questions drawn with replacement only matters through how often each
    distinct (sum, lines) pair is drawn, so it is drawn as multinomial counts: the same distribution as
    index resampling, at a cost independent of the number of questions.
    """
    if not 0 < level < 1:
        raise EvalkitError(f"confidence level must be in (0, 1), got {level}")
    arrays = {s: np.asarray(v, dtype=float) for s, v in values_by_subject.items() if len(v)}
    if not arrays:
        raise EvalkitError("no labeled results to bootstrap")
    rng = np.random.default_rng(seed)
    sums, lines = [], []
    for subject in sorted(arrays):  # fixed order: the interval depends only on the seed
        values = arrays[subject]
        index = questions[subject] if questions is not None else np.arange(len(values))
        per_question = np.stack([np.bincount(index, weights=values), np.bincount(index)], axis=1)  # (q, 2)
        distinct, counts = np.unique(per_question, axis=0, return_counts=True)  # (d, 2): sum, lines
        draws = rng.multinomial(len(per_question), counts / counts.sum(), size=n_boot)  # (n_boot, d)
        sums.append(draws @ distinct[:, 0])
        lines.append(draws @ distinct[:, 1])
    totals, sizes = np.stack(sums), np.stack(lines)  # subjects x n_boot: resampled sum and lines
    if aggregation == "points":
        w = np.array([_points(weights)[s] for s in sorted(arrays)], dtype=float)[:, None]
        stats = (totals * w).sum(axis=0) / (sizes * w).sum(axis=0)
    elif aggregation == "micro":
        stats = totals.sum(axis=0) / sizes.sum(axis=0)
    elif aggregation == "macro":
        stats = (totals / sizes).mean(axis=0)
    else:
        raise unknown("aggregation", aggregation, get_args(Aggregation))
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return Interval(low=float(low), high=float(high), level=level)
