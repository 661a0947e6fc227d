"""Before scoring: every subject's prompts and token ids, and the prompts longer than the model's context.

All of it runs before the run directory is made or locked, so a run that cannot score (a prompt too
long for a scheme without a length policy) fails without leaving a directory behind.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from evalkit.models.loading import LoadedModel
from evalkit.questions.prompts import build_prompts
from evalkit.questions.tokens import count_tokens_fn, encode_prompts
from evalkit.store.records import LongPrompts, LongSubject
from evalkit.types import EvalkitError, Prompt, RunConfig, Scheme, SubjectData, Task

log = logging.getLogger(__name__)


class Prepared(NamedTuple):
    """A subject with its prompts and their token ids, as scored."""

    data: SubjectData
    prompts: list[Prompt]
    token_ids: list[list[int]]


def lm_eval_max_length(loaded: LoadedModel) -> int:
    """lm-evaluation-harness's context limit: the model config's length, else the tokenizer's, else 2048."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if isinstance(getattr(loaded.model.config, attr, None), int):
            return getattr(loaded.model.config, attr)
    tokenizer_limit = getattr(loaded.tokenizer, "model_max_length", None)
    return tokenizer_limit if isinstance(tokenizer_limit, int) and tokenizer_limit < 10**12 else 2048


def _subject_token_ids(
    loaded: LoadedModel, scheme: Scheme, data: SubjectData, config: RunConfig
) -> tuple[list[Prompt], list[list[int]]]:
    count = count_tokens_fn(loaded.tokenizer, scheme.bos)
    prompts = build_prompts(scheme, data, count, n_shots=config.shots, seed=config.seed)
    return prompts, encode_prompts(loaded.tokenizer, [p.text for p in prompts], scheme.bos)


def prepare_subjects(
    loaded: LoadedModel, scheme: Scheme, data: list[SubjectData], config: RunConfig
) -> tuple[list[Prepared], LongPrompts | None]:
    """Every subject's prompts and token ids (as scored: lm-eval's are cut from the left to the model's
    length), and the record of prompts longer than the model's context (run.json `long_prompts`)."""
    context = lm_eval_max_length(loaded)
    prepared, long = [], {}
    for subject_data in data:
        prompts, token_ids = _subject_token_ids(loaded, scheme, subject_data, config)
        over = [
            (len(ids), p.question.id) for p, ids in zip(prompts, token_ids, strict=True) if len(ids) > context
        ]
        if over:
            long[subject_data.subject.name] = LongSubject(len(over), len(prompts), max(over)[0], over[0][1])
        if scheme.length_policy == "left_truncate":  # lm-eval keeps the last max_length tokens of the context
            token_ids = [ids[-context:] for ids in token_ids]
        prepared.append(Prepared(subject_data, prompts, token_ids))
    return prepared, (LongPrompts(context, scheme.length_policy, long) if long else None)


def report_long_prompts(task: Task, scheme: Scheme, long_prompts: LongPrompts | None, main: bool) -> None:
    """Prompts longer than the model's context: an error where the scheme has no length policy, else a
    warning per subject (what the policy did or could not do); never silent."""
    if long_prompts is None:
        return
    context, subjects = long_prompts.context, long_prompts.subjects
    if scheme.length_policy == "none":
        first = next(iter(subjects.values()))
        counts = ", ".join(f"{name} {info.prompts}" for name, info in subjects.items())
        raise EvalkitError(
            f"{task.title} {scheme.name}: prompts longer than the model's context of "
            f"{context} positions (subjects: {counts}; e.g. {first.first}, "
            f"{first.longest} tokens), and this scheme has no length policy: use --scheme "
            "lm-eval (cuts prompts from the left), fewer --shots, or leave those subjects out "
            "with --subjects"
        )
    if not main:
        return
    done = (
        "cut from the left to the context"
        if scheme.length_policy == "left_truncate"
        else f"still longer after the scheme's {scheme.length_policy} policy: scored as they are"
    )
    for name, info in subjects.items():
        log.warning(
            "%s %s/%s: %d of %d prompts are longer than the model's context of %d positions "
            "(longest %d tokens, e.g. %s): %s (recorded in run.json)",
            task.title,
            scheme.name,
            name,
            info.prompts,
            info.of,
            context,
            info.longest,
            info.first,
            done,
        )
