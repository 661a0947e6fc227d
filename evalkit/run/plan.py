"""What a run is about to compute, told before scoring starts, and how long it should take.

The plan is arithmetic on token ids (evalkit.backends.hf.batching's prefix groups), so it is exact before the
first forward: prompt tokens without reuse are the sum of the prompts' lengths; with reuse each
prefix group's shared prefix is computed once, saving (members - 1) * prefix tokens. The time
estimate extrapolates the batches after the first by prompt tokens: the first carries the engine's
one-off probe and a prefix, and alone it overestimated a 3-minute task as 52 minutes. No torch.
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


ESTIMATE_SHARE = 0.1  # the estimate waits for this share of the prompt tokens after the first batch,
ESTIMATE_SECONDS = 60.0  # or for this many seconds of them, whichever comes first


def estimate_seconds(
    first_seconds: float, first_tokens: int, seconds: float, tokens: int, plan: TokenPlan, processes: int = 1
) -> float:
    """The task's scoring time: the first batch as it took, the rest of this process's share of the
    prompt tokens at the rate of the batches after it (`seconds` for `tokens`)."""
    rest = max(plan.plain_tokens / max(processes, 1) - first_tokens, 0)
    return first_seconds + seconds * rest / max(tokens, 1)


def format_duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_estimate(title: str, rows: int, seconds: float, estimate: float, plan: TokenPlan) -> str:
    return (
        f"{title}: {rows} questions scored in {format_duration(seconds)}: "
        f"about {format_duration(estimate)} for the {plan.todo} questions to score"
    )


class ScoringEstimate:
    """Prints, once, the task's scoring time: the first batch counted as it took, the rest extrapolated by
    prompt tokens from the batches after it, once they make ESTIMATE_SHARE of the tokens or have taken
    ESTIMATE_SECONDS. A task done in one batch needs no estimate."""

    def __init__(self, title: str, plan: TokenPlan, processes: int = 1) -> None:
        self.title, self.plan, self.processes = title, plan, processes
        self.started = time.perf_counter()
        self.first: tuple[float, int] | None = None  # seconds and prompt tokens of the first batch
        self.tokens = self.rows = 0  # of the batches after it
        self.done = False

    def batch_done(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Called with each batch's prompts."""
        if self.done:
            return
        elapsed, tokens = time.perf_counter() - self.started, sum(map(len, token_ids))
        self.rows += len(token_ids)
        if self.first is None:
            self.first = elapsed, tokens
            return
        self.tokens += tokens
        first_seconds, first_tokens = self.first
        seconds = elapsed - first_seconds
        share = self.tokens / max(self.plan.plain_tokens / max(self.processes, 1) - first_tokens, 1)
        if share < ESTIMATE_SHARE and seconds < ESTIMATE_SECONDS:
            return
        self.done = True
        total = estimate_seconds(first_seconds, first_tokens, seconds, self.tokens, self.plan, self.processes)
        tqdm.write(describe_estimate(self.title, self.rows, elapsed, total, self.plan), file=sys.stderr)
