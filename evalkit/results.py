"""Run directories on disk: config.json first, questions.jsonl as scored, run.json last.

`results/<utc>_<model>_<precision>_<task>_<scheme>_<hash>/`:
- config.json: the RunConfig and its hash, written when the directory is made, so a rerun of the
  same command finds the directory and resumes it; beside the paths as typed (`model`, `data_dir`
  in the config, which the hash covers) it records them resolved (`model_resolved`,
  `data_dir_resolved`: absolute, links followed) where they are local, outside the hash;
- questions.jsonl: one QuestionResult per line, appended per batch, flushed and fsync'd: a batch
  costs seconds of model time and an fsync milliseconds, and after a crash or power loss the file
  then holds exactly the batches that were reported done (at most a torn last line, dropped on read);
- run.json: the RunResult, written last through a temporary file and os.replace, so it is either
  absent or complete: its presence means the run finished.
Everything is JSON; nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from evalkit.types import EvalkitError, Fallback, Metric, QuestionResult, RunConfig, RunResult, Scheme

CONFIG_FILE = "config.json"
QUESTIONS_FILE = "questions.jsonl"
SHARD_FILE = "questions.shard-{rank}.jsonl"
RUN_FILE = "run.json"
SUBMISSION_FILE = "submission.json"
log = logging.getLogger(__name__)


class SavedRun(NamedTuple):
    """A finished run: run.json's record and every question result (as read back, or as just written)."""

    result: RunResult
    questions: list[QuestionResult]


def short_model_name(model: str) -> str:
    """A filesystem-safe short label for a hub id, a local directory or a GGUF file path."""
    name = Path(model.rstrip("/\\")).name or model
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")
    return name[:80] or "model"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EvalkitError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise EvalkitError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same directory, fsync, os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def resolved_paths(config: RunConfig) -> dict[str, str]:
    """`model_resolved` / `data_dir_resolved`: the absolute path of a model or data dir that exists on this
    machine (a hub id is left out). Kept out of the config and its hash: a run resumes from the
    command as typed, wherever the paths point now."""
    out = {}
    for key, value in (("model", config.model), ("data_dir", config.data_dir)):
        if value is not None and Path(value).expanduser().exists():
            out[f"{key}_resolved"] = str(Path(value).expanduser().resolve())
    return out


def config_from_dict(data: dict) -> RunConfig:
    subjects = data.get("subjects")
    return RunConfig(**{**data, "subjects": tuple(subjects) if subjects is not None else None})


def run_result_to_json(result: RunResult) -> str:
    return json.dumps(dataclasses.asdict(result), ensure_ascii=False, indent=1) + "\n"


def run_result_from_dict(data: dict) -> RunResult:
    """Rebuild the nested dataclasses that dataclasses.asdict flattened (tuples came back as lists)."""
    overall = data["overall"]
    return RunResult(**{
        **data,
        "config": config_from_dict(data["config"]),
        "scheme": Scheme(**data["scheme"]),
        "letter_ids": tuple(data["letter_ids"]),
        "letter_strings": tuple(data["letter_strings"]),
        "subjects": {k: Metric(**v) for k, v in data["subjects"].items()},
        "groups": {k: Metric(**v) for k, v in data["groups"].items()},
        "overall": Metric(**overall) if overall is not None else None,
        "fallbacks": tuple(Fallback(**f) for f in data.get("fallbacks", ())),  # absent before it was recorded
    })


