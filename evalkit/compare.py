"""Paired comparison of two runs (B against baseline A) on the questions both scored, and the gate.

Per subject, category and benchmark: accuracies of A and B and their delta (aggregated micro or
macro like the benchmark), a paired bootstrap 95% interval of the delta (questions resampled
within subjects, the same draw for A and B), McNemar's exact p-value (two-sided binomial test on
the discordant questions; it is a question-level test whatever the aggregation), and the questions
that flipped. `max_drop` (accuracy points) gates quantized models: a benchmark whose Average drops
by more fails, and the CLI exits 1. The markdown puts the answer first (each benchmark's Average
and the gate), and lists only the subjects where something changed unless asked for all.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from evalkit.metrics import Interval, bootstrap_ci, combine, group_members
from evalkit.report import markdown_table, run_label
from evalkit.results import SavedRun
from evalkit.types import Aggregation, EvalkitError, Metric, Task

SAMPLE_IDS = 3  # question ids quoted in a mismatch error


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
    failed: tuple[str, ...]  # benchmarks whose Average dropped by more than max_drop

    @property
    def passed(self) -> bool:
        return not self.failed


def mcnemar_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact McNemar: under no difference each discordant question flips either way with p = 1/2."""
    discordant = right_to_wrong + wrong_to_right
    return 1.0 if discordant == 0 else float(binomtest(right_to_wrong, discordant, 0.5).pvalue)


def _check_comparable(task: Task, a: SavedRun, b: SavedRun) -> None:
    """Scores from different prompts, shots or splits are not a paired comparison: refuse them."""
    ca, cb = a.result.config, b.result.config
    settings = {
        "task": (ca.task, cb.task),
        "scheme": (ca.scheme, cb.scheme),
        "letter rule": (ca.letter_rule or a.result.scheme.letter_rule,
                        cb.letter_rule or b.result.scheme.letter_rule),
        "shots": (ca.shots, cb.shots),
        "split": (ca.split or task.eval_split, cb.split or task.eval_split),
    }
    if a.result.scheme.shot_order == "shuffled_per_question":
        settings["shot shuffle seed"] = (ca.seed, cb.seed)
    for name, (va, vb) in settings.items():
        if va != vb:
            raise EvalkitError(f"cannot compare: {name} differs (A: {va!r}, B: {vb!r}); a paired comparison "
                               "needs the same prompts on the same questions")
    if a.result.scheme != b.result.scheme:
        raise EvalkitError(f"cannot compare: scheme {ca.scheme!r} was recorded with different contents in A "
                           "and B (made by different evalkit versions?)")
    for side, run in (("A", a), ("B", b)):
        if run.result.overall is None:
            raise EvalkitError(f"cannot compare: run {side} ({task.name} {ca.split or task.eval_split}) has "
                               "no gold answers")


def _shared_ids(a: SavedRun, b: SavedRun, allow_subset: bool) -> tuple[list[str], int, int]:
    ids_a = [q.id for q in a.questions]
    ids_b = {q.id for q in b.questions}
    shared = [i for i in ids_a if i in ids_b]
    only_a, only_b = len(ids_a) - len(shared), len(ids_b) - len(shared)
    if (only_a or only_b) and not allow_subset:
        examples_a = [i for i in ids_a if i not in ids_b][:SAMPLE_IDS]
        examples_b = sorted(ids_b - set(ids_a))[:SAMPLE_IDS]
        raise EvalkitError(f"cannot compare: the question sets differ ({only_a} only in A, e.g. "
                           f"{examples_a}; {only_b} only in B, e.g. {examples_b}); pass --allow-subset to "
                           f"compare the {len(shared)} questions both scored")
    if not shared:
        raise EvalkitError("cannot compare: the runs share no question")
    return shared, only_a, only_b


