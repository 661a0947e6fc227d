"""What accuracy hides: how far B's letter distribution moved from A's, question by question.

Each saved question carries the run's four letter log-probs (a log-softmax over A/B/C/D), so a
pair of runs gives, per question, with P_A and P_B the two four-letter distributions:
  kl          KL(P_A || P_B) = sum_l P_A(l) (log P_A(l) - log P_B(l)), in nats: the information lost
              when B stands in for the baseline A (llama.cpp's quantization reports use the same
              direction against the full-precision model). 0 only where the distributions agree.
  agree       1 where both runs' top letters (their saved `pred`) are the same, else 0.
  gold_shift  |P_B(gold) - P_A(gold)|: how far the probability of the right letter moved.
Over a subject, group or benchmark: the means of the three follow the benchmark's aggregation
(micro: over questions; macro: of the subject means), the 95th/99th percentiles of kl are over the
pooled questions. Each comes with a paired bootstrap 95% interval: questions resampled within
subjects (a question's option rotations are one draw), the same draw for every figure (the pair is
one row, so A and B are drawn together).
These move with every question while accuracy moves only on a flip, so they separate two
precisions with far less noise than an accuracy delta does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np
from scipy.stats import binom

from evalkit.stats.metrics import Interval, bootstrap_weights, question_index
from evalkit.types import LETTERS, Aggregation, EvalkitError, QuestionResult, unknown

PERCENTILES = (95, 99)
CHUNK = 250  # bootstrap replicates drawn at once (memory: CHUNK x questions floats)
ALPHA = 0.05  # the power note: the level of McNemar's exact test


@dataclass(frozen=True)
class PerQuestion:
    """The per-line figures of one subject of a pair, each of shape (lines,): one line per question, or
    four for a --permute cyclic question (`question` says which)."""

    kl: np.ndarray  # KL(P_A || P_B), nats
    agree: np.ndarray  # 1.0 where the top letters are the same
    gold_shift: np.ndarray  # |P_B(gold) - P_A(gold)|, probability in [0, 1]
    question: np.ndarray  # int, evalkit.stats.metrics.question_index within the subject


@dataclass(frozen=True)
class Estimate:
    value: float
    ci: Interval  # paired bootstrap percentile interval


@dataclass(frozen=True)
class Divergence:
    """B's letter distributions against A's on one subject, group or benchmark Average."""

    n: int  # questions
    kl_mean: Estimate  # nats, KL(P_A || P_B)
    kl_p95: Estimate
    kl_p99: Estimate
    agreement: Estimate  # share of questions with the same top letter, in [0, 1]
    gold_shift: Estimate  # mean |P_B(gold) - P_A(gold)|, in [0, 1]
    kl: tuple[float, ...] = field(default=(), compare=False, repr=False)  # per question, for plots


def letter_kl(logprobs_a: np.ndarray, logprobs_b: np.ndarray) -> np.ndarray:
    """KL(P_A || P_B) per row of two (questions, 4) arrays of log-probs, in nats.

    Saved log-probs are a log-softmax over the four letters already; they are renormalized anyway (a no-op
    then), so the result is a divergence of distributions whatever the source. A letter A gives
    probability 0 adds nothing; one B gives 0 where A does not makes the row inf."""
    logprobs_a = logprobs_a - np.logaddexp.reduce(logprobs_a, axis=1, keepdims=True)
    logprobs_b = logprobs_b - np.logaddexp.reduce(logprobs_b, axis=1, keepdims=True)
    p_a = np.exp(logprobs_a)
    with np.errstate(invalid="ignore"):  # -inf - -inf where both are 0: the term is 0
        terms = np.where(p_a > 0, p_a * (logprobs_a - logprobs_b), 0.0)
    return np.maximum(terms.sum(axis=1), 0.0)  # >= 0; rounding can leave -1e-17


def per_question(a: Sequence[QuestionResult], b: Sequence[QuestionResult]) -> PerQuestion:
    """The figures of paired questions (a[i] and b[i] are the same question, labeled)."""
    lp_a = np.asarray([q.logprobs for q in a], dtype=float).reshape(-1, len(LETTERS))  # (n, 4)
    lp_b = np.asarray([q.logprobs for q in b], dtype=float).reshape(-1, len(LETTERS))  # (n, 4)
    gold = np.asarray([LETTERS.index(q.gold) for q in a], dtype=int)  # (n,)
    rows = np.arange(len(gold))
    p_a, p_b = np.exp(lp_a), np.exp(lp_b)
    p_a, p_b = p_a / p_a.sum(axis=1, keepdims=True), p_b / p_b.sum(axis=1, keepdims=True)  # as letter_kl
    gold_shift = np.abs(p_b[rows, gold] - p_a[rows, gold])
    agree = np.asarray([qa.pred == qb.pred for qa, qb in zip(a, b, strict=True)], dtype=float)
    return PerQuestion(
        kl=letter_kl(lp_a, lp_b), agree=agree, gold_shift=gold_shift, question=question_index(q.id for q in a)
    )


def _mean(
    by_subject: Sequence[np.ndarray],
    draws: Sequence[np.ndarray],
    aggregation: Aggregation,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """(replicates,) micro, macro or points mean of per-subject lines (n_s,) under line weights
    (replicates, n_s) (a row of ones: the plain mean)."""
    sums = [d @ v for v, d in zip(by_subject, draws, strict=True)]  # each (replicates,)
    lines = [d.sum(axis=1) for d in draws]
    if aggregation == "points":
        if weights is None:
            raise EvalkitError("the points aggregation needs each subject's points")
        return sum(w * s for w, s in zip(weights, sums, strict=True)) / sum(
            w * n for w, n in zip(weights, lines, strict=True)
        )
    if aggregation == "micro":
        return sum(sums) / sum(lines)
    if aggregation == "macro":
        return sum(s / n for s, n in zip(sums, lines, strict=True)) / len(sums)
    raise unknown("aggregation", aggregation, get_args(Aggregation))


def expanded_quantile(values: np.ndarray, draws: np.ndarray, q: float) -> np.ndarray:
    """(replicates,) np.quantile's default (linear) rule on the sample that repeats values[i]
    draws[r, i] times, per row r of integer weights: a resample's percentile without building it."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]  # (n,)
    cumulative = np.cumsum(draws[:, order], axis=1)  # (replicates, n): lines up to each sorted value
    position = (cumulative[:, -1] - 1) * q  # (replicates,): 0-based place in the expanded sample
    low, high = np.floor(position), np.ceil(position)

    def at(place: np.ndarray) -> np.ndarray:  # the value at a 0-based place of the expanded sample
        return ordered[(cumulative <= place[:, None]).sum(axis=1)]

    below, above = at(low), at(high)
    with np.errstate(invalid="ignore"):  # inf - inf between two infinite KLs: that value is inf
        between = below + (position - low) * (above - below)
    return np.where(above == below, below, between)


