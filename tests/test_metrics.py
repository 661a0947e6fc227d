"""Aggregation against the published arithmetic (PROTOCOL §3), micro vs macro by hand, bootstrap CIs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from builders import answers, small_task

from evalkit.questions.permute import ROTATIONS, rotated_id
from evalkit.stats.metrics import aggregate, bootstrap_ci, combine, correct_by_subject, questions_by_subject
from evalkit.types import EvalkitError, QuestionResult, Task
from tasks import get_task

# Baichuan-13B-Base rows of the README tables (reference/Baichuan-13B-README.md)
CEVAL_BASE = {"STEM": 45.9, "Social Sciences": 63.5, "Humanities": 57.2, "Others": 49.3}
CMMLU_BASE = {"STEM": 41.7, "Humanities": 61.1, "Social Sciences": 59.8, "Others": 59.0}
MMLU_BASE = {"STEM": 41.6, "Social Sciences": 60.9, "Humanities": 47.4, "Others": 58.5}
MMLU_TEST_QUESTIONS = {"STEM": 3018, "Humanities": 4705, "Social Sciences": 3077, "Others": 3242}


def test_micro_and_macro_differ_as_computed_by_hand():
    rs = answers("t", "s1", 1, 1) + answers("t", "s2", 1, 3) + answers("t", "s3", 3, 4)
    micro = aggregate(small_task(), "micro", rs)
    macro = aggregate(small_task(), "macro", rs)
    assert micro.subjects == macro.subjects
    assert micro.subjects["s2"].accuracy == pytest.approx(1 / 3) and micro.subjects["s2"].n == 3
    assert micro.groups["X"].accuracy == pytest.approx(2 / 4)  # 2 right of 4 questions
    assert macro.groups["X"].accuracy == pytest.approx((1 + 1 / 3) / 2)  # mean of the two subjects
    assert (macro.groups["X"].n, macro.groups["X"].n_subjects) == (4, 2)
    assert macro.groups["Hard"].accuracy == pytest.approx(1 / 3)  # the extra group holds s2 alone
    assert micro.overall.accuracy == pytest.approx(5 / 8)
    assert macro.overall.accuracy == pytest.approx((1 + 1 / 3 + 3 / 4) / 3)
    assert (macro.overall.n, macro.overall.n_subjects) == (8, 3)
    assert list(macro.groups) == ["X", "Y", "Hard"]


def test_subset_run_reports_only_the_groups_it_has():
    agg = aggregate(small_task(), "macro", answers("t", "s3", 1, 2))
    assert list(agg.subjects) == ["s3"]
    assert list(agg.groups) == ["Y"]
    assert agg.overall.accuracy == 0.5 and agg.overall.n_subjects == 1


def test_unlabeled_results_have_no_accuracy():
    agg = aggregate(small_task(), "macro", answers("t", "s1", 0, 3, gold=None))
    assert agg.overall is None and agg.subjects == {} and agg.groups == {}


def test_labeled_and_unlabeled_mixed_is_an_error():
    with pytest.raises(EvalkitError, match="mixed.*t/s2/test/0"):
        aggregate(small_task(), "micro", answers("t", "s1", 1, 1) + answers("t", "s2", 0, 1, gold=None))


def test_unknown_subject_is_an_error_naming_the_valid_ones():
    with pytest.raises(EvalkitError, match=r"unknown t subject 'nope' \(valid: s1, s2, s3\)"):
        aggregate(small_task(), "micro", answers("t", "nope", 1, 1))


def test_unknown_aggregation_is_an_error():
    with pytest.raises(EvalkitError, match="valid: micro, macro"):
        combine({"s1": np.ones(2)}, "median")


def per_category_results(task: Task, figures: dict[str, float], per_subject: int) -> list[QuestionResult]:
    """Every subject scores its (topical) category's published figure, on `per_subject` questions."""
    out = []
    for subject in task.subjects:
        figure = next(figures[c] for c in subject.categories if c in figures)
        out += answers("t", subject.name, round(figure / 100 * per_subject), per_subject)
    return out


def test_ceval_macro_reproduces_the_published_average():
    task = get_task("ceval")
    agg = aggregate(task, task.schemes["official"].aggregation, per_category_results(task, CEVAL_BASE, 1000))
    assert {c: round(100 * agg.groups[c].accuracy, 1) for c in CEVAL_BASE} == CEVAL_BASE
    assert 100 * agg.overall.accuracy == pytest.approx(52.39, abs=0.005)  # subject-count weights 20/10/11/11
    assert round(100 * agg.overall.accuracy, 1) == 52.4  # the README figure
    assert agg.overall.n_subjects == 52 and agg.groups["Avg(Hard)"].n_subjects == 8
    assert 100 * agg.groups["Avg(Hard)"].accuracy == pytest.approx(45.9)  # the hard subjects are all STEM


def test_cmmlu_macro_reproduces_the_published_average():
    task = get_task("cmmlu")
    agg = aggregate(task, task.schemes["official"].aggregation, per_category_results(task, CMMLU_BASE, 1000))
    assert 100 * agg.overall.accuracy == pytest.approx(55.28, abs=0.005)
    assert round(100 * agg.overall.accuracy, 1) == 55.3
    assert agg.groups["China Specific"].n_subjects == 15  # overlaps the topical categories
    assert sum(agg.groups[c].n_subjects for c in CMMLU_BASE) == 67  # which partition the subjects


