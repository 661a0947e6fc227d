"""Build few-shot prompts from a Scheme (data only: templates, joiners, shot order, length policy).

Byte parity with the upstream scripts is the point; the templates and their sources live in tasks/.
Token counts come from the caller (`count_tokens`: the model tokenizer's length of a text, with the
scheme's BOS policy), so this module needs no tokenizer and no torch.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from evalkit.questions.permute import base_id
from evalkit.types import EvalkitError, Prompt, Question, Scheme, Subject, SubjectData


def build_prompts(
    scheme: Scheme, data: SubjectData, count_tokens: Callable[[str], int], n_shots: int = 5, seed: int = 1234
) -> list[Prompt]:
    """One prompt per question of `data`, in order, fitted to `scheme.max_tokens` by its length policy.

    `left_truncate` prompts are returned whole: the runner cuts their tokens from the left.
    """
    if not 0 <= n_shots <= len(data.shots):
        raise EvalkitError(
            f"{n_shots} shots requested for subject {data.subject.name!r}, which has "
            f"{len(data.shots)} shot rows"
        )
    count = functools.lru_cache(maxsize=None)(count_tokens)  # headers and shots repeat across questions
    header = render_header(scheme, data.subject)
    prompts = []
    for question in data.questions:
        shots = [
            render_example(scheme, q) + scheme.shot_answer.format(letter=q.answer)
            for q in _shot_rows(scheme, data.shots, question, seed)[:n_shots]
        ]
        query = render_example(scheme, question)
        prompts.append(_fit(scheme, question, header, shots, query, count))
    return prompts


def render_header(scheme: Scheme, subject: Subject) -> str:
    """The scheme's header for a subject ("about  abstract algebra." for hendrycks: a space per word)."""
    return scheme.header.format(
        subject_spaced="".join(" " + w for w in subject.name.split("_")),
        subject_en=subject.name_en,
        subject_zh=scheme.subject_names.get(subject.name, subject.name_zh),
    )


def render_example(scheme: Scheme, question: Question) -> str:
    """A question with its choices, ending with the answer cue (the gold letter is not included)."""
    text = question.text.strip() if scheme.strip_text else question.text
    a, b, c, d = question.choices
    return scheme.example.format(question=text, A=a, B=b, C=c, D=d)


def letter_continuation(scheme: Scheme, letter: str) -> str:
    """The text that follows the answer cue for `letter` in a shot: " A" after "Answer:", "A" after
    "答案："; what the `in_context` letter rule tokenizes after the prompt."""
    return scheme.shot_answer.partition("{letter}")[0] + letter


def _assemble(scheme: Scheme, header: str, shots: list[str], query: str) -> str:
    """header [+ header_joiner + shots joined] + query_joiner + query (see Scheme)."""
    body = scheme.header_joiner + scheme.shot_joiner.join(shots) if shots else ""
    return header + body + scheme.query_joiner + query


def _shot_rows(scheme: Scheme, shots: tuple[Question, ...], question: Question, seed: int) -> list[Question]:
    """Shot rows in file order, or shuffled with a per-question seed (Baichuan's C-Eval shuffles the
    whole dev split for every question, unseeded; ours is reproducible from `seed` and the id)."""
    if scheme.shot_order == "file":
        return list(shots)
    rows = list(shots)
    random.Random(f"{seed}/{base_id(question.id)}").shuffle(rows)  # a question's rotations share its shots
    return rows


def _fit(
    scheme: Scheme, question: Question, header: str, shots: list[str], query: str, count: Callable[[str], int]
) -> Prompt:
    if scheme.length_policy == "drop_last":
        # hendrycks: while len(tokenizer(prompt)) > 2048: k -= 1 (stops at 0 shots; upstream would
        # wrap to k = -1 = all shots and loop forever)
        k = len(shots)
        while k > 0 and count(_assemble(scheme, header, shots[:k], query)) > scheme.max_tokens:
            k -= 1
        shots = shots[:k]
    elif scheme.length_policy == "drop_longest":
        # CMMLU gen_prompt: header and query encoded separately (each with its BOS, if any)
        base = count(header) + count(query)
        if base > scheme.max_tokens:
            return Prompt(question, query, 0)  # upstream drops the header too
        lengths = [count(shot) for shot in shots]
        keep = list(range(len(shots)))
        while keep and sum(lengths[i] for i in keep) >= scheme.max_tokens - base:
            longest = max(lengths[i] for i in keep)
            keep = [i for i in keep if lengths[i] != longest]
        shots = [shots[i] for i in keep]
    return Prompt(question, _assemble(scheme, header, shots, query), len(shots))