def _statistics(
    parts: Sequence[PerQuestion],
    draws: Sequence[np.ndarray],
    aggregation: Aggregation,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """(5, replicates) kl mean, kl p95, kl p99, agreement, gold shift of per-subject lines under line
    weights (replicates, n_s) each."""
    pooled, pooled_draws = np.concatenate([p.kl for p in parts]), np.concatenate(draws, axis=1)
    return np.stack(
        [
            _mean([p.kl for p in parts], draws, aggregation, weights),
            *(expanded_quantile(pooled, pooled_draws, q / 100) for q in PERCENTILES),
            _mean([p.agree for p in parts], draws, aggregation, weights),
            _mean([p.gold_shift for p in parts], draws, aggregation, weights),
        ]
    )


def divergence(
    by_subject: Mapping[str, PerQuestion],
    aggregation: Aggregation,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    weights: Mapping[str, float] | None = None,
) -> Divergence:
    """The figures over several subjects with their paired bootstrap intervals (questions resampled
    within each subject; percentiles of the pooled resample)."""
    names = sorted(name for name, p in by_subject.items() if len(p.kl))  # fixed order: seeded
    if not names:
        raise EvalkitError("no paired questions to measure a divergence on")
    parts = [by_subject[name] for name in names]
    w = [weights[name] for name in names] if weights is not None else None  # the points aggregation's
    point = _statistics(parts, [np.ones((1, len(p.kl))) for p in parts], aggregation, w)[:, 0]  # (5,)
    rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, n_boot, CHUNK):
        size = min(CHUNK, n_boot - start)
        draws = [bootstrap_weights(rng, p.question, size) for p in parts]  # each (size, n_s)
        replicates.append(_statistics(parts, draws, aggregation, w))  # (5, size)
    boot = np.concatenate(replicates, axis=1)  # (5, n_boot)
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):  # an inf KL makes its interval inf, not an error
        bounds = np.quantile(boot, [tail, 1 - tail], axis=1)  # (2, 5)
    estimates = [
        Estimate(float(point[i]), Interval(float(bounds[0, i]), float(bounds[1, i]), level))
        for i in range(len(point))
    ]
    return Divergence(
        n=sum(len(p.kl) for p in parts),
        kl_mean=estimates[0],
        kl_p95=estimates[1],
        kl_p99=estimates[2],
        agreement=estimates[3],
        gold_shift=estimates[4],
        kl=tuple(float(x) for p in parts for x in p.kl),
    )


