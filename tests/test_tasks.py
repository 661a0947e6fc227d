"""tasks/: the registry, each benchmark's layout and subjects, and the schemes as data (PROTOCOL §1-2)."""
from __future__ import annotations

import json

import pytest

from evalkit.prompts import render_header
from evalkit.types import EvalkitError
from tasks import DATA_DIR, TASKS, get_task
from tasks.convert_categories import convert


def test_registry_and_did_you_mean():
    assert sorted(TASKS) == ["ceval", "cmmlu", "mmlu"]
    assert get_task("cmmlu").title == "CMMLU"
    with pytest.raises(EvalkitError, match=r"unknown task 'cevl'; did you mean ceval\? \(valid: ceval, cmmlu, mmlu\)"):
        get_task("cevl")
    with pytest.raises(EvalkitError, match=r"unknown task 'gsm8k' \(valid: ceval, cmmlu, mmlu\)"):
        get_task("gsm8k")


@pytest.mark.parametrize("name, n_subjects, groups", [
    ("mmlu", 57, {"STEM": 18, "Humanities": 13, "Social Sciences": 12, "Others": 14}),
    ("ceval", 52, {"STEM": 20, "Social Sciences": 10, "Humanities": 11, "Others": 11, "Avg(Hard)": 8}),
    ("cmmlu", 67, {"STEM": 17, "Humanities": 13, "Social Sciences": 22, "Others": 15, "China Specific": 15}),
])
def test_subjects_and_groups(name, n_subjects, groups):
    task = get_task(name)
    assert len(task.subjects) == n_subjects == len({s.name for s in task.subjects})
    assert {g: len(task.group_subjects(g)) for g in task.categories + task.extra_groups} == groups
    if name != "mmlu":
        assert all(s.name_zh for s in task.subjects)


def test_anatomy_is_in_others_for_mmlu_and_stem_for_cmmlu():
    assert get_task("mmlu").subject("anatomy").categories == ("Others",)
    assert "STEM" in get_task("cmmlu").subject("anatomy").categories


@pytest.mark.parametrize("name, eval_split, splits, path, labeled", [
    ("mmlu", "test", ("dev", "val", "test"), "test/anatomy_test.csv", ("dev", "val", "test")),
    ("ceval", "val", ("dev", "val", "test"), "val/law_val.csv", ("dev", "val")),
    ("cmmlu", "test", ("dev", "test"), "test/anatomy.csv", ("dev", "test")),
])
def test_layouts(name, eval_split, splits, path, labeled):
    task = get_task(name)
    subject = "law" if name == "ceval" else "anatomy"
    assert (task.eval_split, task.shot_split, task.splits, task.labeled_splits) == (eval_split, "dev", splits, labeled)
    assert task.local_path.format(split=eval_split, subject=subject) == path
    assert set(task.hub_splits) == set(task.splits)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_schemes_are_consistent_data(name):
    task = get_task(name)
    assert list(task.schemes) == ["official", "baichuan", "lm-eval"]
    for scheme in task.schemes.values():
        assert scheme.example.endswith(scheme.answer_cue) and "{letter}" in scheme.shot_answer
        assert scheme.source
        assert set(scheme.subject_names) <= {s.name for s in task.subjects}
        for subject in task.subjects:  # every template renders for every subject
            header = render_header(scheme, subject)
            assert (subject.name.split("_")[-1] in header) if name == "mmlu" else (subject.name_zh[:2] in header)
    official, baichuan, lm_eval = task.schemes.values()
    assert (official.letter_rule, baichuan.letter_rule, lm_eval.letter_rule) == ("in_context", "standalone", "in_context")
    assert official.aggregation == baichuan.aggregation == ("micro" if name == "mmlu" else "macro")
    assert lm_eval.aggregation == "micro" and lm_eval.length_policy == "left_truncate" and lm_eval.strip_text
    assert official.bos == "tokenizer_default" and lm_eval.bos == "never"
    assert baichuan.bos == ("tokenizer_default" if name == "cmmlu" else "never")
    assert official.length_policy == {"mmlu": "drop_last", "ceval": "none", "cmmlu": "drop_longest"}[name]


def test_baichuan_ceval_name_table_differs_in_one_subject():
    scheme = get_task("ceval").schemes["baichuan"]
    assert scheme.subject_names == {"mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论"}
    assert get_task("ceval").subject("mao_zedong_thought").name_zh == "毛泽东思想和中国特色社会主义理论体系概论"
    assert scheme.shot_order == "shuffled_per_question"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_data_files_equal_conversion_of_official_maps(name, shared_data):
    official = json.loads((shared_data / name / "categories.json").read_text(encoding="utf-8"))
    stored = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert stored == convert(name, official)
