"""Paired comparison of two runs (B against baseline A) on the questions both scored, and the gate.

Per subject, category and benchmark: accuracies of A and B and their delta (aggregated micro or
macro like the benchmark), a paired bootstrap 95% interval of the delta (questions resampled
within subjects, the same draw for A and B), McNemar's exact p-value (two-sided binomial test on
the discordant questions; it is a question-level test whatever the aggregation), and the questions
that flipped; beside them the letter-distribution divergence of B from A (evalkit.divergence: mean
and 95th/99th percentile KL(P_A || P_B) in nats, top-letter agreement, mean |Δ P(gold)|, paired
bootstrap intervals), the change of calibration (ECE and Brier of B minus A, evalkit.stats.calibration,
paired bootstrap intervals from one draw of questions for both runs) and a power note (the smallest drop
McNemar's test could detect). Four gates judge quantized models on each benchmark's Average: `max_drop`
(accuracy points it may lose), `max_kl` (nats of mean KL it may reach), `min_agreement` (the share of top
letters it must keep) and `max_ece_increase` (ECE points it may gain); any failing gate fails the
comparison, and the CLI exits 1. Which runs and questions pair up:
evalkit.stats.pairing; evalkit.report.compare_tables writes it out.
"""

from __future__ import annotations

import math
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
class Gate:
    """One threshold on each benchmark's Average, and the benchmarks that failed it."""

    name: str  # "max drop", "max KL", "min agreement", "max ECE increase"
    threshold: float
    unit: str  # how the threshold is given: "points", "nats", "fraction"
    failed: dict[str, float]  # benchmark -> its failing value, in the threshold's unit


@dataclass(frozen=True)
class Comparison:
    benchmarks: dict[str, BenchmarkComparison]
    max_drop: float | None  # accuracy points; None: no gate
    failed: tuple[str, ...]  # benchmarks that failed some gate
    gates: tuple[Gate, ...] = ()  # the gates asked for: max drop, max KL, min agreement, max ECE increase

    @property
    def passed(self) -> bool:
        return not self.failed


