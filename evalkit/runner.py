"""Run one task on a loaded model: prompts -> token ids -> scores -> questions.jsonl -> run.json.

Every scored question is appended to the run directory as soon as its batch is done, so an
interrupted run loses at most one batch and a rerun of the same config resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import math
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Iterable, Iterator

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm

from evalkit.data import SubjectData
from evalkit.metrics import aggregate
from evalkit.model import LoadedModel
from evalkit.plan import FirstBatchEstimate, TokenPlan, describe_plan, describe_resume, token_plan
from evalkit.prompts import Prompt, build_prompts
from evalkit.results import SUBMISSION_FILE, RunDir, SavedRun, load_run, write_submission
from evalkit.scoring import Scorer
from evalkit.tokens import LetterTokens, count_tokens_fn, encode_prompts, letter_tokens
from evalkit.types import LETTERS, EvalkitError, QuestionResult, RunConfig, RunResult, Scheme, Task, token_ids_hash

PACKAGES = ("evalkit", "torch", "transformers", "tokenizers", "accelerate", "datasets", "bitsandbytes")


def resolve_scheme(task: Task, config: RunConfig) -> Scheme:
    """The task's scheme named in the config, with the letter-token rule overridden if asked."""
    if config.scheme not in task.schemes:
        raise EvalkitError(f"{task.name} has no scheme {config.scheme!r}; valid: {', '.join(task.schemes)}")
    scheme = task.schemes[config.scheme]
    if config.letter_rule and config.letter_rule != scheme.letter_rule:
        scheme = dataclasses.replace(scheme, letter_rule=config.letter_rule)
    return scheme


def environment(loaded: LoadedModel, state: PartialState) -> dict:
    """What a reader needs to reproduce the run: versions, device, threads, evalkit's commit."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = loaded.info["device"]
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "processes": state.num_processes,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _question_result(prompt: Prompt, logprobs: tuple[float, ...], token_ids: list[int], subject: str) -> QuestionResult:
    if not all(math.isfinite(x) for x in logprobs):
        raise EvalkitError(f"non-finite letter log-probs {logprobs} for question {prompt.question.id} "
                           f"(subject {subject}): the model produced NaN/inf logits; try --precision fp32")
    best = max(range(4), key=lambda i: (logprobs[i], -i))  # ties go to the lowest index
    gold = prompt.question.answer
    return QuestionResult(id=prompt.question.id, subject=subject, gold=gold, pred=LETTERS[best],
                          logprobs=tuple(float(x) for x in logprobs),
                          correct=None if gold is None else LETTERS[best] == gold,
                          shots_used=prompt.shots_used, prompt_tokens=len(token_ids),
                          prompt_hash=token_ids_hash(token_ids))


def _subject_token_ids(loaded: LoadedModel, scheme: Scheme, data: SubjectData,
                       config: RunConfig) -> tuple[list[Prompt], list[list[int]]]:
    count = count_tokens_fn(loaded.tokenizer, scheme.bos)
    prompts = build_prompts(scheme, data, count, n_shots=config.shots, seed=config.seed)
    token_ids = encode_prompts(loaded.tokenizer, [p.text for p in prompts], scheme.bos)
    if scheme.length_policy == "left_truncate":  # lm-eval keeps the last max_length tokens of the context
        limit = lm_eval_max_length(loaded)
        token_ids = [ids[-limit:] for ids in token_ids]
    return prompts, token_ids


def lm_eval_max_length(loaded: LoadedModel) -> int:
    """lm-evaluation-harness's context limit: the model config's length, else the tokenizer's, else 2048."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(loaded.model.config, attr, None), int):
            return getattr(loaded.model.config, attr)
    tokenizer_limit = getattr(loaded.tokenizer, "model_max_length", None)
    return tokenizer_limit if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**12 else 2048


