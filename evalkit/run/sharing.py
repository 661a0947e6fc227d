"""One run directory shared by the processes of a run (one process without `accelerate launch`).

The main process locks and opens (or resumes) the directory and drops the results the data no
longer backs: a result whose prompt (prompt_hash) or gold answer no longer matches, or whose
question is gone, is scored again, and the run says how many. Every process then scores its share
of the subjects still to score, balanced by their token counts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from evalkit.questions.prepare import Prepared
from evalkit.run.plan import TokenPlan, token_plan
from evalkit.store.run_dir import RunDir
from evalkit.types import EvalkitError, QuestionResult, RunConfig, SubjectData, token_ids_hash

log = logging.getLogger(__name__)


class _Opened(NamedTuple):
    """What the main process tells the others once it has opened the run directory."""

    path: str | None
    resumed: bool | None
    error: str | None  # the main process's EvalkitError: every process stops with it


def open_shared_run_dir(
    state: PartialState,
    config: RunConfig,
    label: str,
    data_files: dict[str, str] | None,
    prepared: list[Prepared],
) -> tuple[RunDir, dict[str, QuestionResult]]:
    """The main process locks and opens (or resumes) the run, merges shards a killed run left and drops
    results the data no longer backs; all processes share its path and what is done."""
    shared = _Opened(None, None, None)
    run_dir = None
    if state.is_main_process:
        try:
            run_dir = RunDir.open(config, label, data_files)
            run_dir.merge_shards()
            drop_stale(run_dir, prepared, run_dir.completed())
            shared = _Opened(str(run_dir.path), run_dir.resumed, None)
        except EvalkitError as err:
            if run_dir is not None:
                run_dir.release()
            if state.num_processes == 1:
                raise
            shared = _Opened(None, None, str(err))  # every process stops with it, none waits at a barrier
    if state.num_processes > 1:
        box = [shared]  # broadcast_object_list fills a list in place
        broadcast_object_list(box)
        shared = box[0]
    state.wait_for_everyone()
    if shared.error is not None:
        raise EvalkitError(shared.error)
    if run_dir is None:  # only the main process holds the lock; the others write their shards
        assert shared.path is not None and shared.resumed is not None
        run_dir = RunDir(Path(shared.path), resumed=shared.resumed)
    run_dir.shard = state.process_index if state.num_processes > 1 else None
    return run_dir, run_dir.completed(repair=state.is_main_process)


def drop_stale(run_dir: RunDir, prepared: list[Prepared], done: dict[str, QuestionResult]) -> None:
    """Results whose prompt (prompt_hash) or gold answer no longer match the data, or whose question is
    gone from it, are removed to be scored again, and the run says how many."""
    current = {
        p.question.id: (p.question.answer, token_ids_hash(ids))
        for _, prompts, token_ids in prepared
        for p, ids in zip(prompts, token_ids, strict=True)
    }
    changed, gone = [], []
    for qid, result in done.items():
        if qid not in current:
            gone.append(qid)
        elif result.gold != current[qid][0] or result.prompt_hash not in (None, current[qid][1]):
            changed.append(qid)  # a record from before prompt_hash existed is checked on its answer only
    if changed:
        log.warning(
            "%s: %d questions scored before are scored again: their prompt or gold answer no longer "
            "matches the data (e.g. %s); the data files changed since",
            run_dir.path,
            len(changed),
            changed[0],
        )
    if gone:
        log.warning(
            "%s: %d results dropped: their questions are no longer in the data (e.g. %s)",
            run_dir.path,
            len(gone),
            gone[0],
        )
    if changed or gone:
        run_dir.drop(changed + gone)
    run_dir.rescored = len(changed)


def assign_subjects(costs: dict[str, int], processes: int) -> list[list[str]]:
    """Subjects per process, balanced by tokens still to score (greedy: largest first, to the lightest)."""
    shares: list[list[str]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for subject in sorted(costs, key=lambda name: (-costs[name], name)):
        lightest = min(range(processes), key=lambda rank: (loads[rank], rank))
        shares[lightest].append(subject)
        loads[lightest] += costs[subject]
    return shares


def my_share(
    state: PartialState, data: list[SubjectData], prepared: list[Prepared], done: dict[str, QuestionResult]
) -> tuple[list[SubjectData], list[Prepared], TokenPlan]:
    """This process's share of the subjects (shared out by token counts still to score), and the whole
    task's plan (every subject is tokenized before scoring starts, so the plan is exact)."""
    plan = token_plan(
        [
            (ids, [i for i, p in enumerate(prompts) if p.question.id not in done])
            for _, prompts, ids in prepared
        ]
    )
    if state.num_processes == 1:
        return data, prepared, plan
    costs = {
        d.subject.name: sum(len(t) for p, t in zip(prompts, ids, strict=True) if p.question.id not in done)
        for d, prompts, ids in prepared
    }
    mine = set(assign_subjects(costs, state.num_processes)[state.process_index])
    mine_prepared = [item for item in prepared if item.data.subject.name in mine]
    return [d for d in data if d.subject.name in mine], mine_prepared, plan
