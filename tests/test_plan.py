"""The plan printed before scoring: prompt tokens with and without prefix reuse (exact arithmetic on token
ids) and the time estimate, which leaves the first batch (the engine's one-off probe) out of the rate."""

from __future__ import annotations

import pytest

from evalkit.run.plan import TokenPlan, estimate_seconds, token_plan


def test_token_plan_counts_each_group_prefix_once_and_only_what_is_left():
    shared = list(range(100, 400))  # a prefix long enough to be worth a group
    subject = [shared + [7, 8], shared + [9], shared + [10, 11, 12], [20, 21]]
    plan = token_plan([(subject, {0, 1, 2, 3})])
    assert (plan.questions, plan.todo, plan.plain_tokens) == (4, 4, 3 * len(shared) + 2 + 1 + 3 + 2)
    assert plan.reuse_tokens == plan.plain_tokens - 2 * len(shared)  # the prefix of 3 prompts computed once
    left = token_plan(
        [(subject, {2, 3}), (subject, set())]
    )  # an interrupted run: two scored, one subject done
    assert (left.subjects, left.questions, left.todo, left.plain_tokens) == (1, 8, 2, len(shared) + 3 + 2)
    assert left.reuse_tokens == left.plain_tokens  # one member of the group left: nothing is shared


def test_the_estimate_extrapolates_the_batches_after_the_first():
    plan = TokenPlan(subjects=6, questions=240, todo=240, plain_tokens=252_000, reuse_tokens=45_000)
    # the first batch (probe and a prefix) took 19 s for 1,000 tokens; then 5,000 tokens took 2 s
    assert estimate_seconds(19.0, 1_000, 2.0, 5_000, plan) == pytest.approx(19 + 2 * 251_000 / 5_000)
    # two processes share the tokens: each has half of them to score
    assert estimate_seconds(19.0, 1_000, 2.0, 5_000, plan, processes=2) == pytest.approx(
        19 + 2 * 125_000 / 5_000
    )