def detectable_drop(n: int, discordant: int, alpha: float = ALPHA) -> float | None:
    """The smallest accuracy drop (a fraction, question-level) McNemar's exact two-sided test declares
    significant at `alpha` given `discordant` questions that flipped one way or the other out of `n`:
    (2k - D) / n for the smallest k of D flips going one way with p < alpha. None when no split of D
    flips can reach it (D < 6 at 5%)."""
    if discordant <= 0:
        return None
    k = np.arange(math.ceil(discordant / 2), discordant + 1)
    p = np.minimum(1.0, 2 * binom.sf(k - 1, discordant, 0.5))  # P(X >= k) both ways; symmetric at 1/2
    significant = k[p < alpha]
    return None if not len(significant) else float(2 * significant[0] - discordant) / n


def format_estimate(estimate: Estimate, scale: float = 1.0, spec: str = ".3g") -> str:
    """ "0.0123 [0.0101, 0.0150]": the value and its interval, each times `scale`."""
    low, high = scale * estimate.ci.low, scale * estimate.ci.high
    return f"{scale * estimate.value:{spec}} [{low:{spec}}, {high:{spec}}]"


def divergence_columns(d: Divergence) -> dict[str, str]:
    """One table row: KL (nats) mean and percentiles, agreement and gold shift (%), each with its CI."""
    return {
        "KL mean (nats)": format_estimate(d.kl_mean),
        "KL p95": format_estimate(d.kl_p95),
        "KL p99": format_estimate(d.kl_p99),
        "agreement %": format_estimate(d.agreement, 100, ".1f"),
        "abs Δp(gold) %": format_estimate(d.gold_shift, 100, ".2f"),
        "n": str(d.n),
    }


def divergence_cell(d: Divergence) -> str:
    """The figures in one cell: "KL 0.012 [0.010, 0.015], p95 0.05, p99 0.21; agree 97.1% [...]; ..."."""
    return (
        f"KL {format_estimate(d.kl_mean)}, p95 {d.kl_p95.value:.3g}, p99 {d.kl_p99.value:.3g}; "
        f"agree {format_estimate(d.agreement, 100, '.1f')}%; "
        f"abs Δp(gold) {100 * d.gold_shift.value:.2f}%"
    )
