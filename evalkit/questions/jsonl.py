"""Read JSON-layout benchmarks (AGIEval's JSONL, GAOKAO-Bench's JSON, declared tasks) into Questions.

The CSV layouts stay in evalkit.questions.data; this module owns what the new layouts add, all driven by
the Task's and the Scheme's data: field names, the single4 filter (PROTOCOL §5: four options and one gold
letter), shots from a few-shot file or from a split derived by a sha256 rank, per-item points checked
against the subject's. Every check runs before any model loads; a message names the file and the line
(JSONL) or the item (JSON). Question ids keep the row's 0-based index in the file, skipped rows included.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
from pathlib import Path

from evalkit.types import LETTERS, EvalkitError, Question, Scheme, Subject, SubjectData, Task

# GAOKAO-Bench options live in the question text: "A．", "A. ", "A、", "A:" with no Latin letter before it
_MARKER = r"(?<![A-Za-z]){} *[.．、:：]"
_SAMPLE_ROW = re.compile(r"sample \d+")


def data_path(task: Task, data_dir: Path, subject: str, split: str) -> Path:
    return data_dir / task.name / task.local_path.format(split=split, subject=subject)


def read_items(path: Path, task: Task) -> list[tuple[str, object]]:
    """(where, item) of every row of a JSONL file (one object a line) or a JSON file (a list under
    `items_key`); a malformed line or file is an error naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvalkitError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if task.format == "jsonl":
        items = []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}: line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise EvalkitError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno})"
                ) from exc
        return items
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalkitError(
            f"{path}: line {exc.lineno} is not valid JSON ({exc.msg}, column {exc.colno})"
        ) from exc
    items = data.get(task.items_key) if isinstance(data, dict) and task.items_key else data
    if not isinstance(items, list):
        raise EvalkitError(f"{path}: expected a list of items under {task.items_key or 'the top level'!r}")
    return [(f"{path}: item {i}", item) for i, item in enumerate(items)]


def gold_letters(value: object) -> str | None:
    """The gold as one letter A-D (a 1-letter string, or a list holding one), else None."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) and value in LETTERS else None


def has_markers(text: str) -> bool:
    """The markers A, B, C, D occur in this order in the text (GAOKAO-Bench single4, data README)."""
    start = 0
    for letter in LETTERS:
        found = re.compile(_MARKER.format(letter)).search(text, start)
        if found is None:
            return False
        start = found.end()
    return True


def _field(task: Task, role: str) -> str:
    return task.fields.get(role, role)


def to_question(
    task: Task, subject: Subject, split: str, row: int, item: object, where: str
) -> Question | None:
    """One item as a Question, or None where the task keeps single4 rows only and this is not one."""
    if not isinstance(item, dict):
        raise EvalkitError(f"{where}: expected a JSON object, got {type(item).__name__}")
    text = item.get(_field(task, "question"))
    if not isinstance(text, str):
        raise EvalkitError(f"{where}: missing or non-text field {_field(task, 'question')!r}")
    options = item.get(_field(task, "options")) if "options" in task.fields else None
    gold = gold_letters(item.get(_field(task, "answer")))
    if options is not None:
        if not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise EvalkitError(f"{where}: field {_field(task, 'options')!r} is not a list of strings")
        single4 = len(options) == 4 and gold is not None
    else:
        single4 = gold is not None and has_markers(text)
    if not single4:
        if task.keep == "single4":
            return None
        raise EvalkitError(f"{where}: not a single-answer four-option question (answer {gold!r})")
    if task.points_field and item.get(task.points_field) != subject.points:
        raise EvalkitError(
            f"{where}: {task.points_field} {item.get(task.points_field)!r}, but subject {subject.name} "
            f"is declared at {subject.points:g} points a question"
        )
    passage = item.get(_field(task, "passage")) if "passage" in task.fields else None
    return Question(
        id=f"{task.name}/{subject.name}/{split}/{row}",
        subject=subject.name,
        text=text,
        choices=tuple(options) if options is not None else ("", "", "", ""),
        answer=gold,
        passage=passage if isinstance(passage, str) else None,
        options=tuple(options) if options is not None else None,
    )


def load_rows(task: Task, data_dir: Path, subject: Subject, split: str) -> list[Question]:
    """The kept rows of one subject's file, in file order."""
    path = data_path(task, data_dir, subject.name, split)
    if not path.is_file():
        raise EvalkitError(
            f"missing {task.name} data file for subject {subject.name!r}, split {split!r}: {path}"
        )
    out = []
    for row, (where, item) in enumerate(read_items(path, task)):
        question = to_question(task, subject, split, row, item, where)
        if question is not None:
            out.append(question)
    if not out:
        raise EvalkitError(f"{path}: no questions to score ({task.keep} rows)")
    return out


