"""Build few-shot prompts from a Scheme (data only: templates, joiners, shot order, length policy).

Byte parity with the upstream scripts is the point; the templates and their sources live in tasks/.
Token counts come from the caller (`count_tokens`: the model tokenizer's length of a text, with the
scheme's BOS policy), so this module needs no tokenizer and no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable

from evalkit.questions.permute import base_id
from evalkit.types import EvalkitError, Prompt, Question, Scheme, Subject, SubjectData


def build_prompts(
    scheme: Scheme, data: SubjectData, count_tokens: Callable[[str], int], n_shots: int = 5, seed: int = 1234
) -> list[Prompt]:
    """One prompt per question of `data`, in order, fitted to `scheme.max_tokens` by its length policy.

    `left_truncate` prompts are returned whole: the runner cuts their tokens from the left. `n_shots` is
    capped by the scheme's per-subject count (AGIEval official: 1, 3 or 5).
    """
    scheme = for_subject(scheme, data.subject)
    n_shots = scheme.shots_for(data.subject.name, n_shots)
    if not 0 <= n_shots <= len(data.shots):
        raise EvalkitError(
            f"{n_shots} shots requested for subject {data.subject.name!r}, which has "
            f"{len(data.shots)} shot rows"
        )
    count = functools.lru_cache(maxsize=None)(count_tokens)  # headers and shots repeat across questions
    header = render_header(scheme, data.subject)
    prompts = []
    for question in data.questions:
        rows = _shot_rows(scheme, data.shots, question, seed)[:n_shots]
        shots = [render_shot(scheme, q, k) for k, q in enumerate(rows, start=1)]
        prompts.append(_fit(scheme, question, header, shots, count))
    return prompts


def for_subject(scheme: Scheme, subject: Subject) -> Scheme:
    """The scheme with the subject's language templates applied (AGIEval's en / zh in one task)."""
    overrides = scheme.languages.get(subject.language)
    return dataclasses.replace(scheme, **overrides) if overrides else scheme


def render_header(scheme: Scheme, subject: Subject) -> str:
    """The scheme's header for a subject ("about  abstract algebra." for hendrycks: a space per word)."""
    if subject.name in scheme.header_by_subject:  # GAOKAO-Bench's per-file prefix, verbatim
        return scheme.header_by_subject[subject.name]
    return scheme.header.format(
        subject_spaced="".join(" " + w for w in subject.name.split("_")),
        subject_en=subject.name_en,
        subject_zh=scheme.subject_names.get(subject.name, subject.name_zh),
    )


def render_example(scheme: Scheme, question: Question, number: int = 1) -> str:
    """A question with its choices, ending with the answer cue (the gold letter is not included).

    `number` is the example's place in the prompt (AGIEval's "Problem k."); `{options}` joins the option
    list as given, `{A}`..`{D}` are the four choices, `{passage}` the rendered passage or "".
    """
    text = question.text.strip() if scheme.strip_text else question.text
    a, b, c, d = question.choices
    options = question.options if question.options is not None else question.choices
    passage = scheme.passage_template.format(passage=question.passage) if question.passage else ""
    return scheme.example.format(
        question=text,
        A=a,
        B=b,
        C=c,
        D=d,
        options=scheme.options_joiner.join(options),
        passage=passage,
        number=number,
    )


def render_shot(scheme: Scheme, question: Question, number: int) -> str:
    """A shot: the example and its gold, as a letter or (`{label}`) printed as upstream prints it."""
    label = question.label if question.label is not None else question.answer
    return render_example(scheme, question, number) + scheme.shot_answer.format(
        letter=question.answer, label=label
    )


def letter_continuation(scheme: Scheme, letter: str) -> str:
    """The text that follows the answer cue for `letter` in a shot: " A" after "Answer:", "A" after
    "答案："; what the `in_context` letter rule tokenizes after the prompt."""
    marker = "{letter}" if "{letter}" in scheme.shot_answer else "{label}"
    return scheme.shot_answer.partition(marker)[0] + letter


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
    scheme: Scheme, question: Question, header: str, shots: list[str], count: Callable[[str], int]
) -> Prompt:
    def query(k: int) -> str:  # the query's number follows the shots kept
        return render_example(scheme, question, k + 1)

    if scheme.length_policy == "drop_last":
        # hendrycks: while len(tokenizer(prompt)) > 2048: k -= 1 (stops at 0 shots; upstream would
        # wrap to k = -1 = all shots and loop forever)
        k = len(shots)
        while k > 0 and count(_assemble(scheme, header, shots[:k], query(k))) > scheme.max_tokens:
            k -= 1
        shots = shots[:k]
    elif scheme.length_policy == "drop_longest":
        # CMMLU gen_prompt: header and query encoded separately (each with its BOS, if any)
        base = count(header) + count(query(len(shots)))
        if base > scheme.max_tokens:
            return Prompt(question, query(0), 0)  # upstream drops the header too
        lengths = [count(shot) for shot in shots]
        keep = list(range(len(shots)))
        while keep and sum(lengths[i] for i in keep) >= scheme.max_tokens - base:
            longest = max(lengths[i] for i in keep)
            keep = [i for i in keep if lengths[i] != longest]
        shots = [shots[i] for i in keep]
    return Prompt(question, _assemble(scheme, header, shots, query(len(shots))), len(shots))
