"""Calibration of the renormalised letter distribution, and the letters' full-vocabulary mass.

- ECE (expected calibration error, top-label): each question's confidence is the probability of its
  predicted letter (of the four, renormalised); questions fall into `bins` equal-width bins over [0, 1]
  (bin k holds confidences in (k/B, (k+1)/B], the first also 0); ECE = sum over bins of
  (questions in bin / n) * |accuracy in bin - mean confidence in bin|. Pooled over the questions of a
  subject, category or benchmark whatever the accuracy aggregation (a per-subject ECE on 10 questions is
  mostly binning noise; pooling is what the calibration literature reports).
- Brier (multiclass): per question sum over the four letters of (p - y)^2 with y the one-hot gold, in
  [0, 2]; averaged over the same pooled questions.
- Intervals: bootstrap percentile 95%, questions resampled within subjects (as evalkit.stats.metrics
  does for accuracy; a question's option rotations are one draw) as multinomial weights, so the same
  draw can weight two runs for a paired delta.
- Letter mass: the mean over questions of the four letters' summed full-vocabulary probability, over the
  questions that carry it (`n` of `of`: runs saved before it existed, or backends that cannot give it,
  have none; nothing is guessed).

Torch-free: arrays of numpy only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evalkit.stats.metrics import Interval, bootstrap_weights, question_index
from evalkit.types import LETTERS, EvalkitError, QuestionResult

DEFAULT_BINS = 10
N_BOOT = 1000
CHUNK = 200  # bootstrap replicates weighted at once (replicates x questions floats in memory)


@dataclass(frozen=True)
class PerQuestion:
    """One subject's per-line inputs: confidence of the predicted letter, 1/0 correct, Brier term, and
    the question each line belongs to (a --permute cyclic question has four lines)."""

    confidence: np.ndarray  # (n,) in [0.25, 1]
    correct: np.ndarray  # (n,) 1.0 / 0.0
    brier: np.ndarray  # (n,) in [0, 2]
    question: np.ndarray  # (n,) int, evalkit.stats.metrics.question_index within the subject


@dataclass(frozen=True)
class Calibration:
    """ECE and Brier over pooled questions, with bootstrap intervals (fractions, not points)."""

    ece: float
    ece_ci: Interval | None
    brier: float
    brier_ci: Interval | None
    n: int
    bins: int


@dataclass(frozen=True)
class CalibrationDelta:
    """B minus A on the same questions: ECE and Brier change with paired bootstrap intervals."""

    a: Calibration
    b: Calibration
    ece_delta: float
    ece_ci: Interval
    brier_delta: float
    brier_ci: Interval


@dataclass(frozen=True)
class LetterMass:
    """Mean letter mass over the questions that carry it; `of`: the questions asked about."""

    mean: float | None  # None where no question carries it
    n: int
    of: int


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram."""

    low: float
    high: float
    n: int
    accuracy: float | None  # None in an empty bin
    confidence: float | None


def probabilities(result: QuestionResult) -> np.ndarray:
    """The four letters' probabilities (renormalised: exp of the stored log-softmax, summing to 1)."""
    p = np.exp(np.asarray(result.logprobs, dtype=float))  # (4,)
    return p / p.sum()


def per_question(results: Iterable[QuestionResult]) -> dict[str, PerQuestion]:
    """Per subject, the labeled questions' confidence, correctness and Brier term (unlabeled left out)."""
    grouped: dict[str, list[tuple[float, float, float]]] = {}
    ids: dict[str, list[str]] = {}
    for r in results:
        if r.correct is None or r.gold is None:
            continue
        p = probabilities(r)
        onehot = np.zeros(4)
        onehot[LETTERS.index(r.gold)] = 1.0
        row = (float(p[LETTERS.index(r.pred)]), 1.0 if r.correct else 0.0, float(((p - onehot) ** 2).sum()))
        grouped.setdefault(r.subject, []).append(row)
        ids.setdefault(r.subject, []).append(r.id)
    return {
        s: PerQuestion(*(np.asarray(column) for column in zip(*rows, strict=True)), question_index(ids[s]))
        for s, rows in grouped.items()
    }


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence: k for (k/B, (k+1)/B], 0 also for 0."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def _pooled(parts: Mapping[str, PerQuestion]) -> PerQuestion:
    """The subjects' lines end to end (question numbers repeat across subjects: _draws reads them per
    subject)."""
    order = sorted(parts)  # fixed order: the weights of a draw line up with the questions
    columns = [f.name for f in dataclasses.fields(PerQuestion)]
    return PerQuestion(*(np.concatenate([getattr(parts[s], c) for s in order]) for c in columns))