def split_rank(scheme: Scheme, task: Task, question: Question) -> str:
    """A row's rank key in the derived split: the sha256 hex of the scheme's key (PROTOCOL §5.3)."""
    row = question.id.rsplit("/", 1)[1]
    key = scheme.split_key.format(benchmark=task.name, subset=question.subject, row=row)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def derived_split(
    scheme: Scheme, task: Task, rows: list[Question]
) -> tuple[tuple[Question, ...], tuple[Question, ...]]:
    """(pool, scored): the `pool_size` lowest-ranked rows in ascending row order, the rest in file order."""
    ranked = sorted(rows, key=lambda q: split_rank(scheme, task, q))
    chosen = {q.id for q in ranked[: scheme.pool_size]}
    return tuple(q for q in rows if q.id in chosen), tuple(q for q in rows if q.id not in chosen)


def file_shots(scheme: Scheme, task: Task, data_dir: Path, subject: str) -> tuple[Question, ...]:
    """The non-empty "sample k" cells of the subject's column of the shot file (AGIEval's
    few_shot_prompts.csv), each a Python literal; labels keep their printed form (`['C']`)."""
    path = data_dir / task.name / scheme.shot_file
    try:
        records = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    except OSError as exc:
        raise EvalkitError(f"cannot read the shot file {path}: {exc.strerror or exc}") from exc
    column = scheme.shot_columns.get(subject, subject)
    if not records or column not in records[0]:
        raise EvalkitError(f"{path}: no column {column!r} for subject {subject!r}")
    index = records[0].index(column)
    shots = []
    for record in records[1:]:
        if not _SAMPLE_ROW.fullmatch(record[0]) or not record[index]:
            continue
        try:
            cell = ast.literal_eval(record[index])
        except (ValueError, SyntaxError) as exc:
            raise EvalkitError(
                f"{path}: {record[0]!r} of {column!r} is not a Python literal ({exc})"
            ) from exc
        shots.append(_shot(task, scheme, subject, len(shots), cell))
    return tuple(shots)


def _shot(task: Task, scheme: Scheme, subject: str, k: int, cell: dict) -> Question:
    """One few-shot sample as upstream reads it: None passage / options / label become ""."""
    passage = cell.get("passage") if subject not in scheme.blank_passage else None
    label = cell.get("label") if cell.get("label") is not None else ""
    options = tuple(cell.get("options") or ())
    return Question(
        id=f"{task.name}/{subject}/shots/{k}",
        subject=subject,
        text=cell["question"],
        choices=(tuple(options) + ("", "", "", ""))[:4],
        answer="".join(label) if isinstance(label, list) else str(label),
        passage=passage or None,
        options=options,
        label=str(label),
    )


def load_subject(
    task: Task, scheme: Scheme, data_dir: Path, subject: Subject, split: str, limit: int | None
) -> SubjectData:
    """One subject's scored questions and shots under the scheme's shot source."""
    rows = load_rows(task, data_dir, subject, split)
    paths = [data_path(task, data_dir, subject.name, split)]
    shots: tuple[Question, ...] = ()
    if scheme.shot_source == "derived":
        shots, scored = derived_split(scheme, task, rows)
        rows = list(scored)
    elif scheme.shot_source == "file":
        shots = file_shots(scheme, task, data_dir, subject.name)
        paths.append(data_dir / task.name / scheme.shot_file)
    elif scheme.shot_source == "split":
        shots = tuple(load_rows(task, data_dir, subject, task.shot_split))
        paths.append(data_path(task, data_dir, subject.name, task.shot_split))
    files = tuple((str(p.relative_to(data_dir)), _digest(p)) for p in dict.fromkeys(paths))
    return SubjectData(subject, tuple(rows[:limit]), shots, files)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