def _delta(xa: Mapping[str, np.ndarray], xb: Mapping[str, np.ndarray], aggregation: Aggregation,
           n_boot: int, seed: int) -> Delta:
    ma, mb = combine(xa, aggregation), combine(xb, aggregation)
    diffs = {s: xb[s] - xa[s] for s in xa}
    right_to_wrong = int(sum((d < 0).sum() for d in diffs.values()))
    wrong_to_right = int(sum((d > 0).sum() for d in diffs.values()))
    return Delta(a=ma, b=mb, delta=mb.accuracy - ma.accuracy,
                 ci=bootstrap_ci(diffs, aggregation, n_boot=n_boot, seed=seed),
                 right_to_wrong=right_to_wrong, wrong_to_right=wrong_to_right,
                 p_value=mcnemar_p(right_to_wrong, wrong_to_right))


def compare_pair(task: Task, a: SavedRun, b: SavedRun, *, allow_subset: bool = False, n_boot: int = 2000,
                 seed: int = 0) -> BenchmarkComparison:
    """B against A on one benchmark, question by question."""
    _check_comparable(task, a, b)
    shared, only_a, only_b = _shared_ids(a, b, allow_subset)
    by_id_a, by_id_b = {q.id: q for q in a.questions}, {q.id: q for q in b.questions}
    xa: dict[str, list[float]] = {}
    xb: dict[str, list[float]] = {}
    flips = []
    for qid in shared:
        qa, qb = by_id_a[qid], by_id_b[qid]
        if qa.gold != qb.gold or qa.subject != qb.subject:
            raise EvalkitError(f"cannot compare: question {qid} differs between the runs (A: {qa.subject} "
                               f"gold {qa.gold}, B: {qb.subject} gold {qb.gold}); the data changed")
        xa.setdefault(qa.subject, []).append(float(qa.correct))
        xb.setdefault(qa.subject, []).append(float(qb.correct))
        if qa.correct != qb.correct:
            flips.append(Flip(id=qid, subject=qa.subject, gold=qa.gold, pred_a=qa.pred, pred_b=qb.pred))
    order = [s.name for s in task.subjects if s.name in xa]
    va = {s: np.asarray(xa[s]) for s in order}
    vb = {s: np.asarray(xb[s]) for s in order}
    aggregation = a.result.scheme.aggregation
    groups = {}
    for group in task.categories + task.extra_groups:
        members = group_members(task, group, order)
        if members:
            groups[group] = _delta({s: va[s] for s in members}, {s: vb[s] for s in members}, aggregation,
                                   n_boot, seed)
    return BenchmarkComparison(
        task=task.name, title=task.title, label_a=run_label(a.result, task.eval_split),
        label_b=run_label(b.result, task.eval_split), aggregation=aggregation,
        subjects={s: _delta({s: va[s]}, {s: vb[s]}, aggregation, n_boot, seed) for s in order},
        groups=groups, overall=_delta(va, vb, aggregation, n_boot, seed),
        flips=tuple(flips), only_a=only_a, only_b=only_b)


def pair_by_task(runs_a: Sequence[SavedRun], runs_b: Sequence[SavedRun]) -> list[tuple[SavedRun, SavedRun]]:
    """Match two sets of runs by task: each task once per set, and in both sets."""
    sides = {}
    for side, runs in (("A", runs_a), ("B", runs_b)):
        tasks = [r.result.config.task for r in runs]
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise EvalkitError(f"cannot compare: side {side} has several runs of {', '.join(repeated)}; "
                               "give one each")
        sides[side] = {r.result.config.task: r for r in runs}
    if sides["A"].keys() != sides["B"].keys():
        raise EvalkitError(f"cannot compare: A has tasks {sorted(sides['A'])}, B has {sorted(sides['B'])}; "
                           "give the same tasks on both sides")
    return [(sides["A"][t], sides["B"][t]) for t in sides["A"]]