def _weighted(pooled: PerQuestion, weights: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """ECE and Brier under question weights (replicates x n; a row of ones: the point estimate)."""
    onehot = np.eye(bins)[bin_index(pooled.confidence, bins)]  # (n, bins)
    correct = weights @ (onehot * pooled.correct[:, None])  # (replicates, bins)
    confidence = weights @ (onehot * pooled.confidence[:, None])  # (replicates, bins)
    total = weights.sum(axis=1)  # (replicates,)
    ece = np.abs(correct - confidence).sum(axis=1) / total  # sum_b n_b/n |acc_b - conf_b|
    return ece, (weights @ pooled.brier) / total


def _draws(parts: Mapping[str, PerQuestion], n_boot: int, seed: int) -> Iterable[np.ndarray]:
    """Bootstrap weights (chunks of replicates x lines, in _pooled's order), questions drawn per subject."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, CHUNK):
        reps = min(CHUNK, n_boot - start)
        yield np.concatenate([bootstrap_weights(rng, parts[s].question, reps) for s in sorted(parts)], axis=1)


def _interval(values: np.ndarray, level: float = 0.95) -> Interval:
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return Interval(low=float(low), high=float(high), level=level)


def calibration(
    parts: Mapping[str, PerQuestion], bins: int = DEFAULT_BINS, *, n_boot: int = N_BOOT, seed: int = 0
) -> Calibration:
    """ECE and Brier of the pooled questions of `parts`, with bootstrap intervals (n_boot 0: none)."""
    check_bins(bins)
    parts = {s: p for s, p in parts.items() if len(p.correct)}
    if not parts:
        raise EvalkitError("no labeled questions to measure calibration on")
    pooled = _pooled(parts)
    ece, brier = _weighted(pooled, np.ones((1, len(pooled.correct))), bins)
    ece_ci = brier_ci = None
    if n_boot:
        boot = [_weighted(pooled, w.astype(float), bins) for w in _draws(parts, n_boot, seed)]
        ece_ci = _interval(np.concatenate([e for e, _ in boot]))
        brier_ci = _interval(np.concatenate([b for _, b in boot]))
    return Calibration(float(ece[0]), ece_ci, float(brier[0]), brier_ci, len(pooled.correct), bins)


def calibration_delta(
    parts_a: Mapping[str, PerQuestion],
    parts_b: Mapping[str, PerQuestion],
    bins: int = DEFAULT_BINS,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> CalibrationDelta:
    """B minus A on the same questions (same subjects, same order): one draw weights both runs."""
    if sorted(parts_a) != sorted(parts_b) or any(
        len(parts_a[s].correct) != len(parts_b[s].correct) for s in parts_a
    ):
        raise EvalkitError("a paired calibration delta needs the same questions in both runs")
    a = calibration(parts_a, bins, n_boot=0)
    b = calibration(parts_b, bins, n_boot=0)
    pa, pb = _pooled(parts_a), _pooled(parts_b)
    ece, brier = [], []
    for w in _draws(parts_a, n_boot, seed):
        w = w.astype(float)
        ea, ba = _weighted(pa, w, bins)
        eb, bb = _weighted(pb, w, bins)
        ece.append(eb - ea)
        brier.append(bb - ba)
    return CalibrationDelta(
        a=a,
        b=b,
        ece_delta=b.ece - a.ece,
        ece_ci=_interval(np.concatenate(ece)),
        brier_delta=b.brier - a.brier,
        brier_ci=_interval(np.concatenate(brier)),
    )


def reliability(parts: Mapping[str, PerQuestion], bins: int = DEFAULT_BINS) -> list[ReliabilityBin]:
    """The reliability diagram's bins: accuracy against mean confidence, with counts."""
    check_bins(bins)
    pooled = _pooled({s: p for s, p in parts.items() if len(p.correct)}) if parts else None
    out = []
    index = bin_index(pooled.confidence, bins) if pooled is not None else np.zeros(0, dtype=int)
    for k in range(bins):
        inside = index == k
        n = int(inside.sum())
        out.append(
            ReliabilityBin(
                low=k / bins,
                high=(k + 1) / bins,
                n=n,
                accuracy=float(pooled.correct[inside].mean()) if n else None,
                confidence=float(pooled.confidence[inside].mean()) if n else None,
            )
        )
    return out


def letter_mass(results: Sequence[QuestionResult]) -> LetterMass:
    """Mean letter mass over the questions that carry it (runs saved before it existed carry none)."""
    values = [r.letter_mass for r in results if r.letter_mass is not None]
    return LetterMass(float(np.mean(values)) if values else None, len(values), len(results))


def check_bins(bins: int) -> None:
    """Refuse a bin count that cannot bin: fewer than one bin."""
    if not isinstance(bins, int) or bins < 1:
        raise EvalkitError(f"--ece-bins must be a positive integer, got {bins!r}")