def check_thresholds(
    max_drop: float | None = None,
    max_kl: float | None = None,
    min_agreement: float | None = None,
    max_ece_increase: float | None = None,
) -> None:
    """Refuse a gate that cannot judge: NaN or infinite (NaN compares false and would pass anything),
    negative, or an agreement outside [0, 1]."""
    flags = (
        ("--max-drop", max_drop),
        ("--max-kl", max_kl),
        ("--min-agreement", min_agreement),
        ("--max-ece-increase", max_ece_increase),
    )
    for flag, value in flags:
        if value is not None and not math.isfinite(value):
            raise EvalkitError(f"{flag} must be a finite number, got {value}")
    if max_drop is not None and max_drop < 0:
        raise EvalkitError(f"max drop must be >= 0 accuracy points, got {max_drop}")
    if max_kl is not None and max_kl < 0:
        raise EvalkitError(f"--max-kl must be >= 0 nats, got {max_kl}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise EvalkitError(f"--min-agreement is a fraction in [0, 1], got {min_agreement}")
    if max_ece_increase is not None and max_ece_increase < 0:
        raise EvalkitError(f"--max-ece-increase must be >= 0 ECE points, got {max_ece_increase}")


def mcnemar_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact McNemar: under no difference each discordant question flips either way with p = 1/2."""
    discordant = right_to_wrong + wrong_to_right
    return 1.0 if discordant == 0 else float(binomtest(right_to_wrong, discordant, 0.5).pvalue)


def _delta(
    xa: Mapping[str, np.ndarray],
    xb: Mapping[str, np.ndarray],
    questions: Mapping[str, np.ndarray],
    pq: Mapping[str, PerQuestion],
    aggregation: Aggregation,
    n_boot: int,
    seed: int,
    calibration: tuple[Mapping[str, CalibrationInputs], Mapping[str, CalibrationInputs], int] | None = None,
    weights: Mapping[str, float] | None = None,
) -> Delta:
    ma, mb = combine(xa, aggregation, weights), combine(xb, aggregation, weights)
    diffs = {s: xb[s] - xa[s] for s in xa}
    right_to_wrong = int(sum((d < 0).sum() for d in diffs.values()))
    wrong_to_right = int(sum((d > 0).sum() for d in diffs.values()))
    return Delta(
        a=ma,
        b=mb,
        delta=mb.accuracy - ma.accuracy,
        ci=bootstrap_ci(diffs, aggregation, questions=questions, n_boot=n_boot, seed=seed, weights=weights),
        right_to_wrong=right_to_wrong,
        wrong_to_right=wrong_to_right,
        p_value=mcnemar_p(right_to_wrong, wrong_to_right),
        divergence=divergence(pq, aggregation, n_boot=n_boot, seed=seed, weights=weights),
        calibration=None
        if calibration is None
        else calibration_delta(*calibration[:2], calibration[2], n_boot=n_boot, seed=seed),
    )


def _ids_by_subject(ids: Sequence[str], questions: Mapping[str, QuestionResult]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for qid in ids:
        grouped.setdefault(questions[qid].subject, []).append(qid)
    return grouped


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
    xa: dict[str, list[float]] = {}
    xb: dict[str, list[float]] = {}
    flips = []
    for qid in shared:
        qa, qb = by_id_a[qid], by_id_b[qid]
        if qa.gold != qb.gold or qa.subject != qb.subject:
            raise EvalkitError(
                f"cannot compare: question {qid} differs between the runs (A: {qa.subject} "
                f"gold {qa.gold}, B: {qb.subject} gold {qb.gold}); the data changed"
            )
        xa.setdefault(qa.subject, []).append(float(qa.correct))
        xb.setdefault(qa.subject, []).append(float(qb.correct))
        if qa.correct != qb.correct:
            flips.append(Flip(id=qid, subject=qa.subject, gold=qa.gold, pred_a=qa.pred, pred_b=qb.pred))
    order = [s.name for s in task.subjects if s.name in xa]
    va = {s: np.asarray(xa[s]) for s in order}
    vb = {s: np.asarray(xb[s]) for s in order}
    pq = {
        s: per_question([by_id_a[i] for i in ids], [by_id_b[i] for i in ids])
        for s, ids in _ids_by_subject(shared, by_id_a).items()
    }
    aggregation = a.result.scheme.aggregation
    weights = subject_points(task)
    by_subject = _ids_by_subject(shared, by_id_a)
    qi = {s: question_index(ids) for s, ids in by_subject.items()}  # rotations of a question: one draw
    ca = {s: calibration_inputs([by_id_a[i] for i in ids])[s] for s, ids in by_subject.items()}
    cb = {s: calibration_inputs([by_id_b[i] for i in ids])[s] for s, ids in by_subject.items()}

    def cal(members: Sequence[str]) -> tuple[dict, dict, int]:
        return {s: ca[s] for s in members}, {s: cb[s] for s in members}, bins

    groups = {}
    for group in task.categories + task.extra_groups:
        members = group_members(task, group, order)
        if members:
            groups[group] = _delta(
                {s: va[s] for s in members},
                {s: vb[s] for s in members},
                {s: qi[s] for s in members},
                {s: pq[s] for s in members},
                aggregation,
                n_boot,
                seed,
                cal(members),
                weights,
            )
    return BenchmarkComparison(
        task=task.name,
        title=task.title,
        label_a=run_label(a.result, task.eval_split),
        label_b=run_label(b.result, task.eval_split),
        aggregation=aggregation,
        subjects={
            s: _delta(
                {s: va[s]}, {s: vb[s]}, {s: qi[s]}, {s: pq[s]}, aggregation, n_boot, seed, cal([s]), weights
            )
            for s in order
        },
        groups=groups,
        overall=_delta(va, vb, qi, pq, aggregation, n_boot, seed, cal(order), weights),
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
    """Compare B with A on every task they share, and gate each benchmark's Average: its accuracy drop
    (points), its mean KL (nats) and its top-letter agreement (fraction). A value equal to a threshold
    passes; the tolerance absorbs float noise."""
    check_thresholds(max_drop, max_kl, min_agreement, max_ece_increase)
    benchmarks = {}
    for a, b in pair_by_task(runs_a, runs_b):
        task = task_for(a.result.config.task)
        benchmarks[task.name] = compare_pair(
            task, a, b, allow_subset=allow_subset, n_boot=n_boot, seed=seed, bins=bins
        )
    gates = []
    if max_drop is not None:
        drops = {name: -100 * c.overall.delta for name, c in benchmarks.items()}
        gates.append(
            Gate("max drop", max_drop, "points", {n: v for n, v in drops.items() if v > max_drop + 1e-9})
        )
    if max_kl is not None:
        kls = {name: c.overall.divergence.kl_mean.value for name, c in benchmarks.items()}
        gates.append(
            Gate("max KL", max_kl, "nats", {n: v for n, v in kls.items() if not v <= max_kl + 1e-12})
        )  # NaN/inf KL fails
    if min_agreement is not None:
        agreements = {name: c.overall.divergence.agreement.value for name, c in benchmarks.items()}
        gates.append(
            Gate(
                "min agreement",
                min_agreement,
                "fraction",
                {n: v for n, v in agreements.items() if v < min_agreement - 1e-12},
            )
        )
    if max_ece_increase is not None:
        rises = {name: 100 * c.overall.calibration.ece_delta for name, c in benchmarks.items()}
        gates.append(
            Gate(
                "max ECE increase",
                max_ece_increase,
                "points",
                {n: v for n, v in rises.items() if not v <= max_ece_increase + 1e-9},
            )
        )
    failed = tuple(name for name in benchmarks if any(name in gate.failed for gate in gates))
    return Comparison(benchmarks=benchmarks, max_drop=max_drop, failed=failed, gates=tuple(gates))
