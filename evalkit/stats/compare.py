"""Paired comparison of two runs (B against baseline A) on the questions both scored, and the gate.

Per subject, category and benchmark: accuracies of A and B and their delta (aggregated micro or
macro like the benchmark), a paired bootstrap 95% interval of the delta (questions resampled
within subjects, the same draw for A and B), McNemar's exact p-value (two-sided binomial test on
the discordant questions; it is a question-level test whatever the aggregation), and the questions
that flipped; beside them the letter-distribution divergence of B from A (evalkit.divergence: mean
and 95th/99th percentile KL(P_A || P_B) in nats, top-letter agreement, mean |Δ P(gold)|, paired
bootstrap intervals), the change of calibration (ECE and Brier of B minus A, evalkit.stats.calibration,
paired bootstrap intervals from one draw of questions for both runs) and a power note (the smallest drop
McNemar's test could detect). Gates on each benchmark's Average (evalkit.stats.gates): any failing gate
fails the comparison, and the CLI exits 1. Which runs and questions pair up: evalkit.stats.pairing;
evalkit.report.compare_tables writes it out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from evalkit.stats.calibration import DEFAULT_BINS, CalibrationDelta, calibration_delta
from evalkit.stats.calibration import PerQuestion as CalibrationInputs
from evalkit.stats.calibration import per_question as calibration_inputs
from evalkit.stats.divergence import (
    Divergence,
    PerQuestion,
    detectable_drop,
    divergence,
    per_question,
)
from evalkit.stats.gates import Gate, Thresholds, check_thresholds, judge
from evalkit.stats.metrics import (
    Interval,
    bootstrap_ci,
    combine,
    group_members,
    question_index,
    subject_points,
)
from evalkit.stats.pairing import check_comparable, pair_by_task, shared_ids
from evalkit.store.records import Metric, SavedRun
from evalkit.store.saved_runs import run_label
from evalkit.types import Aggregation, EvalkitError, QuestionResult, Task


@dataclass(frozen=True)
class Delta:
    """B minus A on one subject, group or benchmark Average (accuracies in [0, 1])."""

    a: Metric
    b: Metric
    delta: float
    ci: Interval  # paired bootstrap interval of `delta`
    right_to_wrong: int
    wrong_to_right: int
    p_value: float  # McNemar exact; 1.0 when no question flipped
    divergence: Divergence  # B's letter distributions against A's, question by question
    calibration: CalibrationDelta | None = None  # ECE and Brier of B minus A, paired intervals

    @property
    def detectable_drop(self) -> float | None:
        """The smallest drop (accuracy fraction) McNemar's exact test detects at 95% given the flips."""
        return detectable_drop(self.a.n, self.right_to_wrong + self.wrong_to_right)


@dataclass(frozen=True)
class Flip:
    """A question that one run answered right and the other wrong."""

    id: str
    subject: str
    gold: str
    pred_a: str
    pred_b: str

    @property
    def direction(self) -> str:
        return "right→wrong" if self.pred_a == self.gold else "wrong→right"


@dataclass(frozen=True)
class BenchmarkComparison:
    task: str
    title: str
    label_a: str
    label_b: str
    aggregation: Aggregation
    subjects: dict[str, Delta]
    groups: dict[str, Delta]
    overall: Delta
    flips: tuple[Flip, ...]
    only_a: int  # questions scored by A alone, left out (only with allow_subset)
    only_b: int


@dataclass(frozen=True)
class Comparison:
    benchmarks: dict[str, BenchmarkComparison]
    max_drop: float | None  # accuracy points; None: no gate
    failed: tuple[str, ...]  # benchmarks that failed some gate
    gates: tuple[Gate, ...] = ()  # the gates asked for: max drop, max KL, min agreement, max ECE increase

    @property
    def passed(self) -> bool:
        return not self.failed


