"""Shared builders of test records (`from builders import answers, run_result`): question results,
run results aggregated the way the runner aggregates them, saved runs, and a three-subject task.

    qs = answers("ceval", "accountant", right=3, total=4, split="val")   # the first 3 right
    result = run_result(RunConfig(model="org/M", task="ceval"), qs)       # run.json as the runner writes it
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from evalkit.stats.metrics import aggregate
from evalkit.store.records import Environment, ModelInfo, RunResult, SavedRun, Timings
from evalkit.types import QuestionResult, RunConfig, Subject, Task
from tasks import get_task

LOGPROBS = (-1.0, -2.0, -3.0, -4.0)


def question(
    index: int,
    *,
    task: str = "ceval",
    subject: str = "accountant",
    split: str = "val",
    gold: str | None = "A",
    pred: str = "A",
    prompt_tokens: int = 100,
) -> QuestionResult:
    """One scored question with the id `<task>/<subject>/<split>/<index>`; correct = (pred == gold)."""
    return QuestionResult(
        id=f"{task}/{subject}/{split}/{index}",
        subject=subject,
        gold=gold,
        pred=pred,
        logprobs=LOGPROBS,
        correct=None if gold is None else pred == gold,
        shots_used=5,
        prompt_tokens=prompt_tokens,
    )


def answers(
    task: str,
    subject: str,
    right: int | Collection[int],
    total: int,
    *,
    split: str = "test",
    gold: str | None = "A",
    wrong: str = "C",
) -> list[QuestionResult]:
    """`total` questions of `subject` predicting "A"; those in `right` (a count: the first ones, or a set of
    indices) answered "A", the others `wrong`; with gold None they are unlabeled (C-Eval test)."""
    chosen = set(range(right)) if isinstance(right, int) else set(right)
    return [
        question(i, task=task, subject=subject, split=split, gold=gold, pred="A" if i in chosen else wrong)
        for i in range(total)
    ]


def run_result(config: RunConfig, questions: Sequence[QuestionResult], **fields: object) -> RunResult:
    """The RunResult of `questions` under `config`, aggregated with the task's scheme; `fields` override."""
    task = get_task(config.task)
    scheme = task.schemes[config.scheme]
    summary = aggregate(task, scheme.aggregation, questions)
    values = {
        "config": config,
        "config_hash": config.config_hash(),
        "scheme": scheme,
        "letter_ids": (29909, 29933, 29907, 29928),
        "letter_strings": ("A", "B", "C", "D"),
        "bos": True,
        "environment": Environment(packages={"torch": "2.13"}),
        "subjects": summary.subjects,
        "groups": summary.groups,
        "overall": summary.overall,
        "timings": Timings(scoring_seconds=1.5),
        "engine": "prefix",
        "model_info": ModelInfo(precision=config.precision),
        "limited": config.limit is not None,
    }
    return RunResult(**{**values, **fields})


def saved_run(config: RunConfig, questions: Sequence[QuestionResult], **fields: object) -> SavedRun:
    """A finished run as `load_run` returns it."""
    return SavedRun(run_result(config, questions, **fields), list(questions))


def small_task() -> Task:
    """Task "t": s1 and s2 in category X (s2 also in the extra group Hard), s3 in Y."""
    subjects = (
        Subject("s1", "S1", "", ("X",)),
        Subject("s2", "S2", "", ("X", "Hard")),
        Subject("s3", "S3", "", ("Y",)),
    )
    return Task(
        name="t",
        title="T",
        subjects=subjects,
        eval_split="test",
        shot_split="dev",
        splits=("dev", "test"),
        local_path="{split}/{subject}.csv",
        csv_header=None,
        hub_id="",
        hub_splits={},
        categories=("X", "Y"),
        extra_groups=("Hard",),
    )
