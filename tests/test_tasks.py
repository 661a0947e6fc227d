"""tasks/: the registry, each benchmark's layout and subjects, and the schemes as data (PROTOCOL §1-2)."""

from __future__ import annotations

import csv
import dataclasses
import json
import string
from typing import Literal, get_args, get_origin, get_type_hints

import pytest

from evalkit.questions.prompts import render_header
from evalkit.types import LETTERS, EvalkitError, RunConfig, Scheme
from tasks import DATA_DIR, TASKS, get_task
from tasks.convert_categories import convert

# the CSV benchmarks (categories.json, dev shots); AGIEval and Gaokao are checked in test_new_tasks.py
CSV_TASKS = sorted(name for name, task in TASKS.items() if task.format == "csv")


def test_registry_and_did_you_mean():
    assert sorted(TASKS) == ["agieval", "ceval", "cmmlu", "gaokao", "mmlu"]
    assert get_task("cmmlu").title == "CMMLU"
    with pytest.raises(
        EvalkitError,
        match=r"unknown task 'cevl'; did you mean ceval\? \(valid: agieval, ceval, cmmlu, gaokao, mmlu\)",
    ):
        get_task("cevl")
    with pytest.raises(
        EvalkitError, match=r"unknown task 'gsm8k' \(valid: agieval, ceval, cmmlu, gaokao, mmlu\)"
    ):
        get_task("gsm8k")


@pytest.mark.parametrize("name", CSV_TASKS)
def test_subject_names_are_unique_and_chinese_names_present_where_a_scheme_uses_them(name):
    task = get_task(name)
    names = [s.name for s in task.subjects]
    assert len(names) == len(set(names))
    templates = [getattr(scheme, t) for scheme in task.schemes.values() for t in TEMPLATES]
    if any("subject_zh" in _fields(template) for template in templates):
        assert [s.name for s in task.subjects if not s.name_zh] == []


def _official_groups(official: dict) -> dict[str, set[str]]:
    """Official group name -> subjects, as the official category file lists them."""
    if "category_subjects" in official:  # C-Eval, CMMLU
        return {group: set(subjects) for group, subjects in official["category_subjects"].items()}
    groups: dict[str, set[str]] = {}  # MMLU: subject -> category
    for subject, category in official["subject_to_category"].items():
        groups.setdefault(category, set()).add(subject)
    return groups


@pytest.mark.parametrize("name", CSV_TASKS)
def test_every_subject_is_in_exactly_the_groups_of_the_official_map(name, shared_data):
    """The task's subjects and groups against the official file's own listing (not through convert())."""
    official = json.loads((shared_data / name / "categories.json").read_text(encoding="utf-8"))
    ours_to_official = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))[
        "official_category_names"
    ]
    task = get_task(name)
    assert {s.name for s in task.subjects} == set(official["subjects"])
    listed = _official_groups(official)
    expected = {ours: listed[theirs] for ours, theirs in ours_to_official.items()}
    if "hard_subjects" in official:  # C-Eval's hard leaderboard, from its README, kept in the same file
        expected["Avg(Hard)"] = set(official["hard_subjects"])
    groups = task.categories + task.extra_groups
    assert {group: set(task.group_subjects(group)) for group in groups} == expected


@pytest.mark.parametrize("name", CSV_TASKS)
def test_the_shared_data_has_one_file_per_split_and_subject_and_no_other(name, shared_data):
    task = get_task(name)
    for split in task.splits:
        on_disk = {
            p.relative_to(shared_data / name).as_posix() for p in (shared_data / name / split).iterdir()
        }
        expected = {task.local_path.format(split=split, subject=s.name) for s in task.subjects}
        assert on_disk == expected, split


