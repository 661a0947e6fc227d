"""Run one task on a loaded model: prompts -> token ids -> scores -> questions.jsonl -> run.json.

Every scored question is appended to the run directory as soon as its batch is done, so an
interrupted run loses at most one batch and a rerun of the same config resumes where it stopped,
reusing only what the data still backs (evalkit.run.sharing). The run directory is made and locked (one
process at a time) only once scoring can start: the prompts are prepared first (evalkit.questions.prepare).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable

from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from evalkit.backends import plugin
from evalkit.backends.base import LetterScores, NonFiniteLogits, ScoringBackend, backend_record
from evalkit.machine import environment
from evalkit.models.loading import LoadedModel
from evalkit.questions.permute import permute_subjects
from evalkit.questions.prepare import Prepared, prepare_subjects, report_long_prompts
from evalkit.questions.tokens import LetterTokens, encode_prompts, letter_tokens
from evalkit.run.plan import ScoringEstimate, describe_plan, describe_resume
from evalkit.run.sharing import my_share, open_shared_run_dir
from evalkit.stats.metrics import aggregate
from evalkit.store.interrupt import reraise_while_scoring
from evalkit.store.records import LongPrompts, RunResult, SavedRun, Timings
from evalkit.store.run_dir import RunDir, write_submission
from evalkit.store.saved_runs import SUBMISSION_FILE, load_run
from evalkit.types import (
    LETTERS,
    EvalkitError,
    Prompt,
    QuestionResult,
    RunConfig,
    Scheme,
    SubjectData,
    Task,
    token_ids_hash,
    unknown,
)


def resolve_scheme(task: Task, config: RunConfig) -> Scheme:
    """The task's scheme named in the config, with the letter-token rule overridden if asked."""
    if config.scheme not in task.schemes:
        raise unknown(f"{task.name} scheme", config.scheme, task.schemes)
    scheme = task.schemes[config.scheme]
    if config.letter_rule and config.letter_rule != scheme.letter_rule:
        scheme = dataclasses.replace(scheme, letter_rule=config.letter_rule)
    if config.max_length is not None:  # --max-length: the length policy's limit (4096 on request)
        scheme = dataclasses.replace(scheme, max_tokens=config.max_length)
    return scheme


def _question_result(prepared: Prepared, index: int, scores: LetterScores) -> QuestionResult:
    """The record of question `index` of a prepared subject, from its backend's scores."""
    prompt, token_ids, subject = (
        prepared.prompts[index],
        prepared.token_ids[index],
        prepared.data.subject.name,
    )
    logprobs = scores.logprobs
    if not all(math.isfinite(x) for x in logprobs):
        raise EvalkitError(
            f"non-finite letter log-probs {logprobs} for question {prompt.question.id} "
            f"(subject {subject}): the model produced NaN/inf logits; try --precision fp32"
        )
    best = max(range(4), key=lambda i: (logprobs[i], -i))  # ties go to the lowest index
    gold = prompt.question.answer
    return QuestionResult(
        id=prompt.question.id,
        subject=subject,
        gold=gold,
        pred=LETTERS[best],
        logprobs=tuple(float(x) for x in logprobs),
        correct=None if gold is None else LETTERS[best] == gold,
        shots_used=prompt.shots_used,
        prompt_tokens=len(token_ids),
        prompt_hash=token_ids_hash(token_ids),
        letter_mass=None if scores.log_mass is None else math.exp(scores.log_mass),
    )


def _score_subjects(
    own: list[SubjectData],
    subjects: Iterable[Prepared],
    config: RunConfig,
    run_dir: RunDir,
    done: dict[str, QuestionResult],
    scorer: ScoringBackend,
    title: str,
    estimate: ScoringEstimate | None = None,
) -> set[str]:
    """Score what is not done yet in one call to the backend (which may work on several subjects at once),
    appending each batch to this process's questions file as it comes (this loop is the one writer);
    the engines used."""
    total = sum(len(d.questions) for d in own)
    initial = sum(q.id in done for d in own for q in d.questions)
    work = [
        (prepared, [i for i, p in enumerate(prepared.prompts) if p.question.id not in done])
        for prepared in subjects
    ]
    work = [(prepared, todo) for prepared, todo in work if todo]
    if not work:
        return set()
    with tqdm(total=total, initial=initial, desc=title, unit="q", disable=not config.progress) as bar:
        try:
            for batch in scorer.score_subjects([p.token_ids for p, _ in work], [todo for _, todo in work]):
                if estimate is not None:
                    estimate.batch_done([work[item.subject][0].token_ids[item.index] for item in batch])
                results = [_question_result(work[item.subject][0], item.index, item.scores) for item in batch]
                run_dir.append(results)
                bar.update(len(results))
        except NonFiniteLogits as err:
            prepared = work[err.subject][0]
            name = prepared.data.subject.name
            raise _non_finite_error(err, prepared.prompts, prepared.token_ids, name, config) from err
    return set(scorer.engines_used)


def _non_finite_error(
    err: NonFiniteLogits, prompts: list[Prompt], token_ids: list[list[int]], subject: str, config: RunConfig
) -> EvalkitError:
    """NaN/inf logits named by question id and subject, with what to try."""
    first = err.indices[0]
    more = f" and {len(err.indices) - 1} more of its batch" if len(err.indices) > 1 else ""
    hint = (
        "at fp32 that points at the checkpoint: its weights (or their quantization) hold NaN/inf"
        if config.precision == "fp32"
        else "try --precision fp32 (fp16 overflows in some models); if "
        "fp32 gives NaN too, the checkpoint's weights hold NaN/inf"
    )
    return EvalkitError(
        f"the model gives NaN/inf letter logits for question {prompts[first].question.id} "
        f"(subject {subject}, {len(token_ids[first])} prompt tokens){more} at --precision "
        f"{config.precision}: {hint}. What was scored is kept: the rerun resumes"
    )


