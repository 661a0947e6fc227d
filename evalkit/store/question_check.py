"""Every field of a questions.jsonl record checked for its type and range before it is believed.

A line that is valid JSON but holds `"correct": "yes"` or `"logprobs": "oops"` would otherwise raise the
score on resume or crash `compare` far from its cause; here it is refused with the field, the value and
what was expected, so the reader can name the file and line (evalkit.store.questions_file).
"""

from __future__ import annotations

import dataclasses
import math
import re

from evalkit.types import LETTERS, QuestionResult

REQUIRED = ("id", "subject", "gold", "pred", "logprobs", "correct", "shots_used", "prompt_tokens")
# prompt_hash is absent in records from before it existed; letter_mass (the letters' share of the next-token
# probability) is written by calibrated runs
OPTIONAL = ("prompt_hash", "letter_mass")
PROMPT_HASH = re.compile(r"[0-9a-f]{16}")  # evalkit.types.token_ids_hash


class BadRecord(ValueError):
    """A questions.jsonl record whose fields do not hold a scored question (the message names the field)."""


def _number(value: object) -> bool:
    """A JSON number (bool is an int in Python, never a number in a record)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(row: dict, key: str) -> None:
    value = row[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRecord(f"{key} is {value!r}, expected a non-negative integer")


def _text(row: dict, key: str) -> None:
    value = row[key]
    if not isinstance(value, str) or not value:
        raise BadRecord(f"{key} is {value!r}, expected a non-empty string")


def _check_letters(row: dict) -> None:
    """pred and gold are letters, and `correct` says whether they agree (None without a gold answer)."""
    pred, gold, correct = row["pred"], row["gold"], row["correct"]
    if not isinstance(pred, str) or pred not in LETTERS:
        raise BadRecord(f"pred is {pred!r}, expected one of {', '.join(LETTERS)}")
    if gold is not None and (not isinstance(gold, str) or gold not in LETTERS):
        raise BadRecord(f"gold is {gold!r}, expected one of {', '.join(LETTERS)} or null")
    expected = None if gold is None else pred == gold
    if correct is not expected:  # `is`: 1 and "yes" are not True
        want = (
            "null (no gold answer)"
            if expected is None
            else f"{str(expected).lower()} (pred {pred}, gold {gold})"
        )
        raise BadRecord(f"correct is {correct!r}, expected {want}")


def _check_numbers(row: dict) -> None:
    """Four finite log-probabilities (<= 0); letter_mass, where present, a probability in (0, 1]."""
    logprobs = row["logprobs"]
    if not isinstance(logprobs, list) or len(logprobs) != len(LETTERS):
        raise BadRecord(f"logprobs is {logprobs!r}, expected a list of {len(LETTERS)} numbers")
    for value in logprobs:
        if not _number(value) or not math.isfinite(value) or value > 0:
            raise BadRecord(f"logprobs holds {value!r}, expected finite log-probabilities (<= 0)")
    mass = row.get("letter_mass")
    if mass is not None and not (_number(mass) and 0 < mass <= 1):
        raise BadRecord(f"letter_mass is {mass!r}, expected a number in (0, 1] or null")


def check_record(row: object) -> QuestionResult:
    """The QuestionResult a parsed JSON line holds, or BadRecord naming the first field that is wrong."""
    if not isinstance(row, dict):
        raise BadRecord(f"expected a JSON object, got {type(row).__name__}")
    missing = [key for key in REQUIRED if key not in row]
    if missing:
        raise BadRecord(f"missing {', '.join(missing)}")
    unexpected = sorted(set(row) - set(REQUIRED) - set(OPTIONAL))
    if unexpected:
        raise BadRecord(f"unexpected field {', '.join(map(repr, unexpected))}")
    _text(row, "id")
    _text(row, "subject")
    _check_letters(row)
    _check_numbers(row)
    _count(row, "shots_used")
    _count(row, "prompt_tokens")
    prompt_hash = row.get("prompt_hash")
    if prompt_hash is not None and not (isinstance(prompt_hash, str) and PROMPT_HASH.fullmatch(prompt_hash)):
        raise BadRecord(f"prompt_hash is {prompt_hash!r}, expected 16 hex digits or null")
    known = {f.name for f in dataclasses.fields(QuestionResult)}  # letter_mass: once QuestionResult has it
    return QuestionResult.from_dict({key: value for key, value in row.items() if key in known})