def compare(runs_a: Sequence[SavedRun], runs_b: Sequence[SavedRun], task_for: Callable[[str], Task], *,
            max_drop: float | None = None, allow_subset: bool = False, n_boot: int = 2000,
            seed: int = 0) -> Comparison:
    """Compare B with A on every task they share, and gate on the drop of each benchmark's Average."""
    if max_drop is not None and max_drop < 0:
        raise EvalkitError(f"max drop must be >= 0 accuracy points, got {max_drop}")
    benchmarks = {}
    for a, b in pair_by_task(runs_a, runs_b):
        task = task_for(a.result.config.task)
        benchmarks[task.name] = compare_pair(task, a, b, allow_subset=allow_subset, n_boot=n_boot, seed=seed)
    # a drop equal to max_drop passes; the tolerance absorbs float noise in (b - a) * 100
    failed = tuple(name for name, c in benchmarks.items()
                   if max_drop is not None and -100 * c.overall.delta > max_drop + 1e-9)
    return Comparison(benchmarks=benchmarks, max_drop=max_drop, failed=failed)


def _rows(deltas: Mapping[str, Delta]) -> pd.DataFrame:
    return pd.DataFrame.from_dict({name: {
        "A": f"{100 * d.a.accuracy:.1f}", "B": f"{100 * d.b.accuracy:.1f}", "Δ": f"{100 * d.delta:+.1f}",
        "95% CI": f"{100 * d.ci.low:+.1f} … {100 * d.ci.high:+.1f}", "n": d.a.n,
        "right→wrong": d.right_to_wrong, "wrong→right": d.wrong_to_right, "McNemar p": f"{d.p_value:.3g}",
    } for name, d in deltas.items()}, orient="index")


def _changed(delta: Delta) -> bool:
    """Something moved: the accuracy, or questions flipped (both ways, the accuracy may stay put)."""
    return abs(delta.delta) > 1e-12 or delta.right_to_wrong + delta.wrong_to_right > 0


def _summary(comparison: Comparison) -> list[str]:
    """The answer first: each benchmark's Average, and the gate's verdict."""
    rows = _rows({c.title: c.overall for c in comparison.benchmarks.values()}).rename_axis("benchmark")
    labels = {(c.label_b, c.label_a) for c in comparison.benchmarks.values()}
    sides = "B = {} vs A = {}".format(*labels.pop()) if len(labels) == 1 else "B vs A"
    parts = [f"## Summary: {sides} (benchmark Averages, accuracy points)\n", markdown_table(rows)]
    if comparison.max_drop is not None:
        verdict = ("FAIL: " + ", ".join(comparison.failed)) if comparison.failed else "pass"
        parts += [f"Gate (max drop {comparison.max_drop} points): {verdict}", ""]
    return parts


def _subject_rows(c: BenchmarkComparison, all_subjects: bool) -> list[str]:
    shown = {name: d for name, d in c.subjects.items() if all_subjects or _changed(d)}
    parts = [markdown_table(_rows(shown).rename_axis("subject"))] if shown else []
    if len(shown) < len(c.subjects):
        hidden = len(c.subjects) - len(shown)
        parts.append(f"Not listed: {hidden} of {len(c.subjects)} subjects, unchanged (same accuracy, no "
                     "question flipped); --all-subjects lists every subject\n")
    return parts


def to_markdown(comparison: Comparison, max_flips: int = 20, all_subjects: bool = False) -> str:
    """The summary and the gate first; then per benchmark: the Average and categories, the subjects where
    something changed (every subject with `all_subjects`), and the first flipped questions."""
    parts = _summary(comparison)
    for c in comparison.benchmarks.values():
        parts.append(f"## {c.title}: B = {c.label_b} vs A = {c.label_a} (accuracy points, {c.aggregation})\n")
        if c.only_a or c.only_b:
            parts.append(f"⚠ subset comparison: {c.only_a} questions only in A and {c.only_b} only in B "
                         "left out\n")
        parts.append(markdown_table(_rows({"Average": c.overall, **c.groups}).rename_axis("group")))
        parts += _subject_rows(c, all_subjects)
        for direction in ("right→wrong", "wrong→right"):
            flips = [f for f in c.flips if f.direction == direction]
            shown = ", ".join(f"{f.id} ({f.pred_a}→{f.pred_b}, gold {f.gold})" for f in flips[:max_flips])
            more = f" … and {len(flips) - max_flips} more" if len(flips) > max_flips else ""
            parts.append(f"- {direction}: {len(flips)}" + (f": {shown}{more}" if flips else ""))
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"
