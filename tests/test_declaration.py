"""Any multiple-choice benchmark as data: the --task-file declaration (tasks/declaration.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evalkit.types import EvalkitError, RunConfig
from tasks import BUILTIN, TASKS, get_task, scheme_by_path
from tasks.declaration import dump_declaration, load_declaration, task_from_dict

SUBJECTS = ("accountant", "advanced_mathematics", "law")  # datafiles.TINY_SUBJECTS["ceval"]


def declaration(name: str = "myceval") -> dict:
    """C-Eval's layout as JSONL, its official scheme reused by name."""
    ceval = get_task("ceval")
    return {
        "evalkit_task": 1,
        "task": {
            "name": name,
            "title": "My C-Eval",
            "eval_split": "val",
            "shot_split": "dev",
            "splits": ["dev", "val"],
            "labeled_splits": ["dev", "val"],
            "local_path": "{split}/{subject}.jsonl",
            "format": "jsonl",
            "fields": {"question": "question", "options": "options", "answer": "answer"},
            "categories": ["STEM", "Social Science", "Humanities", "Other"],
        },
        "subjects": [
            {k: v for k, v in json.loads(json.dumps(ceval.subject(s).__dict__)).items()} for s in SUBJECTS
        ],
        "schemes": {"official": {"base": "ceval/official"}, "baichuan": {"base": "ceval/baichuan"}},
    }


def _error(data: dict) -> str:
    with pytest.raises(EvalkitError) as err:
        task_from_dict(data, "decl.json", scheme_by_path, "abc")
    return str(err.value)


def test_a_mistake_is_one_line_naming_the_field():
    bad = declaration()
    bad["schemes"]["official"]["letter_rule"] = "in-context"
    assert _error(bad) == (
        "decl.json: schemes.official.letter_rule: 'in-context' is not one of in_context, standalone"
    )
    bad = declaration()
    bad["task"]["splts"] = ["dev"]
    assert _error(bad).startswith(
        "decl.json: task: unknown field 'splts'; did you mean splits or hub_splits?"
    )
    bad = declaration()
    del bad["task"]["local_path"]
    assert _error(bad) == "decl.json: task: missing field 'local_path'"
    bad = declaration()
    bad["subjects"][0]["points"] = "three"
    assert _error(bad) == 'decl.json: subjects[0].points: expected float, got "three"'
    bad = declaration()
    bad["schemes"]["official"]["base"] = "ceval/offical"
    assert "schemes.official.base: unknown ceval scheme 'offical'; did you mean official?" in _error(bad)
    for message in (_error(bad),):
        assert "\n" not in message


def test_builtin_declarations_round_trip():
    for name in ("agieval", "gaokao"):
        task = get_task(name)
        assert task.declaration_hash == ""  # built in: no declaration hash in the config
        assert task_from_dict(dump_declaration(task), name, scheme_by_path) == task


def test_the_declaration_hash_enters_the_config_hash_only_when_used():
    plain = RunConfig(model="m", task="mmlu")
    assert plain.config_hash() == "4e50a9a2620b"  # tests/test_golden.py's frozen value
    assert RunConfig(model="m", task="mmlu", task_file_hash="abc").config_hash() != plain.config_hash()
    assert RunConfig(model="m", task="mmlu", max_length=4096).config_hash() != plain.config_hash()


def _write_jsonl_copy(csv_root: Path, out_root: Path, name: str) -> None:
    """The tiny C-Eval CSVs (tests/datafiles.py) rewritten as the declared JSONL layout."""
    for split in ("dev", "val"):
        folder = out_root / name / split
        folder.mkdir(parents=True, exist_ok=True)
        for subject in SUBJECTS:
            with (csv_root / "ceval" / split / f"{subject}_{split}.csv").open(
                encoding="utf-8", newline=""
            ) as f:
                rows = list(csv.DictReader(f))
            lines = [
                json.dumps(
                    {"question": r["question"], "options": [r[k] for k in "ABCD"], "answer": r["answer"]}
                )
                for r in rows
            ]
            (folder / f"{subject}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _questions(out: Path) -> tuple[dict, dict]:
    (config,) = out.glob("*/config.json")
    rows = [json.loads(line) for line in (config.parent / "questions.jsonl").read_text().splitlines()]
    return json.loads(config.read_text())["config"], {r["id"].split("/", 1)[1]: r for r in rows}


def test_a_declared_benchmark_runs_end_to_end_like_the_builtin_layout(
    tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys
):
    from run_eval import main

    root = tmp_path / "data"
    _write_jsonl_copy(tiny_data_dir, root, "myceval")
    path = tmp_path / "myceval.json"
    path.write_text(json.dumps(declaration(), ensure_ascii=False), encoding="utf-8")
    common = ["--model", str(tiny_spm_model_dir), "--no-progress", "--subjects", ",".join(SUBJECTS)]
    try:
        assert (
            main(
                [
                    "eval",
                    *common,
                    "--data-dir",
                    str(root),
                    "--tasks",
                    "myceval",
                    "--task-file",
                    str(path),
                    "--output-dir",
                    str(tmp_path / "declared"),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "eval",
                    *common,
                    "--data-dir",
                    str(tiny_data_dir),
                    "--tasks",
                    "ceval",
                    "--output-dir",
                    str(tmp_path / "builtin"),
                ]
            )
            == 0
        )
        assert main(["list", "--task-file", str(path)]) == 0
        listing = capsys.readouterr().out
    finally:
        TASKS.pop("myceval", None)
    declared_config, declared = _questions(tmp_path / "declared")
    builtin_config, builtin = _questions(tmp_path / "builtin")
    assert declared_config["task_file_hash"] and builtin_config.get("task_file_hash") is None
    assert declared.keys() == builtin.keys() and len(declared) == 3 * 6
    for key, row in declared.items():  # the same token ids and letter log-probs, question for question
        assert (row["prompt_hash"], row["logprobs"], row["pred"]) == (
            builtin[key]["prompt_hash"],
            builtin[key]["logprobs"],
            builtin[key]["pred"],
        )
    assert "myceval (My C-Eval)" in listing and "agieval (AGIEval)" in listing


def test_a_user_task_may_not_shadow_a_builtin(tmp_path):
    from tasks import register_task_file

    path = tmp_path / "x.json"
    path.write_text(json.dumps(declaration("ceval")), encoding="utf-8")
    with pytest.raises(EvalkitError, match="is a built-in task"):
        register_task_file(str(path))
    assert "ceval" in BUILTIN and TASKS["ceval"].declaration_hash == ""


def test_a_file_that_is_not_json_is_one_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(EvalkitError, match=r"x.json: not a JSON task declaration"):
        load_declaration(path, scheme_by_path)
