"""--permute cyclic: a cyclic run equals, question by question, four ordinary runs on data files whose options
are rotated (shots unchanged); ids, refusal of tasks whose options are not separate fields, config hashes,
labels and pairing."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from builders import run_result
from datafiles import write_data_dir

from evalkit.questions.permute import base_id, permute_subjects, rotate, rotated_id, rotation_of
from evalkit.stats.pairing import check_comparable
from evalkit.store.records import SavedRun
from evalkit.store.saved_runs import run_label
from evalkit.types import EvalkitError, Question, RunConfig
from run_eval import main
from tasks import get_task

SUBJECTS = {"mmlu": {"anatomy": 4}, "ceval": {"accountant": 4}}
EVAL_SPLIT = {"mmlu": "test", "ceval": "val"}


def test_rotation_moves_the_gold_with_its_text():
    q = Question("mmlu/anatomy/test/3", "anatomy", "q?", ("w", "x", "y", "z"), "B")
    r1 = rotate(q, 1)
    assert r1.choices == ("x", "y", "z", "w") and r1.answer == "A" and r1.id == "mmlu/anatomy/test/3@rot1"
    assert r1.choices["ABCD".index(r1.answer)] == "x"  # the gold text stays gold
    assert rotate(q, 0) == q and rotate(q, 3).answer == "C"
    assert base_id(r1.id) == q.id and rotation_of(r1.id) == 1 and rotation_of(q.id) == 0
    assert rotated_id(q.id, 0) == q.id


def test_tasks_without_separate_options_are_refused_in_one_line():
    task = get_task("mmlu")
    embedded = dataclasses.replace(task, options_separate=False)
    with pytest.raises(EvalkitError, match="options are not separate fields") as err:
        permute_subjects(embedded, [], "cyclic")
    assert "\n" not in str(err.value)
    assert permute_subjects(embedded, [], "none") == []
    with pytest.raises(EvalkitError, match="unknown permutation"):
        permute_subjects(task, [], "random")


def test_config_hash_changes_only_when_permuted():
    plain = RunConfig(model="m", task="mmlu")
    assert plain.config_hash() == "4e50a9a2620b"  # tests/test_golden.py's frozen value
    cyclic = dataclasses.replace(plain, permute="cyclic")
    assert cyclic.config_hash() != plain.config_hash()
    result = run_result(cyclic, [])
    assert "permute=cyclic" in run_label(result, "test")
    assert "permute" not in run_label(run_result(plain, []), "test")


def test_compare_pairs_a_permuted_run_only_with_one_permuted_the_same_way():
    plain = SavedRun(run_result(RunConfig(model="m", task="mmlu"), []), [])
    cyclic = SavedRun(run_result(RunConfig(model="m", task="mmlu", permute="cyclic"), []), [])
    with pytest.raises(EvalkitError, match="permute"):
        check_comparable(get_task("mmlu"), plain, cyclic)


def _rotate_file(path: Path, task: str, k: int) -> None:
    """Rotate the options (and the gold letter with them) of every row of one eval-split file by k."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if task != "mmlu" else None
    first = 1 if header else 0
    a = header.index("A") if header else 1
    answer = header.index("answer") if header else 5
    for row in rows[first:]:
        options = row[a : a + 4]
        row[a : a + 4] = [options[(j + k) % 4] for j in range(4)]
        row[answer] = "ABCD"[("ABCD".index(row[answer]) - k) % 4]
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\r\n" if task == "ceval" else "\n").writerows(rows)


def _eval(model: Path, data: Path, out: Path, task: str, scheme: str, *extra: str) -> dict[str, dict]:
    subjects = ",".join(f"{task}/{s}" for s in SUBJECTS[task])
    args = ["eval", "--model", str(model), "--data-dir", str(data), "--tasks", task, "--subjects", subjects]
    args += ["--scheme", scheme, "--output-dir", str(out), "--no-progress", *extra]
    assert main(args) == 0
    [run_dir] = [p.parent for p in out.glob("*/run.json")]
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


@pytest.mark.parametrize(("task", "scheme"), [("mmlu", "official"), ("ceval", "baichuan")])
def test_a_cyclic_run_equals_four_runs_on_rotated_files(tiny_bpe_model_dir, tmp_path, task, scheme):
    """baichuan C-Eval shuffles shots per question id: the rotations must share the question's shots."""
    data = write_data_dir(tmp_path / "data", task, SUBJECTS[task])
    cyclic = _eval(tiny_bpe_model_dir, data, tmp_path / "cyclic", task, scheme, "--permute", "cyclic")
    assert len(cyclic) == 4 * sum(SUBJECTS[task].values())
    for k in range(4):
        rotated = tmp_path / f"data{k}"
        shutil.copytree(data, rotated)
        for path in (rotated / task / EVAL_SPLIT[task]).glob("*.csv"):
            _rotate_file(path, task, k)
        plain = _eval(tiny_bpe_model_dir, rotated, tmp_path / f"plain{k}", task, scheme)
        for qid, row in plain.items():
            got = cyclic[rotated_id(qid, k)]
            for field in ("gold", "pred", "correct", "shots_used", "prompt_tokens", "prompt_hash", "subject"):
                assert got[field] == row[field], (qid, k, field)
            assert max(abs(x - y) for x, y in zip(got["logprobs"], row["logprobs"], strict=True)) <= 1e-5
            assert abs(got["letter_mass"] - row["letter_mass"]) <= 1e-5


def test_an_unlabeled_split_is_refused_with_one_line_before_scoring(tiny_bpe_model_dir, tmp_path, capsys):
    data = write_data_dir(tmp_path / "data", "ceval", SUBJECTS["ceval"])
    args = ["eval", "--model", str(tiny_bpe_model_dir), "--data-dir", str(data), "--tasks", "ceval"]
    args += ["--subjects", "ceval/accountant", "--split", "test", "--permute", "cyclic"]
    assert main([*args, "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no gold answer" in errors[0]
    assert not list((tmp_path / "out").glob("*/config.json"))  # refused before any run directory


def test_tasks_whose_options_are_not_separate_fields_cannot_be_rotated():
    """Gaokao embeds its options in the question text and AGIEval's carry their own "(A)" labels: both are
    declared so, and --permute refuses them; the CSV benchmarks' options are separate fields."""
    from tasks import get_task

    assert not get_task("gaokao").options_separate and not get_task("agieval").options_separate
    assert all(get_task(name).options_separate for name in ("mmlu", "ceval", "cmmlu"))