def test_mmlu_micro_reproduces_the_published_average_and_macro_would_not():
    task = get_task("mmlu")
    rs = []
    for category, total in MMLU_TEST_QUESTIONS.items():  # the real per-category question counts
        members = task.group_subjects(category)
        correct = round(MMLU_BASE[category] / 100 * total)
        for k, subject in enumerate(members):  # spread the questions and right answers over the subjects
            share = total // len(members) + (k < total % len(members))
            right = correct // len(members) + (k < correct % len(members))
            rs += answers("t", subject, right, share)
    micro = aggregate(task, task.schemes["official"].aggregation, rs)
    assert micro.overall.n == 14042
    assert 100 * micro.overall.accuracy == pytest.approx(51.67, abs=0.01)
    macro = aggregate(task, "macro", rs)  # subject-count weights 18/12/13/14 instead of question counts
    assert 100 * macro.overall.accuracy == pytest.approx(51.14, abs=0.01)


def test_bootstrap_is_seeded_and_matches_the_binomial_width():
    values = {"s": np.array([1.0] * 500 + [0.0] * 500)}
    first = bootstrap_ci(values, "micro", seed=7)
    assert first == bootstrap_ci(values, "micro", seed=7)
    assert first != bootstrap_ci(values, "micro", seed=8)
    half_width = 1.96 * np.sqrt(0.25 / 1000)  # normal approximation of the binomial
    assert first.low == pytest.approx(0.5 - half_width, abs=0.006)
    assert first.high == pytest.approx(0.5 + half_width, abs=0.006)


def test_bootstrap_macro_weights_subjects_equally():
    values = {"small": np.ones(10), "big": np.array([1.0] * 500 + [0.0] * 500)}
    micro, macro = bootstrap_ci(values, "micro"), bootstrap_ci(values, "macro")
    assert micro.low < 510 / 1010 < micro.high
    assert macro.low < 0.75 < macro.high and micro.high < macro.low
    big_alone = bootstrap_ci({"big": values["big"]}, "micro")
    # "small" never varies, so the macro mean moves half as much as "big" alone
    assert macro.high - macro.low == pytest.approx((big_alone.high - big_alone.low) / 2, rel=0.1)


def test_bootstrap_counts_draw_equals_index_resampling():
    rng = np.random.default_rng(0)
    values = rng.choice([-1.0, 0.0, 1.0], size=200, p=[0.2, 0.7, 0.1])
    ours = bootstrap_ci({"s": values}, "micro", n_boot=20000, seed=1)
    indices = np.random.default_rng(2).integers(0, len(values), size=(20000, len(values)))
    low, high = np.quantile(values[indices].mean(axis=1), [0.025, 0.975])
    assert ours.low == pytest.approx(low, abs=0.006) and ours.high == pytest.approx(high, abs=0.006)


def test_bootstrap_of_constant_values_is_a_point():
    interval = bootstrap_ci(correct_by_subject(answers("t", "s1", 4, 4)), "macro")
    assert (interval.low, interval.high) == (1.0, 1.0)


def test_bootstrap_bad_input():
    with pytest.raises(EvalkitError, match="level"):
        bootstrap_ci({"s": [1.0]}, "micro", level=95)
    with pytest.raises(EvalkitError, match="no labeled results"):
        bootstrap_ci(correct_by_subject(answers("t", "s1", 0, 2, gold=None)), "micro")


def test_cluster_bootstrap_equals_resampling_whole_questions():
    """With `questions`, a draw is a question with all its lines (rotations), sums and line counts
    resampled together: the interval matches index resampling of whole questions, including questions
    whose rotations disagree and a question with fewer lines."""
    rng = np.random.default_rng(3)
    per_question = [rng.integers(0, 2, size=4 if i else 2).astype(float) for i in range(150)]
    values = np.concatenate(per_question)
    questions = np.repeat(np.arange(150), [len(v) for v in per_question])
    ours = bootstrap_ci({"s": values}, "micro", questions={"s": questions}, n_boot=20000, seed=1)
    sums = np.array([v.sum() for v in per_question])
    sizes = np.array([len(v) for v in per_question])
    drawn = np.random.default_rng(2).integers(0, 150, size=(20000, 150))
    low, high = np.quantile(sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1), [0.025, 0.975])
    assert ours.low == pytest.approx(low, abs=0.006) and ours.high == pytest.approx(high, abs=0.006)


def test_report_intervals_of_a_cyclic_run_resample_questions():
    results = answers("t", "s1", 30, 60) + answers("t", "s2", 10, 40)
    rotated = [dataclasses.replace(r, id=rotated_id(r.id, k)) for r in results for k in range(ROTATIONS)]
    values, questions = correct_by_subject(rotated), questions_by_subject(rotated)
    assert [len(np.unique(questions[s])) for s in ("s1", "s2")] == [60, 40]
    for aggregation in ("micro", "macro"):
        assert bootstrap_ci(values, aggregation, questions=questions) == bootstrap_ci(
            correct_by_subject(results), aggregation
        )