def _parse_questions(path: Path, *, tolerate_torn_tail: bool) -> tuple[dict[str, QuestionResult], int]:
    """id -> result, and the byte length of the complete lines (a torn tail starts there)."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    if lines[-1]:  # every line is written with its "\n": bytes after the last one are a torn write
        if not tolerate_torn_tail:
            raise EvalkitError(f"{path}: line {len(lines)} is incomplete (torn write) in a finished run")
        log.warning("%s: dropping the incomplete last line %d (%d bytes, torn by an interrupted write); "
                    "its question is scored again", path, len(lines), len(lines[-1]))
    done: dict[str, QuestionResult] = {}
    for number, line in enumerate(lines[:-1], start=1):
        try:
            result = QuestionResult.from_dict(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise EvalkitError(f"{path}: line {number} is not a question result ({err}); "
                               "fix or delete the file to score the run again") from err
        if result.id in done:
            raise EvalkitError(f"{path}: line {number} repeats question {result.id!r}")
        done[result.id] = result
    return done, len(data) - len(lines[-1])


def _repair(path: Path) -> dict[str, QuestionResult]:
    """The results in a questions file, cutting a torn last line (kill -9 mid-write) from it."""
    done, good_bytes = _parse_questions(path, tolerate_torn_tail=True)
    if path.exists() and path.stat().st_size != good_bytes:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            os.fsync(f.fileno())
    return done


class RunDir:
    """The directory of one run of one task: created or resumed from its config hash.

    Under data-parallel evaluation each process appends to its own `questions.shard-<rank>.jsonl`
    (`shard` set), so no two processes ever write one file; `merge_shards` folds them into
    questions.jsonl at the start (leftovers of a killed run) and at the end of a run.
    """

    def __init__(self, path: Path, resumed: bool, shard: int | None = None) -> None:
        self.path = path
        self.resumed = resumed
        self.shard = shard

    @property
    def questions_path(self) -> Path:
        """The file this process appends to."""
        return self.path / (QUESTIONS_FILE if self.shard is None else SHARD_FILE.format(rank=self.shard))

    @classmethod
    def open(cls, config: RunConfig, model_label: str) -> "RunDir":
        """Resume the newest directory under config.output_dir with the same config hash, else make one."""
        digest = config.config_hash()
        root = Path(config.output_dir)
        matches = sorted(p.parent for p in root.glob(f"*/{CONFIG_FILE}") if _read_json(p).get("config_hash") == digest)
        if matches:
            return cls(matches[-1], resumed=True)  # names start with the UTC time: the last is the newest
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        parts = (stamp, short_model_name(model_label), config.precision, config.task, config.scheme, digest)
        path = root / "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", p) for p in parts)
        path.mkdir(parents=True, exist_ok=False)
        body = {"config": dataclasses.asdict(config), "config_hash": digest, "model_label": model_label,
                **resolved_paths(config)}
        _write_atomic(path / CONFIG_FILE, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
        return cls(path, resumed=False)

    def completed(self) -> dict[str, QuestionResult]:
        """Questions already scored; a torn last line is dropped (with a warning) and cut from the file."""
        return _repair(self.path / QUESTIONS_FILE)

    def merge_shards(self, order: Sequence[str] | None = None) -> None:
        """Fold every shard file into questions.jsonl (in `order` of ids if given) and delete the shards.

        Only one process may call this, while no other writes (the runner calls it on the main
        process between barriers). A kill between writing questions.jsonl and deleting the shards
        leaves the same record in two files: that is folded; two different records are an error.
        """
        shards = sorted(self.path.glob(SHARD_FILE.format(rank="*")))
        if not shards and order is None:
            return
        merged = self.completed()
        for shard in shards:
            for qid, result in _repair(shard).items():
                if qid in merged and merged[qid] != result:
                    raise EvalkitError(f"{shard}: question {qid!r} has a different result in another questions "
                                       f"file of {self.path}; it was scored twice")
                merged[qid] = result
        if order is not None:
            rank = {qid: i for i, qid in enumerate(order)}
            merged = dict(sorted(merged.items(), key=lambda item: rank.get(item[0], len(rank))))
        _write_atomic(self.path / QUESTIONS_FILE, "".join(r.to_json() + "\n" for r in merged.values()))
        for shard in shards:
            shard.unlink()

    def append(self, results: Sequence[QuestionResult]) -> None:
        """Add one batch of scored questions durably (flush + fsync)."""
        path = self.questions_path
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # never glue a new line onto a torn one
                _repair(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(r.to_json() + "\n" for r in results))
            f.flush()
            os.fsync(f.fileno())

    def finish(self, result: RunResult) -> None:
        """Write run.json last and atomically: from then on the run counts as finished."""
        _write_atomic(self.path / RUN_FILE, run_result_to_json(result))

    def is_finished(self) -> bool:
        return (self.path / RUN_FILE).is_file()


def load_run(path: str | Path) -> SavedRun:
    """A finished run: run.json and every question result; read only, never repaired."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise EvalkitError(f"{path} is not a run directory (no {CONFIG_FILE})")
    if not (path / RUN_FILE).is_file():
        raise EvalkitError(f"{path}: run did not finish (no {RUN_FILE}); rerun the same command to resume")
    run_file = path / RUN_FILE
    try:
        result = run_result_from_dict(_read_json(run_file))
    except (TypeError, KeyError, AttributeError) as err:
        raise EvalkitError(f"{run_file}: not a run result written by this evalkit ({err!r})") from err
    questions, _ = _parse_questions(path / QUESTIONS_FILE, tolerate_torn_tail=False)
    labeled = sum(q.correct is not None for q in questions.values())
    if result.overall is not None and result.overall.n != labeled:
        raise EvalkitError(f"{path}: {RUN_FILE} counts {result.overall.n} scored questions but {QUESTIONS_FILE} "
                           f"holds {labeled}; the directory was changed after the run finished")
    return SavedRun(result=result, questions=list(questions.values()))


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories named directly, or the finished ones found below the given folders."""
    found: list[Path] = []
    for given in map(Path, paths):
        if (given / CONFIG_FILE).is_file():
            found.append(given)  # named directly: load_run explains if it is unfinished
            continue
        if not given.is_dir():
            raise EvalkitError(f"no such run directory or folder: {given}")
        # glob, unlike Path.rglob before 3.13, follows symlinks: a folder of links to runs is a valid selection
        below = sorted(Path(p).parent for p in glob.glob(str(given / "**" / CONFIG_FILE), recursive=True))
        unfinished = [p for p in below if not (p / RUN_FILE).is_file()]
        for run in unfinished:
            log.warning("skipping unfinished run %s (no %s); rerun its command to resume", run, RUN_FILE)
        finished = [p for p in below if p not in unfinished]
        if not finished:
            raise EvalkitError(f"no finished run directories (with {RUN_FILE}) below {given}")
        found.extend(finished)
    return list(dict.fromkeys(found))


def write_submission(path: str | Path, results: Iterable[QuestionResult]) -> Path:
    """The C-Eval leaderboard file {"subject": {"<id>": "A", ...}, ...} (conventionally SUBMISSION_FILE).

    The key is the last part of the question id ("ceval/accountant/test/17" -> "17"): the row index,
    which equals the `id` column of every C-Eval test CSV.
    """
    body: dict[str, dict[str, str]] = {}
    for result in results:
        answers = body.setdefault(result.subject, {})
        key = result.id.rsplit("/", 1)[-1]
        if key in answers:
            raise EvalkitError(f"submission: subject {result.subject!r} has question {key!r} twice ({result.id})")
        answers[key] = result.pred
    path = Path(path)
    _write_atomic(path, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
    return path