def assign_subjects(costs: dict[str, int], processes: int) -> list[list[str]]:
    """Subjects per process, balanced by tokens still to score (greedy: largest first, to the lightest)."""
    shares: list[list[str]] = [[] for _ in range(processes)]
    loads = [0] * processes
    for subject in sorted(costs, key=lambda name: (-costs[name], name)):
        lightest = min(range(processes), key=lambda rank: (loads[rank], rank))
        shares[lightest].append(subject)
        loads[lightest] += costs[subject]
    return shares


def _open_shared_run_dir(state: PartialState, config: RunConfig, label: str) -> RunDir:
    """The main process opens (or resumes) the run and merges shards a killed run left; all share its path."""
    shared = [None, None]
    if state.is_main_process:
        run_dir = RunDir.open(config, label)
        run_dir.merge_shards()
        shared = [str(run_dir.path), run_dir.resumed]
    if state.num_processes > 1:
        broadcast_object_list(shared)
    state.wait_for_everyone()
    shard = state.process_index if state.num_processes > 1 else None
    return RunDir(Path(shared[0]), resumed=shared[1], shard=shard)


Prepared = tuple[SubjectData, list[Prompt], list[list[int]]]  # a subject with its prompts and their token ids


def _prepare(loaded: LoadedModel, scheme: Scheme, data: list[SubjectData], config: RunConfig) -> Iterator[Prepared]:
    """Each subject's prompts and token ids, built when the subject's turn comes."""
    for subject_data in data:
        yield (subject_data, *_subject_token_ids(loaded, scheme, subject_data, config))


def _my_subjects(state: PartialState, loaded: LoadedModel, scheme: Scheme, data: list[SubjectData],
                 config: RunConfig, done: dict) -> tuple[list[SubjectData], Iterable[Prepared], TokenPlan]:
    """This process's share of the subjects, their prompts tokenized once (shared out by token counts), and
    the whole task's plan (every subject is tokenized before scoring starts, so the plan is exact)."""
    prepared = list(_prepare(loaded, scheme, data, config))
    plan = token_plan([(ids, [i for i, p in enumerate(prompts) if p.question.id not in done])
                       for _, prompts, ids in prepared])
    if state.num_processes == 1:
        return data, prepared, plan
    costs = {d.subject.name: sum(len(t) for p, t in zip(prompts, ids) if p.question.id not in done)
             for d, prompts, ids in prepared}
    mine = set(assign_subjects(costs, state.num_processes)[state.process_index])
    mine_prepared = [item for item in prepared if item[0].subject.name in mine]
    return [d for d in data if d.subject.name in mine], mine_prepared, plan


def _score_subjects(own: list[SubjectData], subjects: Iterable[Prepared], config: RunConfig, run_dir: RunDir,
                    done: dict[str, QuestionResult], scorer: Scorer, title: str,
                    estimate: FirstBatchEstimate | None = None) -> set[str]:
    """Score what is not done yet, appending each batch to this process's questions file; engines used."""
    engines = set()
    total = sum(len(d.questions) for d in own)
    initial = sum(q.id in done for d in own for q in d.questions)
    with tqdm(total=total, initial=initial, desc=title, unit="q", disable=not config.progress) as bar:
        for subject_data, prompts, token_ids in subjects:
            todo = [i for i, p in enumerate(prompts) if p.question.id not in done]
            if not todo:
                continue
            for batch in scorer.score_batches(token_ids, only=todo):
                if estimate is not None:
                    estimate.batch_done([token_ids[i] for i, _ in batch])
                results = [_question_result(prompts[i], logprobs, token_ids[i], subject_data.subject.name)
                           for i, logprobs in batch]
                run_dir.append(results)
                bar.update(len(results))
            engines.add(scorer.engine_used)
    return engines


