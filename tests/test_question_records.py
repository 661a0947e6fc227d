"""Every field of a questions.jsonl record, and of run.json, checked on read: the field, the value, what was
expected."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from builders import answers, question, run_result

from evalkit.store.question_check import BadRecord, check_record
from evalkit.store.run_dir import RunDir
from evalkit.store.saved_runs import load_run
from evalkit.types import EvalkitError, RunConfig


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


# ---- run.json: every field against the type its record declares ----


@pytest.fixture
def finished_dir(tmp_path) -> Path:
    cfg = RunConfig(model="org/M", task="ceval", output_dir=str(tmp_path / "results"))
    qs = answers("ceval", "accountant", right=3, total=5, split="val")
    run = RunDir.open(cfg, "M")
    run.append(qs)
    run.finish(run_result(cfg, qs))
    run.release()
    return run.path


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("overall", "accuracy"), "yes", "overall.accuracy is 'yes', expected float"),
        (("overall", "n_subjects"), None, "overall.n_subjects is None, expected int"),
        (("subjects", "accountant", "n"), 2.5, "subjects.accountant.n is 2.5, expected int"),
        (("config", "model"), None, "config.model is None, expected str"),
        (("config", "shots"), [1], "config.shots is [1], expected int"),
        (
            ("config", "engine"),
            "fast",
            "config.engine is 'fast', expected Literal['auto', 'prefix', 'plain']",
        ),
        (("timings", "scoring_seconds"), "oops", "timings.scoring_seconds is 'oops'"),
        (("letter_ids",), [1, 2, 3], "letter_ids is (1, 2, 3)"),
        (("bos",), "yes", "bos is 'yes', expected bool"),
    ],
)
def test_a_wrong_typed_run_json_field_is_named(finished_dir, path, value, message):
    body = json.loads((finished_dir / "run.json").read_text(encoding="utf-8"))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (finished_dir / "run.json").write_text(json.dumps(body), encoding="utf-8")
    with pytest.raises(EvalkitError) as caught:
        load_run(finished_dir)
    assert str(caught.value).startswith(f"{finished_dir / 'run.json'}: {message}")


def test_an_untouched_run_json_passes(finished_dir):
    assert len(load_run(finished_dir).questions) == 5