def mcnemar_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact McNemar: under no difference each discordant question flips either way with p = 1/2."""
    discordant = right_to_wrong + wrong_to_right
    return 1.0 if discordant == 0 else float(binomtest(right_to_wrong, discordant, 0.5).pvalue)


@dataclass(frozen=True)
class _Paired:
    """One subject's shared questions in A's order: what every figure of a Delta is computed from."""

    correct_a: np.ndarray  # (n,) 1.0 / 0.0
    correct_b: np.ndarray
    questions: np.ndarray  # (n,) question_index: a question's rotations are one bootstrap draw
    divergence: PerQuestion
    calibration_a: CalibrationInputs
    calibration_b: CalibrationInputs


def _paired(a: Sequence[QuestionResult], b: Sequence[QuestionResult], subject: str) -> _Paired:
    return _Paired(
        correct_a=np.asarray([float(q.correct) for q in a]),
        correct_b=np.asarray([float(q.correct) for q in b]),
        questions=question_index(q.id for q in a),
        divergence=per_question(a, b),
        calibration_a=calibration_inputs(a)[subject],
        calibration_b=calibration_inputs(b)[subject],
    )


def _delta(
    parts: Mapping[str, _Paired],
    aggregation: Aggregation,
    weights: Mapping[str, float],
    *,
    n_boot: int,
    seed: int,
    bins: int,
) -> Delta:
    xa = {s: p.correct_a for s, p in parts.items()}
    xb = {s: p.correct_b for s, p in parts.items()}
    ma, mb = combine(xa, aggregation, weights), combine(xb, aggregation, weights)
    diffs = {s: xb[s] - xa[s] for s in xa}
    right_to_wrong = int(sum((d < 0).sum() for d in diffs.values()))
    wrong_to_right = int(sum((d > 0).sum() for d in diffs.values()))
    questions = {s: p.questions for s, p in parts.items()}
    return Delta(
        a=ma,
        b=mb,
        delta=mb.accuracy - ma.accuracy,
        ci=bootstrap_ci(diffs, aggregation, questions=questions, n_boot=n_boot, seed=seed, weights=weights),
        right_to_wrong=right_to_wrong,
        wrong_to_right=wrong_to_right,
        p_value=mcnemar_p(right_to_wrong, wrong_to_right),
        divergence=divergence(
            {s: p.divergence for s, p in parts.items()},
            aggregation,
            n_boot=n_boot,
            seed=seed,
            weights=weights,
        ),
        calibration=calibration_delta(
            {s: p.calibration_a for s, p in parts.items()},
            {s: p.calibration_b for s, p in parts.items()},
            bins,
            n_boot=n_boot,
            seed=seed,
        ),
    )


def compare_pair(
    task: Task,
    a: SavedRun,
    b: SavedRun,
    *,
    allow_subset: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
) -> BenchmarkComparison:
    """B against A on one benchmark, question by question."""
    check_comparable(task, a, b)
    shared, only_a, only_b = shared_ids(a, b, allow_subset)
    by_id_a, by_id_b = {q.id: q for q in a.questions}, {q.id: q for q in b.questions}
    by_subject: dict[str, tuple[list[QuestionResult], list[QuestionResult]]] = {}
    flips = []
    for qid in shared:
        qa, qb = by_id_a[qid], by_id_b[qid]
        if qa.gold != qb.gold or qa.subject != qb.subject:
            raise EvalkitError(
                f"cannot compare: question {qid} differs between the runs (A: {qa.subject} "
                f"gold {qa.gold}, B: {qb.subject} gold {qb.gold}); the data changed"
            )
        side_a, side_b = by_subject.setdefault(qa.subject, ([], []))
        side_a.append(qa)
        side_b.append(qb)
        if qa.correct != qb.correct:
            flips.append(Flip(id=qid, subject=qa.subject, gold=qa.gold, pred_a=qa.pred, pred_b=qb.pred))
    order = [s.name for s in task.subjects if s.name in by_subject]
    paired = {s: _paired(*by_subject[s], s) for s in order}
    aggregation = a.result.scheme.aggregation
    weights = subject_points(task)

    def delta(members: Sequence[str]) -> Delta:
        return _delta(
            {s: paired[s] for s in members}, aggregation, weights, n_boot=n_boot, seed=seed, bins=bins
        )

    groups = {}
    for group in task.categories + task.extra_groups:
        members = group_members(task, group, order)
        if members:
            groups[group] = delta(members)
    return BenchmarkComparison(
        task=task.name,
        title=task.title,
        label_a=run_label(a.result, task.eval_split),
        label_b=run_label(b.result, task.eval_split),
        aggregation=aggregation,
        subjects={s: delta([s]) for s in order},
        groups=groups,
        overall=delta(order),
        flips=tuple(flips),
        only_a=only_a,
        only_b=only_b,
    )


def compare(
    runs_a: Sequence[SavedRun],
    runs_b: Sequence[SavedRun],
    task_for: Callable[[str], Task],
    *,
    max_drop: float | None = None,
    max_kl: float | None = None,
    min_agreement: float | None = None,
    max_ece_increase: float | None = None,
    allow_subset: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
) -> Comparison:
    """Compare B with A on every task they share, and gate each benchmark's Average
    (evalkit.stats.gates)."""
    check_thresholds(max_drop, max_kl, min_agreement, max_ece_increase)
    benchmarks = {}
    for a, b in pair_by_task(runs_a, runs_b):
        task = task_for(a.result.config.task)
        benchmarks[task.name] = compare_pair(
            task, a, b, allow_subset=allow_subset, n_boot=n_boot, seed=seed, bins=bins
        )
    gates = judge(benchmarks, Thresholds(max_drop, max_kl, min_agreement, max_ece_increase))
    failed = tuple(name for name in benchmarks if any(name in gate.failed for gate in gates))
    return Comparison(benchmarks=benchmarks, max_drop=max_drop, failed=failed, gates=gates)
