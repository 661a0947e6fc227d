"""Write tiny benchmark data dirs in each official layout, for tests (`from datafiles import write_data_dir`).

    data_dir = write_data_dir(tmp_path, "ceval", {"accountant": 6, "law": 4})
    load_task_data(get_task("ceval"), data_dir)          # reads tmp_path/ceval/{dev,val,test}/...

Files are what the real ones look like: MMLU has no header, C-Eval has its header (dev adds
"explanation", test has no answer) and CRLF line ends, CMMLU has ",Question,A,B,C,D,Answer" with the
row index first. Some fields hold an embedded newline, commas, quotes or Chinese text, so tests see
the csv module (not line splitting) at work. Content is a pure function of (task, subject, split, row):
the answer of row i is "ABCD"[(i + len(subject)) % 4].
"""

from __future__ import annotations

import csv
from pathlib import Path

from tasks import get_task

SPLITS = {"mmlu": ("dev", "val", "test"), "ceval": ("dev", "val", "test"), "cmmlu": ("dev", "test")}
# the subjects of the `tiny_data_dir` fixture (conftest.py)
TINY_SUBJECTS = {
    "mmlu": ("abstract_algebra", "anatomy", "astronomy"),
    "ceval": ("accountant", "advanced_mathematics", "law"),
    "cmmlu": ("agronomy", "anatomy", "arts"),
}


def answer_of(subject: str, row: int) -> str:
    """The gold letter written for a row (every split that has answers uses the same rule)."""
    return "ABCD"[(row + len(subject)) % 4]


def row_fields(task: str, subject: str, split: str, row: int) -> tuple[str, str, str, str, str]:
    """question, A, B, C, D of one row: row 1 has an embedded newline and a comma, row 2 quotes."""
    zh = task != "mmlu"
    question = (
        f"{subject}题目{row}：下列说法正确的是____。" if zh else f"{split} question {row} about {subject}?"
    )
    if row % 3 == 1:
        question += "\n第二行，带逗号" if zh else "\nsecond line, with a comma"
    if row % 3 == 2:
        question = '"Quoted" ' + question
    choices = [f"选项{letter}{row}" if zh else f"choice {letter}{row}" for letter in "ABCD"]
    if row % 2 == 0:
        choices[1] += ", 1, 2"
    return (question, *choices)


def write_data_dir(root: Path, task: str, subjects: dict[str, int] | None = None, dev_rows: int = 5) -> Path:
    """Write <root>/<task>/... for `subjects` (name -> rows in each non-dev split; default: the first
    two TINY_SUBJECTS with 6 rows) with `dev_rows` dev rows, and return `root` (the --data-dir)."""
    get_task(task)  # fail early on a task name typo
    for subject, n_rows in (subjects or {name: 6 for name in TINY_SUBJECTS[task][:2]}).items():
        for split in SPLITS[task]:
            _write_file(root, task, subject, split, dev_rows if split == "dev" else n_rows)
    return root


def _write_file(root: Path, task: str, subject: str, split: str, n_rows: int) -> None:
    layout = get_task(task)
    path = root / task / layout.local_path.format(split=split, subject=subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = layout.split_headers.get(split, layout.csv_header)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\r\n" if task == "ceval" else "\n")
        if header is not None:
            writer.writerow(header)
        for i in range(n_rows):
            row = list(row_fields(task, subject, split, i))
            if split in layout.labeled_splits:
                row.append(answer_of(subject, i))
            if header is not None:
                row.insert(0, str(i))
            if header is not None and header[-1] == "explanation":
                row.append(f"解析{i}")
            writer.writerow(row)
