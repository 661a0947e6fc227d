"""Read a benchmark's questions from its official local CSV layout or from the hub, validated up front.

Every check runs before any model work: a missing file, a wrong header or column count, an answer
outside A-D, an unknown subject or split, an empty file each raise an EvalkitError naming the file,
the line and the valid options. A message names a CSV row by its line number in the file, as an
editor shows it (1-based, the header is line 1; a record with a quoted newline is named by its first
line); a hub row by its position counting from 1. Text is kept byte-exact (csv module, newline='',
no strip). Files are read strictly: bytes that are not UTF-8 name their line, and a stray or unclosed
quote is an error (a lenient reader would silently shift the question text). `--shots` is checked
against every subject's shot rows here, and each file read is fingerprinted (SubjectData.files).

Question ids are "<task>/<subject>/<split>/<row index>", the row index counting data rows from 0 in
file (or hub) order. Where a layout has an id column (C-Eval "id", CMMLU's unnamed first column) it
must equal that index: the C-Eval submission file is keyed by these ids.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

from evalkit.hub import require_hub_dataset
from evalkit.types import LETTERS, EvalkitError, Question, Scheme, Subject, SubjectData, Task, unknown

# the column order of header-less files (MMLU): question, A, B, C, D, answer
HEADERLESS_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_ROLES = tuple(c.lower() for c in HEADERLESS_COLUMNS)  # field roles; headers match them in any case


def load_task_data(
    task: Task,
    data_dir: str | Path | None,
    split: str | None = None,
    subjects: Sequence[str] | None = None,
    limit: int | None = None,
    n_shots: int | None = None,
    scheme: Scheme | None = None,
) -> list[SubjectData]:
    """Questions and shots of the selected subjects (task order); data_dir None reads the hub. With
    `n_shots`, every subject must have that many shot rows (checked here, before any model loads).
    `scheme` (default: the task's official one) picks the shots of JSON layouts (a file, a derived split)."""
    split = split or task.eval_split
    _check_source(task, data_dir, split)
    if task.format != "csv":
        scheme = scheme or task.schemes["official"]
        return _load_json_task(task, scheme, Path(data_dir), split, subjects, limit, n_shots)
    if limit is not None and limit < 1:
        raise EvalkitError(f"--limit must be a positive number of questions per subject, got {limit}")
    if n_shots is not None and n_shots < 0:
        raise EvalkitError(f"--shots must be 0 or more, got {n_shots}")
    assert task.shot_split in task.labeled_splits, f"{task.name}: shots need answers"
    out = []
    for subject in select_subjects(task, subjects):
        questions = _load(task, data_dir, subject.name, split)
        shots = _load(task, data_dir, subject.name, task.shot_split)
        if n_shots is not None and len(shots) < n_shots:
            raise EvalkitError(
                f"{_where(task, data_dir, subject.name, task.shot_split)}: {len(shots)} "
                f"{task.shot_split} rows for subject {subject.name!r}, fewer than --shots "
                f"{n_shots}; lower --shots or add rows to the file"
            )
        files: tuple[tuple[str, str], ...] = ()
        if data_dir is not None:
            paths = [_csv_path(task, Path(data_dir), subject.name, s) for s in (split, task.shot_split)]
            files = tuple((str(p.relative_to(data_dir)), file_digest(p)) for p in paths)
        out.append(SubjectData(subject, tuple(questions[:limit]), tuple(shots), files))
    return out


def _load_json_task(
    task: Task,
    scheme: Scheme,
    data_dir: Path,
    split: str,
    names: Sequence[str] | None,
    limit: int | None,
    n_shots: int | None,
) -> list[SubjectData]:
    """A JSON-layout task (evalkit.questions.jsonl); subjects the scheme leaves out by default (AGIEval's
    jec-qa under `baichuan`) are read only when named."""
    from evalkit.questions.jsonl import load_subject

    if limit is not None and limit < 1:
        raise EvalkitError(f"--limit must be a positive number of questions per subject, got {limit}")
    chosen = select_subjects(task, names)
    if names is None:
        chosen = [s for s in chosen if s.name not in scheme.default_exclude]
    out = []
    for subject in chosen:
        data = load_subject(task, scheme, data_dir, subject, split, limit)
        wanted = scheme.shots_for(subject.name, n_shots) if n_shots is not None else 0
        if len(data.shots) < wanted:
            raise EvalkitError(
                f"{task.name} {scheme.name}: {len(data.shots)} shot rows for subject {subject.name!r}, "
                f"fewer than --shots {wanted}; lower --shots"
            )
        out.append(data)
    return out


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256: config.json's record of the data a run read."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _csv_path(task: Task, data_dir: Path, subject: str, split: str) -> Path:
    return data_dir / task.name / task.local_path.format(split=split, subject=subject)


def _where(task: Task, data_dir: str | Path | None, subject: str, split: str) -> str:
    """The file (or hub config) of one subject's split, for messages."""
    if data_dir is not None:
        return str(_csv_path(task, Path(data_dir), subject, split))
    return f"hub {task.hub_id} config {subject!r} split {task.hub_splits[split]!r}"


def count_rows(
    task: Task, data_dir: str | Path | None, split: str, subjects: Sequence[str] | None = None
) -> dict[str, int]:
    """Data rows per subject of one split (for the `list` subcommand), validated like a load; JSON
    layouts count the rows they score (single4)."""
    _check_source(task, data_dir, split)
    if task.format != "csv":
        from evalkit.questions.jsonl import load_rows

        return {
            s.name: len(load_rows(task, Path(data_dir), s, split)) for s in select_subjects(task, subjects)
        }
    return {s.name: len(_load(task, data_dir, s.name, split)) for s in select_subjects(task, subjects)}


def select_subjects(task: Task, names: Sequence[str] | None) -> list[Subject]:
    """The task's subjects in task order, restricted to `names`; unknown names get a did-you-mean."""
    if names is None:
        return list(task.subjects)
    valid = [s.name for s in task.subjects]
    for name in names:
        if name not in valid:
            raise unknown(f"{task.name} subject", name, valid)
    wanted = set(names)
    return [s for s in task.subjects if s.name in wanted]


def _check_source(task: Task, data_dir: str | Path | None, split: str) -> None:
    if split not in task.splits:
        raise unknown(f"{task.name} split", split, task.splits)
    if data_dir is None and task.requires_data_dir:
        raise EvalkitError(
            f"{task.title} needs --data-dir: no hub dataset carries its official bytes (expected "
            f"<data-dir>/{task.name}/{task.local_path})"
        )
    if data_dir is not None and not (Path(data_dir) / task.name).is_dir():
        raise EvalkitError(
            f"no {task.name} folder in the data dir {data_dir} (expected "
            f"{Path(data_dir) / task.name / task.local_path})"
        )


def _load(task: Task, data_dir: str | Path | None, subject: str, split: str) -> list[Question]:
    if data_dir is None:
        return _load_hub(task, subject, split)
    return _load_csv(task, Path(data_dir), subject, split)


def _load_csv(task: Task, data_dir: Path, subject: str, split: str) -> list[Question]:
    path = _csv_path(task, data_dir, subject, split)
    if not path.is_file():
        raise EvalkitError(f"missing {task.name} data file for subject {subject!r}, split {split!r}: {path}")
    rows = _read_rows(path)
    if not rows:
        raise EvalkitError(f"{path}: empty file")
    header = task.split_headers.get(split, task.csv_header)
    if header is not None:
        if tuple(rows[0][1]) != header:
            raise EvalkitError(f"{path}: line 1 (the header) is {tuple(rows[0][1])}, expected {header}")
        rows = rows[1:]
        if not rows:
            raise EvalkitError(f"{path}: no data rows after the header")
    columns = header or HEADERLESS_COLUMNS
    questions = []
    for i, (line, row) in enumerate(rows):
        where = f"{path}: row at line {line}"
        if len(row) != len(columns):
            raise EvalkitError(
                f"{where} has {len(row)} columns, expected {len(columns)} ({','.join(columns)})"
            )
        questions.append(_question(task, subject, split, i, dict(zip(columns, row, strict=True)), where))
    return questions


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(first line of the record, fields) of every record, read strictly: a stray quote, a quoted field
    left open or bytes that are not UTF-8 are an error naming the line, never a silently shifted row."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EvalkitError(f"cannot read {path}: {exc.strerror or exc}") from exc
    body = raw[len(codecs.BOM_UTF8) :] if raw.startswith(codecs.BOM_UTF8) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        column = exc.start - body.rfind(b"\n", 0, exc.start)
        raise EvalkitError(
            f"{path}: line {line} is not UTF-8 (byte {body[exc.start]:#04x} at byte column "
            f"{column}); save the file as UTF-8"
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, end = [], 0  # fields may span lines
    try:
        for row in reader:
            rows.append((end + 1, row))
            end = reader.line_num
    except csv.Error as exc:
        raise EvalkitError(
            f"{path}: the record starting at line {end + 1} is not valid CSV ({exc}, by line "
            f"{reader.line_num}); a stray or unclosed quote? quote the field whole and double "
            'any " inside it'
        ) from exc
    return rows


def _load_hub(task: Task, subject: str, split: str) -> list[Question]:
    import datasets  # deferred: importing datasets is slow and local runs never need it

    hub_split = task.hub_splits[split]
    remedy = (
        f"pass --data-dir with the official {task.title} CSV files (<data-dir>/{task.name}/{task.local_path})"
    )
    require_hub_dataset(task.hub_id, remedy)  # one quick check, not every file's retries
    try:
        rows = datasets.load_dataset(task.hub_id, subject, split=hub_split)
    except (OSError, RuntimeError) as exc:  # ConnectionError/offline, not found, unsupported script
        reason = " ".join(str(exc).split())  # the libraries' messages span lines; the error is one
        raise EvalkitError(
            f"could not load {task.hub_id} config {subject!r} split {hub_split!r} from the "
            f"Hugging Face hub ({reason}); {remedy}"
        ) from exc
    where = f"hub {task.hub_id} config {subject!r} split {hub_split!r}"
    return [question_from_hub_row(task, subject, split, i, row, where) for i, row in enumerate(rows)]


def question_from_hub_row(
    task: Task, subject: str, split: str, index: int, row: dict, where: str = "hub"
) -> Question:
    """One hub row as a Question: C-Eval/CMMLU rows carry A..D fields, cais/mmlu a `choices` list
    and an int answer; the key case differs per dataset (`question` vs `Question`)."""
    fields = {key.lower(): value for key, value in row.items()}
    if "choices" in fields:
        fields.update(zip(_ROLES[1:5], fields.pop("choices"), strict=False))  # too few: a missing field below
    if isinstance(fields.get("answer"), int) and not isinstance(fields["answer"], bool):
        fields["answer"] = LETTERS[fields["answer"]] if 0 <= fields["answer"] < 4 else str(fields["answer"])
    return _question(task, subject, split, index, fields, f"{where}: row {index + 1}")


def _question(task: Task, subject: str, split: str, index: int, fields: dict, where: str) -> Question:
    """Validate one row's fields (keys: any case of question, a..d, answer, id column) into a Question."""
    fields = {key.lower(): value for key, value in fields.items()}
    missing = [role for role in _ROLES[:5] if not isinstance(fields.get(role), str)]
    if missing:
        raise EvalkitError(f"{where}: missing or non-text field(s) {', '.join(missing)}")
    row_id = fields.get(task.id_column.lower()) if task.id_column is not None else None
    if row_id is not None and str(row_id) != str(index):
        raise EvalkitError(
            f"{where}: id {row_id!r} should be {index}, the question's index (data rows "
            "counted from 0 after any header): evalkit keys questions and the C-Eval "
            "submission by it"
        )
    answer = fields.get("answer")
    if split in task.labeled_splits:
        if answer not in LETTERS:
            raise EvalkitError(f"{where}: answer {answer!r} is not one of {', '.join(LETTERS)}")
    else:
        answer = None
    return Question(
        id=f"{task.name}/{subject}/{split}/{index}",
        subject=subject,
        text=fields["question"],
        choices=(fields["a"], fields["b"], fields["c"], fields["d"]),
        answer=answer,
    )
