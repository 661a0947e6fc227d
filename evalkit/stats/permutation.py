"""Answer-order robustness from a `--permute cyclic` run, and position bias from any run.

- circular accuracy (OpenCompass's CircularEval criterion): a question counts as right only when all
  four rotations of its options are answered right; aggregated over questions like the benchmark's
  accuracy (micro or macro over subjects).
- mean accuracy over rotations: each question's share of right rotations, aggregated the same way (for a
  cyclic run this is the run's own accuracy).
- position bias: how often each letter is predicted against how often it is the gold letter (shares of
  all scored lines); under cyclic rotations gold is uniform, so any skew of the picks is the model's.

Rotation ids come from evalkit.questions.permute; a run without complete rotations has no circular
figures (None), never a guess from partial ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from evalkit.questions.permute import ROTATIONS, base_id, rotation_of
from evalkit.stats.metrics import combine
from evalkit.store.records import Metric
from evalkit.types import LETTERS, Aggregation, QuestionResult


@dataclass(frozen=True)
class PositionBias:
    """Shares of predicted and gold letters over the scored lines (each four values in letter order)."""

    picked: tuple[float, float, float, float]
    gold: tuple[float, float, float, float]
    n: int

    @property
    def largest_skew(self) -> float:
        """The largest |picked - gold| share over the letters (0: no bias visible)."""
        return max(abs(p - g) for p, g in zip(self.picked, self.gold, strict=True))


@dataclass(frozen=True)
class Robustness:
    """Circular accuracy and mean accuracy over rotations of one group of questions."""

    circular: Metric
    mean_over_rotations: Metric
    questions: int  # questions (not lines) behind the figures


def is_rotated(results: Iterable[QuestionResult]) -> bool:
    """Whether the results hold rotations (a --permute cyclic run)."""
    return any(rotation_of(r.id) for r in results)


def _by_question(results: Iterable[QuestionResult]) -> dict[str, dict[str, list[bool]]]:
    """subject -> base id -> correct of each rotation (labeled results only)."""
    grouped: dict[str, dict[str, list[bool]]] = {}
    for r in results:
        if r.correct is not None:
            grouped.setdefault(r.subject, {}).setdefault(base_id(r.id), []).append(bool(r.correct))
    return grouped


def robustness(results: Sequence[QuestionResult], aggregation: Aggregation) -> Robustness | None:
    """Circular and mean-over-rotations accuracy, or None where the results are not complete rotations
    (a plain run, or a run missing some rotation of a question)."""
    grouped = _by_question(results)
    if not grouped or not is_rotated(results):
        return None
    if any(len(v) != ROTATIONS for questions in grouped.values() for v in questions.values()):
        return None
    circular = {s: np.asarray([float(all(v)) for v in q.values()]) for s, q in grouped.items()}
    mean = {s: np.asarray([sum(v) / ROTATIONS for v in q.values()]) for s, q in grouped.items()}
    questions = sum(len(q) for q in grouped.values())
    return Robustness(combine(circular, aggregation), combine(mean, aggregation), questions)


def position_bias(results: Sequence[QuestionResult]) -> PositionBias | None:
    """Shares of each letter among predictions and among gold answers (labeled results; None if none)."""
    labeled = [r for r in results if r.gold is not None]
    if not labeled:
        return None
    picked = [sum(r.pred == letter for r in labeled) / len(labeled) for letter in LETTERS]
    gold = [sum(r.gold == letter for r in labeled) / len(labeled) for letter in LETTERS]
    return PositionBias(tuple(picked), tuple(gold), len(labeled))
