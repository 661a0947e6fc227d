"""vLLM's /v1/completions as evalkit uses it: the request for four letter log-probs, and the answer's read.

The request (vLLM >= 0.32): the prompt as token ids, one new token, greedy, `logprobs` 1 with
`logprob_token_ids` = the four letter ids (the full-vocabulary log-probs of exactly those ids, whatever
the top-k), entries keyed `token_id:N` (`return_tokens_as_token_ids`: no decoded strings), no special
tokens added. The read refuses, naming the server and the question: a missing letter (a server that
ignores `logprob_token_ids` answers with at most the top entries), a non-finite value, a prompt the
server counted or echoed differently from ours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from evalkit.types import EvalkitError

# vLLM writes a log-prob of -inf as -9999.0 (OpenAI's JSON-safe floor): a letter there is not finite
LOGPROB_FLOOR = -9999.0
VocabLogprobs = tuple[float, float, float, float]  # full-vocabulary log-probs of the letters A, B, C, D


class MissingLetters(EvalkitError):
    """The answer lacks a requested letter id: the server ignores `logprob_token_ids` (vLLM < 0.32)."""


def completion_body(model: str, prompt: Sequence[int], letter_ids: Sequence[int], *, echo: bool) -> dict:
    """The /v1/completions request of the four letters' log-probs after `prompt`."""
    body = {
        "model": model,
        "prompt": list(prompt),
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": 1,
        "logprob_token_ids": list(letter_ids),
        "return_tokens_as_token_ids": True,
        "add_special_tokens": False,
    }
    if echo:
        body["return_token_ids"] = True  # the server echoes the prompt ids it scored
    return body


def read_letters(
    answer: Any, prompt: Sequence[int], letter_ids: Sequence[int], *, where: str, what: str, echo: bool
) -> VocabLogprobs:
    """The four letters' log-probs out of a /v1/completions answer, or an EvalkitError saying what is off:
    a letter missing (a server that ignores logprob_token_ids answers with at most the top entries),
    a non-finite value, a prompt the server saw differently from ours."""
    try:
        choice = answer["choices"][0]
        step = choice["logprobs"]["top_logprobs"][0]  # {"token_id:N": log-prob} of the one new token
        usage = answer.get("usage") or {}
    except (KeyError, IndexError, TypeError) as exc:
        raise EvalkitError(
            f"{where}: malformed answer to {what} (no choices[0].logprobs.top_logprobs)"
        ) from exc
    if not isinstance(step, dict):
        raise EvalkitError(f"{where}: malformed answer to {what} (top_logprobs[0] is {type(step).__name__})")
    seen = usage.get("prompt_tokens")
    if seen is not None and seen != len(prompt):
        raise EvalkitError(
            f"{where} scored {seen} prompt tokens for {what}, evalkit sent {len(prompt)}: the server adds or "
            f"drops tokens"
        )
    if echo:
        echoed = choice.get("prompt_token_ids")
        if echoed is not None and list(echoed) != list(prompt):
            first = next(
                (i for i, (a, b) in enumerate(zip(echoed, prompt)) if a != b), min(len(echoed), len(prompt))
            )
            raise EvalkitError(
                f"{where} echoed other prompt token ids than evalkit sent for {what} (first difference at "
                f"position {first})"
            )
    values = []
    for token in letter_ids:
        value = step.get(f"token_id:{token}")
        if value is None:
            raise MissingLetters(
                f"{where} gave no log-prob for letter id {token} in {what} (it returned "
                f"{len(step)} entries: {sorted(step)[:5]}): it does not honour logprob_token_ids"
            )
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= LOGPROB_FLOOR:
            raise EvalkitError(f"{where} gave letter id {token} a non-finite log-prob ({value}) in {what}")
        values.append(float(value))
    return (values[0], values[1], values[2], values[3])
