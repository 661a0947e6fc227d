"""Every field of a questions.jsonl record checked on read: the field, the value and what was expected."""

from __future__ import annotations

import dataclasses
import json

import pytest
from builders import question

from evalkit.store.question_check import BadRecord, check_record


def record(**changes) -> dict:
    row = json.loads(question(0, gold="C", pred="B").to_json())
    row["prompt_hash"] = "0123456789abcdef"
    row.update(changes)
    return row


def test_a_record_as_written_reads_back_equal():
    expected = dataclasses.replace(question(0, gold="C", pred="B"), prompt_hash="0123456789abcdef")
    assert check_record(record()) == expected


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"gold": None, "correct": None},  # an unlabeled split (C-Eval test)
        {"letter_mass": 0.25},  # written by calibrated runs
        {"letter_mass": 1},
        {"letter_mass": None},
        {"prompt_hash": None},
        {"shots_used": 0},
    ],
)
def test_valid_records(changes):
    check_record(record(**changes))


def test_a_record_from_before_prompt_hash_existed():
    row = record()
    del row["prompt_hash"]
    assert check_record(row).prompt_hash is None


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"correct": "yes"}, "correct is 'yes', expected false (pred B, gold C)"),
        ({"correct": True}, "correct is True, expected false"),
        ({"correct": 0}, "correct is 0, expected false"),
        ({"correct": None}, "correct is None, expected false"),
        ({"gold": None}, "correct is False, expected null"),
        ({"logprobs": "oops"}, "logprobs is 'oops', expected a list of 4 numbers"),
        ({"logprobs": [-1.0, -2.0, -3.0]}, "expected a list of 4 numbers"),
        ({"logprobs": [-1.0, -2.0, -3.0, "x"]}, "logprobs holds 'x'"),
        ({"logprobs": [-1.0, -2.0, -3.0, True]}, "logprobs holds True"),
        ({"logprobs": [-1.0, -2.0, -3.0, 0.5]}, "logprobs holds 0.5, expected finite log-probabilities"),
        ({"logprobs": [-1.0, -2.0, -3.0, float("nan")]}, "logprobs holds nan"),
        ({"logprobs": [-1.0, -2.0, -3.0, float("-inf")]}, "logprobs holds -inf"),
        ({"pred": 3}, "pred is 3, expected one of A, B, C, D"),
        ({"pred": "E"}, "pred is 'E'"),
        ({"pred": "a"}, "pred is 'a'"),
        ({"gold": "Z"}, "gold is 'Z', expected one of A, B, C, D or null"),
        ({"gold": ["C"]}, "gold is ['C']"),
        ({"shots_used": -1}, "shots_used is -1, expected a non-negative integer"),
        ({"shots_used": 5.0}, "shots_used is 5.0"),
        ({"shots_used": True}, "shots_used is True"),
        ({"prompt_tokens": "100"}, "prompt_tokens is '100'"),
        ({"id": 7}, "id is 7, expected a non-empty string"),
        ({"id": ""}, "id is ''"),
        ({"subject": None}, "subject is None"),
        ({"prompt_hash": 12}, "prompt_hash is 12, expected 16 hex digits or null"),
        ({"prompt_hash": "xyz"}, "prompt_hash is 'xyz'"),
        ({"letter_mass": 0}, "letter_mass is 0, expected a number in (0, 1] or null"),
        ({"letter_mass": 1.5}, "letter_mass is 1.5"),
        ({"letter_mass": "0.5"}, "letter_mass is '0.5'"),
        ({"extra": 1}, "unexpected field 'extra'"),
    ],
)
def test_each_wrong_field_is_named_with_its_value(changes, message):
    with pytest.raises(BadRecord) as caught:
        check_record(record(**changes))
    assert message in str(caught.value)


def test_missing_fields_and_non_objects():
    row = record()
    del row["pred"], row["shots_used"]
    with pytest.raises(BadRecord, match="missing pred, shots_used"):
        check_record(row)
    for value in ([], "text", 3, None):
        with pytest.raises(BadRecord, match="expected a JSON object"):
            check_record(value)
