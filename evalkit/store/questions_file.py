"""A questions file (questions.jsonl, or one process's shard of it): one QuestionResult per line.

Batches are appended, flushed and fsync'd: a batch costs seconds of model time and an fsync
milliseconds, and after a crash or power loss the file then holds exactly the batches that were
reported done, at most with a torn last line (dropped on read, cut away on repair). Two processes
that appended to one file leave exact duplicate lines (kept once) or conflicting ones (an error).
Every record is checked field by field (evalkit.store.question_check): a bad line is an error naming the
file and line where a finished run is read, and is dropped with a warning (its question scored again)
where an unfinished run resumes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from evalkit.store.disk import disk_errors, write_atomic
from evalkit.store.question_check import BadRecord, check_record
from evalkit.types import EvalkitError, QuestionResult

log = logging.getLogger(__name__)


class ParsedQuestions(NamedTuple):
    """A questions file as read: id -> result, where a torn tail starts, lines repeating a record."""

    done: dict[str, QuestionResult]
    good_bytes: int  # the byte length of the complete lines (a torn tail starts there)
    duplicates: int  # lines that repeat an earlier line's record exactly (two runs appended one file)
    dropped: int = 0  # complete lines that hold no valid record, dropped (resume only): scored again


def parse_questions(path: Path, *, tolerate_torn_tail: bool, drop_bad: bool = False) -> ParsedQuestions:
    """Read a questions file (absent: empty); a torn last line is dropped with a warning if tolerated, and
    with `drop_bad` (a resume: the question is scored again) so is a complete line that is no valid record.
    """
    with disk_errors(path):
        data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    if lines[-1]:  # every line is written with its "\n": bytes after the last one are a torn write
        if not tolerate_torn_tail:
            raise EvalkitError(f"{path}: line {len(lines)} is incomplete (torn write) in a finished run")
        log.warning(
            "%s: dropping the incomplete last line %d (%d bytes, torn by an interrupted write); "
            "its question is scored again",
            path,
            len(lines),
            len(lines[-1]),
        )
    done: dict[str, QuestionResult] = {}
    first_line: dict[str, int] = {}
    duplicates = dropped = 0
    for number, line in enumerate(lines[:-1], start=1):
        try:
            result = check_record(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, BadRecord) as err:
            if not drop_bad:
                raise EvalkitError(
                    f"{path}: line {number} is not a question result ({err}); rerun the run's "
                    "command to score that question again (it drops the line), or delete the line"
                ) from err
            log.warning(
                "%s: line %d is not a question result (%s): dropped; its question is scored again",
                path,
                number,
                err,
            )
            dropped += 1
            continue
        if result.id in done:
            if done[result.id] != result:
                raise EvalkitError(
                    f"{path}: line {number} scores question {result.id!r} differently from "
                    f"line {first_line[result.id]}; two runs wrote this file: delete the line "
                    "to drop (or both, to score it again)"
                )
            duplicates += 1  # the same record twice loses nothing: kept once
            continue
        done[result.id] = result
        first_line[result.id] = number
    return ParsedQuestions(done, len(data) - len(lines[-1]), duplicates, dropped)


def write_questions(path: Path, results: Iterable[QuestionResult]) -> None:
    """Replace the file with exactly these results, atomically."""
    write_atomic(path, "".join(r.to_json() + "\n" for r in results))


def repair_questions(path: Path) -> dict[str, QuestionResult]:
    """The results in a questions file, cutting a torn last line (kill -9 mid-write) from it and
    rewriting it without exact duplicate lines (two processes that appended to it at once) and without
    lines that hold no valid record (their questions are scored again)."""
    parsed = parse_questions(path, tolerate_torn_tail=True, drop_bad=True)
    if parsed.duplicates:
        log.warning(
            "%s: %d lines repeated earlier records exactly (two runs appended to it at once); "
            "each question is kept once",
            path,
            parsed.duplicates,
        )
    if parsed.duplicates or parsed.dropped:
        write_questions(path, parsed.done.values())
    elif path.exists() and path.stat().st_size != parsed.good_bytes:
        with disk_errors(path), open(path, "r+b") as f:
            f.truncate(parsed.good_bytes)
            os.fsync(f.fileno())
    return parsed.done


def append_questions(path: Path, results: Sequence[QuestionResult]) -> None:
    """Add one batch of scored questions durably (flush + fsync), never onto a torn line."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            repair_questions(path)
    with disk_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write("".join(r.to_json() + "\n" for r in results))
        f.flush()
        os.fsync(f.fileno())
