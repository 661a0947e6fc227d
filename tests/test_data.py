"""evalkit.data: official layouts read byte-exact, ids, --limit, and every bad-input error up front."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from datafiles import TINY_SUBJECTS, answer_of, write_data_dir

from evalkit.questions.data import count_rows, load_task_data, question_from_hub_row
from evalkit.types import EvalkitError
from tasks import get_task


def test_mmlu_headerless_rows_are_byte_exact(tiny_data_dir):
    data = load_task_data(get_task("mmlu"), tiny_data_dir, subjects=["anatomy"])
    (subject,) = data
    assert subject.subject.name == "anatomy"
    assert [q.id for q in subject.questions] == [f"mmlu/anatomy/test/{i}" for i in range(6)]
    assert [q.id for q in subject.shots] == [f"mmlu/anatomy/dev/{i}" for i in range(5)]
    q1 = subject.questions[1]
    assert q1.text == "test question 1 about anatomy?\nsecond line, with a comma"  # embedded newline kept
    assert subject.questions[2].text == '"Quoted" test question 2 about anatomy?'
    assert subject.questions[0].choices == ("choice A0", "choice B0, 1, 2", "choice C0", "choice D0")
    assert [q.answer for q in subject.questions] == [answer_of("anatomy", i) for i in range(6)]


def test_ceval_crlf_header_and_unlabeled_test_split(tiny_data_dir):
    task = get_task("ceval")
    law_val = tiny_data_dir / "ceval" / "val" / "law_val.csv"
    assert law_val.read_bytes().count(b"\r\n") == 7  # header + 6 rows
    val = load_task_data(task, tiny_data_dir, subjects=["law"])[0]
    assert val.questions[1].text == "law题目1：下列说法正确的是____。\n第二行，带逗号"  # no "\r" leaks in
    assert val.questions[1].id == "ceval/law/val/1"
    assert [q.answer for q in val.shots] == [answer_of("law", i) for i in range(5)]
    test = load_task_data(task, tiny_data_dir, split="test", subjects=["law"])[0]
    assert [q.answer for q in test.questions] == [None] * 6
    assert test.questions[5].id == "ceval/law/test/5"


def test_cmmlu_index_column_and_subject_order(tiny_data_dir):
    data = load_task_data(get_task("cmmlu"), tiny_data_dir, subjects=["arts", "agronomy"])
    assert [d.subject.name for d in data] == ["agronomy", "arts"]  # task order, not argument order
    assert data[1].questions[3].choices[0] == "选项A3"
    assert data[1].subject.name_zh == "艺术学"


def test_limit_takes_first_rows_and_keeps_all_shots(tiny_data_dir):
    data = load_task_data(get_task("mmlu"), tiny_data_dir, split="val", subjects=["astronomy"], limit=2)[0]
    assert [q.id for q in data.questions] == ["mmlu/astronomy/val/0", "mmlu/astronomy/val/1"]
    assert len(data.shots) == 5
    with pytest.raises(EvalkitError, match="--limit"):
        load_task_data(get_task("mmlu"), tiny_data_dir, subjects=["astronomy"], limit=0)


def test_count_rows(tiny_data_dir):
    counts = count_rows(get_task("ceval"), tiny_data_dir, "dev", subjects=list(TINY_SUBJECTS["ceval"]))
    assert counts == {"accountant": 5, "advanced_mathematics": 5, "law": 5}


def _rewrite(path: Path, edit) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def ceval_dir(tmp_path) -> Path:
    return write_data_dir(tmp_path, "ceval", {"law": 3})


def _load_law(data_dir: Path, **kwargs):
    return load_task_data(get_task("ceval"), data_dir, subjects=["law"], **kwargs)


def test_missing_file_names_subject_and_path(ceval_dir):
    (ceval_dir / "ceval" / "dev" / "law_dev.csv").unlink()
    with pytest.raises(EvalkitError, match=r"subject 'law', split 'dev': .*law_dev\.csv"):
        _load_law(ceval_dir)


def test_wrong_column_count_names_file_row_and_counts(ceval_dir):
    _rewrite(ceval_dir / "ceval" / "val" / "law_val.csv", lambda rows: rows[2].pop())
    with pytest.raises(EvalkitError, match=r"law_val\.csv: row at line 3 has 6 columns, expected 7"):
        _load_law(ceval_dir)


def test_answer_outside_a_to_d(ceval_dir):
    _rewrite(ceval_dir / "ceval" / "val" / "law_val.csv", lambda rows: rows[3].__setitem__(6, "E"))
    # the third data row starts on line 5: the second holds a quoted newline (lines 3-4)
    with pytest.raises(EvalkitError, match=r"law_val\.csv: row at line 5: answer 'E' is not one of A, B, C"):
        _load_law(ceval_dir)


def test_wrong_header(ceval_dir):
    _rewrite(ceval_dir / "ceval" / "val" / "law_val.csv", lambda rows: rows[0].__setitem__(1, "Question"))
    with pytest.raises(EvalkitError, match=r"law_val\.csv: line 1 \(the header\) is .*'Question'.*expected"):
        _load_law(ceval_dir)


def test_empty_file_and_header_only_file(ceval_dir):
    path = ceval_dir / "ceval" / "val" / "law_val.csv"
    path.write_bytes(b"")
    with pytest.raises(EvalkitError, match="law_val.csv: empty file"):
        _load_law(ceval_dir)
    path.write_bytes(b"id,question,A,B,C,D,answer\r\n")
    with pytest.raises(EvalkitError, match="law_val.csv: no data rows"):
        _load_law(ceval_dir)


def test_id_column_must_equal_row_index(ceval_dir):
    _rewrite(ceval_dir / "ceval" / "test" / "law_test.csv", lambda rows: rows[2].__setitem__(0, "7"))
    with pytest.raises(EvalkitError, match=r"law_test\.csv: row at line 3: id '7' should be 1, the"):
        _load_law(ceval_dir, split="test")


def test_unknown_subject_and_split(ceval_dir):
    with pytest.raises(
        EvalkitError, match=r"unknown ceval subject 'laww'; did you mean law\b.*valid: accountant"
    ):
        load_task_data(get_task("ceval"), ceval_dir, subjects=["laww"])
    with pytest.raises(EvalkitError, match=r"unknown cmmlu split 'val' \(valid: dev, test\)"):
        load_task_data(get_task("cmmlu"), ceval_dir, split="val")
    with pytest.raises(
        EvalkitError, match=r"no cmmlu folder in the data dir .*cmmlu/\{split\}/\{subject\}\.csv"
    ):
        load_task_data(get_task("cmmlu"), ceval_dir)


def test_hub_rows_convert_like_local_rows():
    mmlu = question_from_hub_row(
        get_task("mmlu"),
        "anatomy",
        "test",
        3,
        {"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2},
    )
    assert (mmlu.id, mmlu.text, mmlu.choices, mmlu.answer) == (
        "mmlu/anatomy/test/3",
        "Q?",
        ("a", "b", "c", "d"),
        "C",
    )
    row = {
        "id": 0,
        "question": "问",
        "A": "甲",
        "B": "乙",
        "C": "丙",
        "D": "丁",
        "answer": "",
        "explanation": "",
    }
    assert question_from_hub_row(get_task("ceval"), "law", "test", 0, row).answer is None
    assert question_from_hub_row(get_task("ceval"), "law", "val", 0, {**row, "answer": "D"}).answer == "D"
    cmmlu = {"Question": "问", "A": "1", "B": "2", "C": "3", "D": "4", "Answer": "B"}
    assert question_from_hub_row(get_task("cmmlu"), "arts", "test", 9, cmmlu).answer == "B"
    with pytest.raises(EvalkitError, match="row 1: answer '7' is not one of"):
        question_from_hub_row(
            get_task("mmlu"),
            "anatomy",
            "test",
            0,
            {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": 7},
        )
    with pytest.raises(EvalkitError, match="row 5: id 5 should be 4, the question's index"):
        question_from_hub_row(get_task("ceval"), "law", "val", 4, {**row, "id": 5, "answer": "A"})


def test_unreachable_hub_tells_to_pass_data_dir(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EvalkitError, match=r"could not load cais/mmlu config 'anatomy'.*pass --data-dir"):
        load_task_data(get_task("mmlu"), None, subjects=["anatomy"])


@pytest.mark.slow
def test_real_data_loads_with_published_counts(shared_data):
    expected: dict[tuple[str, str], int] = {}
    with open(shared_data / "COUNTS.tsv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            key = (row["dataset"], row["split"])
            expected[key] = expected.get(key, 0) + int(row["rows"])
    for (task, split), total in expected.items():
        if get_task(task).keep != "all":  # AGIEval, Gaokao: only their single-answer four-option rows are
            continue  # scored and counted (their counts per subset: tests/test_new_tasks.py)
        assert sum(count_rows(get_task(task), shared_data, split).values()) == total, (task, split)
    ceval_test = load_task_data(get_task("ceval"), shared_data, split="test", subjects=["law"])[0]
    assert all(q.answer is None for q in ceval_test.questions)


def test_errors_name_the_line_an_editor_shows_after_a_quoted_newline(ceval_dir):
    path = ceval_dir / "ceval" / "val" / "law_val.csv"
    path.write_text(
        'id,question,A,B,C,D,answer\r\n0,"two\r\nlines",a,b,c,d,A\r\n1,q,a,b,c,d,E\r\n',
        encoding="utf-8",
        newline="",
    )
    with pytest.raises(EvalkitError, match=r"law_val\.csv: row at line 4: answer 'E' is not one of"):
        _load_law(ceval_dir)
    mmlu = write_data_dir(ceval_dir, "mmlu", {"anatomy": 2})  # a header-less layout: data from line 1
    _rewrite(mmlu / "mmlu" / "test" / "anatomy_test.csv", lambda rows: rows[0].__setitem__(5, "Z"))
    with pytest.raises(EvalkitError, match=r"anatomy_test\.csv: row at line 1: answer 'Z' is not one of"):
        load_task_data(get_task("mmlu"), mmlu, subjects=["anatomy"])