def run_task(loaded: LoadedModel, task: Task, data: list[SubjectData], config: RunConfig) -> tuple[RunDir, SavedRun]:
    """Score every question of `data` (resuming a matching unfinished run), write run.json, return the run.

    Under `accelerate launch` the subjects are shared out between the processes; the main process
    gathers their files into one run directory, identical to a single-process run's.
    """
    state = PartialState()
    scheme = resolve_scheme(task, config)
    letters: LetterTokens = letter_tokens(loaded.tokenizer, scheme.letter_rule, scheme)
    run_dir = _open_shared_run_dir(state, config, loaded.source.label)
    done = run_dir.completed()
    scorer = Scorer(loaded.model, letters.ids, batch_tokens=config.batch_tokens, engine=config.engine, progress=False,
                    isolated=loaded.info.get("activation_quantization") is not None)
    started = time.perf_counter()
    own, prepared, plan = _my_subjects(state, loaded, scheme, data, config, done)
    title = f"{task.title} {config.scheme}" + (f" [{state.process_index}]" if state.num_processes > 1 else "")
    estimate = None
    if state.is_main_process:  # the plan, before the first forward (stderr, beside the progress bars)
        name = f"{task.title} {config.scheme} {config.precision}"
        if run_dir.resumed:
            print(describe_resume(run_dir.path, plan), file=sys.stderr)
        print(describe_plan(name, plan, _reuse_note(config, scorer)), file=sys.stderr)
        estimate = FirstBatchEstimate(name, plan, state.num_processes)
    engines = _score_subjects(own, prepared, config, run_dir, done, scorer, title, estimate)
    scoring_seconds = time.perf_counter() - started
    modes = {scorer.mode or "plain"} if engines else set()  # no probe ran: nothing was worth reusing
    fallbacks = list(scorer.fallbacks)
    if state.num_processes > 1:  # the parallel phase lasts as long as its slowest process
        engines = set().union(*gather_object([engines]))
        scoring_seconds = max(gather_object([scoring_seconds]))
        modes = set().union(*gather_object([modes]))  # each process probes its own first group
        fallbacks = list(dict.fromkeys(f for part in gather_object([fallbacks]) for f in part))
    state.wait_for_everyone()
    if state.is_main_process:
        order = [q.id for d in data for q in d.questions]
        run_dir.merge_shards(order)
        final = run_dir.completed()
        missing = [qid for qid in order if qid not in final]
        if missing:
            raise EvalkitError(f"{run_dir.path}: {len(missing)} questions were not scored, e.g. {missing[0]}")
        results = [final[qid] for qid in order]
        summary = aggregate(task, scheme.aggregation, results)
        if summary.overall is None:
            write_submission(run_dir.path / SUBMISSION_FILE, results)
        result = RunResult(
            config=config, config_hash=config.config_hash(), scheme=scheme, letter_ids=letters.ids,
            letter_strings=letters.strings, bos=_adds_bos(loaded, scheme), environment=environment(loaded, state),
            subjects=summary.subjects, groups=summary.groups, overall=summary.overall,
            timings={"scoring_seconds": round(scoring_seconds, 2), "questions": len(results),
                     "resumed_questions": len(done), "questions_per_second":
                     round((len(results) - len(done)) / scoring_seconds, 3) if scoring_seconds > 0 else None,
                     "load_seconds": loaded.info["load_seconds"]},
            engine="+".join(sorted(engines)) or "none (all resumed)", model_info=loaded.info,
            limited=config.limit is not None, reuse_mode="+".join(sorted(modes)) or "none (all resumed)",
            fallbacks=tuple(fallbacks))
        run_dir.finish(result)
        saved = SavedRun(result, results)
    state.wait_for_everyone()
    if not state.is_main_process:  # the main process wrote it; the others read it once it is there
        saved = load_run(run_dir.path)
    return run_dir, saved


def _reuse_note(config: RunConfig, scorer: Scorer) -> str:
    """Why this run computes the tokens without reuse, where it will."""
    if scorer.isolated:
        return "; this model quantizes activations per forward: one prompt per forward, no reuse"
    if config.engine == "plain":
        return "; --engine plain: no reuse"
    return ""


def _adds_bos(loaded: LoadedModel, scheme: Scheme) -> bool:
    """Whether the scheme's encoding puts the tokenizer's BOS token first."""
    bos = loaded.tokenizer.bos_token_id
    return bos is not None and encode_prompts(loaded.tokenizer, ["A"], scheme.bos)[0][0] == bos
