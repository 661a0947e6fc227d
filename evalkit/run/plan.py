"""What a run is about to compute, told before scoring starts, and how long it should take.

The plan is arithmetic on token ids (evalkit.backends.hf.batching's prefix groups), so it is exact before the
first forward: prompt tokens without reuse are the sum of the prompts' lengths; with reuse each
prefix group's shared prefix is computed once, saving (members - 1) * prefix tokens. The time
estimate extrapolates the first batch's measured seconds by prompt tokens. No torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from evalkit.backends.hf.batching import prefix_groups


@dataclass(frozen=True)
class TokenPlan:
    """The questions of one task still to score and the prompt tokens they cost."""

    subjects: int  # subjects with something left to score
    questions: int  # questions of the task
    todo: int  # of which still to score (the rest was scored by an interrupted run)
    plain_tokens: int  # prompt tokens to compute, every prompt in full
    reuse_tokens: int  # the same, each prefix group's shared prefix computed once

    @property
    def done(self) -> int:
        return self.questions - self.todo


def token_plan(subjects: Sequence[tuple[Sequence[Sequence[int]], Collection[int]]]) -> TokenPlan:
    """The plan of a task from each subject's (token ids of every prompt, indices still to score).

    Groups come from all of a subject's prompts, as the Scorer plans them; only the prompts still to
    score are counted, a group's prefix once if any of its members is left.
    """
    busy = questions = todo_count = plain = saved = 0
    for token_ids, todo in subjects:
        todo = set(todo)
        questions += len(token_ids)
        if not todo:
            continue
        busy += 1
        todo_count += len(todo)
        plain += sum(len(token_ids[i]) for i in todo)
        for prefix, members in prefix_groups(token_ids):
            left = len(todo.intersection(members))
            saved += max(left - 1, 0) * prefix
    return TokenPlan(busy, questions, todo_count, plain, plain - saved)


def describe_plan(title: str, plan: TokenPlan, reuse_note: str = "") -> str:
    """One line: questions to score and the prompt tokens without and with prefix reuse."""
    ratio = f", {plan.plain_tokens / plan.reuse_tokens:.1f}x fewer" if plan.reuse_tokens else ""
    return (
        f"{title}: {plan.todo} questions to score in {plan.subjects} subjects; prompt tokens to compute: "
        f"{plan.plain_tokens:,} without prefix reuse, {plan.reuse_tokens:,} with it{ratio}{reuse_note}"
    )


def describe_resume(path: object, plan: TokenPlan) -> str:
    return f"resuming {path}: {plan.done} of {plan.questions} questions already scored"


def estimate_seconds(batch_seconds: float, batch_tokens: int, plan: TokenPlan, processes: int = 1) -> float:
    """The task's scoring time extrapolated from one batch by prompt tokens (processes share the work)."""
    return batch_seconds * plan.plain_tokens / max(batch_tokens, 1) / max(processes, 1)


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_estimate(title: str, rows: int, batch_seconds: float, estimate: float, plan: TokenPlan) -> str:
    return (
        f"{title}: first batch ({rows} questions) took {format_duration(batch_seconds)}: "
        f"about {format_duration(estimate)} for the {plan.todo} questions to score"
    )


class FirstBatchEstimate:
    """Times the first batch a task's scoring yields (from when scoring starts) and prints, once, the
    task's time extrapolated from it; the first batch carries the engine's probe, so it errs long."""

    def __init__(self, title: str, plan: TokenPlan, processes: int = 1) -> None:
        self.title, self.plan, self.processes = title, plan, processes
        self.started: float | None = time.perf_counter()

    def batch_done(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Called with each batch's prompts; acts on the first only."""
        if self.started is None:
            return
        seconds = time.perf_counter() - self.started
        self.started = None
        total = estimate_seconds(seconds, sum(map(len, token_ids)), self.plan, self.processes)
        tqdm.write(describe_estimate(self.title, len(token_ids), seconds, total, self.plan), file=sys.stderr)