@pytest.mark.parametrize("name", CSV_TASKS)
def test_the_measured_row_counts_cover_every_split_and_subject_with_enough_shots(name, shared_data):
    counts_file = shared_data / "COUNTS.tsv"
    if not counts_file.is_file():
        pytest.skip(f"no measured row counts at {counts_file}")
    task = get_task(name)
    rows: dict[str, dict[str, int]] = {}  # split -> subject -> rows
    with open(counts_file, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["dataset"] == name:
                rows.setdefault(row["split"], {})[row["subject"]] = int(row["rows"])
    assert set(rows) == set(task.splits)
    for split, subjects in rows.items():
        assert set(subjects) == {s.name for s in task.subjects}, split
    short = {s: n for s, n in rows[task.shot_split].items() if n < RunConfig(model="m", task=name).shots}
    assert short == {}  # the default shots come from the shot split of every subject


def test_anatomy_is_in_others_for_mmlu_and_stem_for_cmmlu():
    assert get_task("mmlu").subject("anatomy").categories == ("Others",)
    assert "STEM" in get_task("cmmlu").subject("anatomy").categories


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


@pytest.mark.parametrize("name", CSV_TASKS)
def test_every_subject_belongs_to_the_task_groups(name):
    task = get_task(name)
    groups = task.categories + task.extra_groups
    assert len(set(groups)) == len(groups)
    for subject in task.subjects:
        assert subject.categories and set(subject.categories) <= set(groups), subject.name
        assert subject.name_en
        assert task.subject(subject.name) is subject
    assert all(task.group_subjects(group) for group in groups)  # no empty column in the report


@pytest.mark.parametrize("name", CSV_TASKS)
def test_splits_are_consistent_with_the_local_layout(name):
    task = get_task(name)
    assert {task.eval_split, task.shot_split} <= set(task.splits)
    assert task.shot_split in task.labeled_splits and set(task.labeled_splits) <= set(task.splits)
    assert set(task.hub_splits) == set(task.splits) and set(task.split_headers) <= set(task.splits)
    assert _fields(task.local_path) == {"split", "subject"}
    paths = {
        task.local_path.format(split=split, subject=subject.name)
        for split in task.splits
        for subject in task.subjects
    }
    assert len(paths) == len(task.splits) * len(task.subjects)  # one file per split and subject
    for split in task.splits:  # the split is a folder (where `list --data-dir` counts its rows)
        assert task.local_path.format(split=split, subject="x").startswith(f"{split}/")


# the fields the Scheme docstring documents
SCHEME_FIELDS = {"subject_spaced", "subject_en", "subject_zh", "question", *LETTERS, "letter"}
TEMPLATES = ("header", "example", "shot_answer", "header_joiner", "shot_joiner", "query_joiner")


@pytest.mark.parametrize("name", CSV_TASKS)
def test_schemes_are_consistent_data(name):
    task = get_task(name)
    assert list(task.schemes) == list(get_task("mmlu").schemes)  # every task offers the same schemes
    literal_fields = {
        f.name: get_args(hint)
        for f in dataclasses.fields(Scheme)
        if get_origin(hint := get_type_hints(Scheme)[f.name]) is Literal
    }
    for key, scheme in task.schemes.items():
        assert scheme.name == key and scheme.source
        for template in TEMPLATES:  # every template uses only the documented fields
            assert _fields(getattr(scheme, template)) <= SCHEME_FIELDS, (key, template)
        assert _fields(scheme.shot_answer) == {"letter"} and "letter" not in _fields(scheme.example)
        assert set(LETTERS) | {"question"} <= _fields(scheme.example)
        assert scheme.example.endswith(scheme.answer_cue)
        for field_name, values in literal_fields.items():
            assert getattr(scheme, field_name) in values, (key, field_name)
        assert set(scheme.subject_names) <= {s.name for s in task.subjects}
        for subject in task.subjects:  # every template renders for every subject
            header = render_header(scheme, subject)
            named = subject.name.split("_")[-1] if name == "mmlu" else subject.name_zh[:2]
            assert named in header
    official, baichuan, lm_eval = (task.schemes[k] for k in ("official", "baichuan", "lm-eval"))
    # what decides the scores beyond the prompt bytes (PROTOCOL §2): letter ids, BOS, the averaging
    assert (official.letter_rule, baichuan.letter_rule, lm_eval.letter_rule) == (
        "in_context",
        "standalone",
        "in_context",
    )
    assert baichuan.aggregation == official.aggregation  # Baichuan's scripts average as the benchmark does
    assert (lm_eval.aggregation, lm_eval.bos, lm_eval.length_policy) == ("micro", "never", "left_truncate")
    assert official.bos == "tokenizer_default"
    assert baichuan.bos == ("tokenizer_default" if name == "cmmlu" else "never")


def test_baichuan_ceval_name_table_differs_in_one_subject():
    scheme = get_task("ceval").schemes["baichuan"]
    assert scheme.subject_names == {"mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论"}
    official_name = get_task("ceval").subject("mao_zedong_thought").name_zh
    assert official_name == "毛泽东思想和中国特色社会主义理论体系概论"
    assert scheme.shot_order == "shuffled_per_question"


@pytest.mark.parametrize("name", CSV_TASKS)
def test_data_files_equal_conversion_of_official_maps(name, shared_data):
    official = json.loads((shared_data / name / "categories.json").read_text(encoding="utf-8"))
    stored = json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert stored == convert(name, official)