def run_task(
    loaded: LoadedModel, task: Task, data: list[SubjectData], config: RunConfig
) -> tuple[RunDir, SavedRun]:
    """Score every question of `data` (resuming a matching unfinished run), write run.json, return the run.

    Everything that can fail before scoring (letter tokens, prompt lengths) is checked before the run
    directory is made or locked. Under `accelerate launch` the subjects are shared out between the
    processes; the main process (which holds the directory's lock) gathers their files into one run
    directory, identical to a single-process run's.
    """
    state = PartialState()
    scheme = resolve_scheme(task, config)
    data = permute_subjects(task, data, config.permute)  # --permute cyclic: each question's 4 rotations
    letters: LetterTokens = letter_tokens(loaded.tokenizer, scheme.letter_rule, scheme)
    scorer = plugin(config.backend).scorer(loaded, letters.ids, config)
    started = time.perf_counter()
    prepared, long_prompts = prepare_subjects(loaded, scheme, data, config)
    report_long_prompts(task, scheme, long_prompts, state.is_main_process)
    data_files = {path: digest for d in data for path, digest in d.files} or None
    run_dir, done = open_shared_run_dir(state, config, loaded.source.label, data_files, prepared)
    try:
        own, mine, plan = my_share(state, data, prepared, done)
        rank = f" [{state.process_index}]" if state.num_processes > 1 else ""
        title = f"{task.title} {config.scheme}{rank}"
        estimate = None
        if state.is_main_process:  # the plan, before the first forward (stderr, beside the progress bars)
            name = f"{task.title} {config.scheme} {config.precision}"
            if run_dir.resumed:
                print(describe_resume(run_dir.path, plan), file=sys.stderr)
            print(describe_plan(name, plan, _reuse_note(config, scorer)), file=sys.stderr)
            estimate = ScoringEstimate(name, plan, state.num_processes)
        engines = _score_subjects(own, mine, config, run_dir, done, scorer, title, estimate)
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
            result_of = _Finished(loaded, task, config, scheme, letters, state, long_prompts)
            saved = result_of.write(
                run_dir, data, done, scoring_seconds, engines, modes, fallbacks, backend_record(scorer)
            )
        state.wait_for_everyone()
    except KeyboardInterrupt as err:  # Ctrl-C: one line saying what is saved (every batch already is)
        reraise_while_scoring(err, run_dir.path, sum(len(d.questions) for d in data))
    finally:
        run_dir.release()
    if not state.is_main_process:  # the main process wrote it; the others read it once it is there
        saved = load_run(run_dir.path)
    return run_dir, saved


@dataclasses.dataclass(frozen=True)
class _Finished:
    """What run.json records besides the scores: the run's setting."""

    loaded: LoadedModel
    task: Task
    config: RunConfig
    scheme: Scheme
    letters: LetterTokens
    state: PartialState
    long_prompts: LongPrompts | None

    def write(
        self,
        run_dir: RunDir,
        data: list[SubjectData],
        done: dict,
        scoring_seconds: float,
        engines: set[str],
        modes: set[str],
        fallbacks: list,
        backend: dict,
    ) -> SavedRun:
        """Merge the shards, check every question was scored, write run.json (main process only)."""
        order = [q.id for d in data for q in d.questions]
        run_dir.merge_shards(order)
        final = run_dir.completed()
        missing = [qid for qid in order if qid not in final]
        if missing:
            raise EvalkitError(f"{run_dir.path}: {len(missing)} questions were not scored, e.g. {missing[0]}")
        results = [final[qid] for qid in order]
        summary = aggregate(self.task, self.scheme.aggregation, results, self.scheme.also)
        if summary.overall is None:
            write_submission(run_dir.path / SUBMISSION_FILE, results)
        scored = len(results) - len(done)
        result = RunResult(
            config=self.config,
            config_hash=self.config.config_hash(),
            scheme=self.scheme,
            letter_ids=self.letters.ids,
            letter_strings=self.letters.strings,
            bos=_adds_bos(self.loaded, self.scheme),
            environment=environment(self.loaded.info.device or "cpu", self.state.num_processes),
            subjects=summary.subjects,
            groups=summary.groups,
            overall=summary.overall,
            timings=Timings(
                scoring_seconds=round(scoring_seconds, 2),
                questions=len(results),
                resumed_questions=len(done),
                rescored_questions=run_dir.rescored,
                questions_per_second=(round(scored / scoring_seconds, 3) if scoring_seconds > 0 else None),
                load_seconds=self.loaded.info.load_seconds,
            ),
            engine="+".join(sorted(engines)) or "none (all resumed)",
            model_info=self.loaded.info,
            limited=self.config.limit is not None,
            reuse_mode="+".join(sorted(modes)) or "none (all resumed)",
            fallbacks=tuple(fallbacks),
            long_prompts=self.long_prompts,
            backend=backend,
        )
        run_dir.finish(result)
        return SavedRun(result, results)


def _reuse_note(config: RunConfig, scorer: ScoringBackend) -> str:
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
