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
  absent or complete: its presence means the run finished;
- .lock / .lock-holder.json: the flock of the one process scoring the directory, and who it is.
config.json also records `data_files` (path -> sha256 prefix of each data file read), outside the hash.
Every OS error on these files (read-only, disk full, not a directory) is one EvalkitError naming the
path and the remedy; what was written before it stays, and the rerun resumes from it.
Everything is JSON; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import json
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from filelock import FileLock, Timeout

from evalkit.records import Environment, Fallback, Metric, ModelInfo, RunResult, SavedRun, Timings
from evalkit.types import EvalkitError, QuestionResult, RunConfig, Scheme

CONFIG_FILE = "config.json"
QUESTIONS_FILE = "questions.jsonl"
SHARD_FILE = "questions.shard-{rank}.jsonl"
RUN_FILE = "run.json"
SUBMISSION_FILE = "submission.json"
LOCK_FILE = ".lock"  # in a run directory: held (flock) by the one process that scores it
HOLDER_FILE = ".lock-holder.json"  # who holds it, for the message of a process refused
ROOT_LOCK = ".evalkit.lock"  # in --output-dir: held while a run directory is found or made
log = logging.getLogger(__name__)


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


_DISK_REMEDIES = {
    errno.ENOSPC: "free space on that disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EROFS: "make that file system writable (it is mounted read-only)",
    errno.EACCES: "give this user write permission there",
    errno.EPERM: "give this user write permission there",
    errno.ENOTDIR: "--output-dir and the folders above it must be directories, not files",
    errno.EEXIST: "--output-dir must be a directory, not a file",
}


def disk_error(path: Path, err: OSError) -> EvalkitError:
    """One line for an OS error on the results: what failed, why, what to do; the rerun resumes."""
    remedy = _DISK_REMEDIES.get(err.errno or 0, "fix the cause")
    return EvalkitError(
        f"cannot write the results at {path}: {err.strerror or err} (errno {err.errno}); "
        f"{remedy}, then rerun the same command: it resumes with every question scored "
        "so far"
    )


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """OS errors (read-only, disk full, not a directory) of the block as one EvalkitError naming `path`."""
    try:
        yield
    except Timeout:  # a TimeoutError, so an OSError: the callers say what it means
        raise
    except OSError as err:
        raise disk_error(path, err) from err


def check_output_dir(output_dir: str | Path) -> None:
    """Before the model loads: --output-dir is a directory (made if missing) this process can write to."""
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise EvalkitError(f"--output-dir {root} is a file, not a directory; pass a directory for the runs")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root) as probe:  # what a run writes first: a small synced file
            probe.write(b"evalkit write check\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        remedy = _DISK_REMEDIES.get(err.errno or 0, "fix the cause")
        raise EvalkitError(
            f"--output-dir {root} cannot hold runs: {err.strerror or err} (errno "
            f"{err.errno}); {remedy}, or pass another --output-dir (an unfinished run resumes "
            "only from its own directory)"
        ) from err


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same directory, fsync, os.replace."""
    tmp = path.with_name(path.name + ".tmp")
    with disk_errors(path):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # gone after os.replace; after a failed write, nothing is left half-written


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
    return RunResult(
        **{
            **data,
            "config": config_from_dict(data["config"]),
            "scheme": Scheme(**data["scheme"]),
            "letter_ids": tuple(data["letter_ids"]),
            "letter_strings": tuple(data["letter_strings"]),
            "subjects": {k: Metric(**v) for k, v in data["subjects"].items()},
            "groups": {k: Metric(**v) for k, v in data["groups"].items()},
            "overall": Metric(**overall) if overall is not None else None,
            "environment": Environment.from_dict(data.get("environment") or {}),
            "timings": Timings.from_dict(data.get("timings") or {}),
            "model_info": ModelInfo.from_dict(data.get("model_info") or {}),
            "fallbacks": tuple(
                Fallback(**f) for f in data.get("fallbacks", ())
            ),  # absent before it was recorded
        }
    )


class ParsedQuestions(NamedTuple):
    """A questions file as read: id -> result, where a torn tail starts, lines repeating a record."""

    done: dict[str, QuestionResult]
    good_bytes: int  # the byte length of the complete lines (a torn tail starts there)
    duplicates: int  # lines that repeat an earlier line's record exactly (two runs appended one file)


def _parse_questions(path: Path, *, tolerate_torn_tail: bool) -> ParsedQuestions:
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
    duplicates = 0
    for number, line in enumerate(lines[:-1], start=1):
        try:
            result = QuestionResult.from_dict(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError) as err:
            raise EvalkitError(
                f"{path}: line {number} is not a question result ({err}); "
                "fix or delete the file to score the run again"
            ) from err
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
    return ParsedQuestions(done, len(data) - len(lines[-1]), duplicates)


def _repair(path: Path) -> dict[str, QuestionResult]:
    """The results in a questions file, cutting a torn last line (kill -9 mid-write) from it and
    rewriting it without exact duplicate lines (two processes that appended to it at once)."""
    parsed = _parse_questions(path, tolerate_torn_tail=True)
    if parsed.duplicates:
        log.warning(
            "%s: %d lines repeated earlier records exactly (two runs appended to it at once); "
            "each question is kept once",
            path,
            parsed.duplicates,
        )
        _write_atomic(path, "".join(r.to_json() + "\n" for r in parsed.done.values()))
    elif path.exists() and path.stat().st_size != parsed.good_bytes:
        with disk_errors(path), open(path, "r+b") as f:
            f.truncate(parsed.good_bytes)
            os.fsync(f.fileno())
    return parsed.done


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": sys.argv,
    }


def _describe_holder(run_path: Path) -> str:
    try:
        holder = json.loads((run_path / HOLDER_FILE).read_text(encoding="utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']}, since {holder['since']}: "
            f"{' '.join(map(str, holder['command']))}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


def _matching_dirs(root: Path, digest: str) -> list[Path]:
    """Run directories under `root` whose config.json has this hash; unreadable ones are skipped."""
    matches = []
    for config_file in sorted(root.glob(f"*/{CONFIG_FILE}")):
        try:
            found = _read_json(config_file).get("config_hash")
        except EvalkitError as err:
            log.warning("skipping %s: %s (not a run this command can resume)", config_file.parent, err)
            continue
        if found == digest:
            matches.append(config_file.parent)
    return matches


class RunDir:
    """The directory of one run of one task: created or resumed from its config hash.

    One process at a time scores a run directory: `open` takes its lock (a `filelock` flock, which
    the kernel drops when the process dies, kill -9 included) and a second process on the same
    config is refused, naming the holder. Under data-parallel evaluation only the main process
    opens it (and holds the lock); each process appends to its own `questions.shard-<rank>.jsonl`
    (`shard` set), so no two processes ever write one file; `merge_shards` folds them into
    questions.jsonl at the start (leftovers of a killed run) and at the end of a run.
    """

    def __init__(self, path: Path, resumed: bool, shard: int | None = None) -> None:
        self.path = path
        self.resumed = resumed
        self.shard = shard
        self.rescored = 0  # results dropped when opened, their prompt or answer changed: scored again
        self._lock: FileLock | None = None

    @property
    def questions_path(self) -> Path:
        """The file this process appends to."""
        return self.path / (QUESTIONS_FILE if self.shard is None else SHARD_FILE.format(rank=self.shard))

    @classmethod
    def open(cls, config: RunConfig, model_label: str, data_files: dict[str, str] | None = None) -> RunDir:
        """Lock and resume the newest directory under config.output_dir with the same config hash, else
        make one; `data_files` (path -> digest of the data read) is recorded in config.json."""
        digest = config.config_hash()
        root = Path(config.output_dir)
        with disk_errors(root):
            root.mkdir(parents=True, exist_ok=True)
        try:  # find-or-make is one step across processes: two starts in one second find one directory
            with FileLock(root / ROOT_LOCK, timeout=120):
                run = cls._find_or_make(root, config, digest, model_label, data_files)
                run._acquire()
        except Timeout as err:
            raise EvalkitError(
                f"{root / ROOT_LOCK} stayed locked for 2 minutes: is --output-dir on a file "
                "system without working locks? pass a local --output-dir"
            ) from err
        except OSError as err:
            raise disk_error(root, err) from err
        if run.resumed and data_files is not None:
            run._record_data_files(data_files)
        return run

    @classmethod
    def _find_or_make(
        cls, root: Path, config: RunConfig, digest: str, model_label: str, data_files: dict[str, str] | None
    ) -> RunDir:
        matches = _matching_dirs(root, digest)
        if matches:
            return cls(matches[-1], resumed=True)  # names start with the UTC time: the last is the newest
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        parts = (stamp, short_model_name(model_label), config.precision, config.task, config.scheme, digest)
        path = root / "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", p) for p in parts)
        with disk_errors(path):
            path.mkdir(parents=True, exist_ok=False)  # unique: the hash is in the name, the root lock held
        body = {
            "config": dataclasses.asdict(config),
            "config_hash": digest,
            "model_label": model_label,
            **resolved_paths(config),
            "data_files": data_files,
        }
        _write_atomic(path / CONFIG_FILE, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
        return cls(path, resumed=False)

    def _acquire(self) -> None:
        """Hold this directory's lock, or say who does (exit 2): never wait on a run that takes hours."""
        # one lock object per path in a process (reentrant): a second RunDir of this directory in the same
        # process (a library caller, a test) shares it; other processes are refused
        lock = FileLock(self.path / LOCK_FILE, timeout=0, is_singleton=True)
        try:
            lock.acquire()
        except Timeout as err:
            raise EvalkitError(
                f"{self.path} is being scored by another evalkit process "
                f"({_describe_holder(self.path)}); wait for it to finish (then rerun: nothing "
                "is scored twice) or stop it (then rerun: it resumes)"
            ) from err
        self._lock = lock
        _write_atomic(self.path / HOLDER_FILE, json.dumps(_holder(), ensure_ascii=False) + "\n")

    def release(self) -> None:
        """Let the next process open this directory (a killed process releases it with its death)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _record_data_files(self, data_files: dict[str, str]) -> None:
        """Keep config.json's record of the data read up to date; say which files changed."""
        body = _read_json(self.path / CONFIG_FILE)
        before = body.get("data_files")
        if before == data_files:
            return
        if before:
            changed = sorted(k for k in set(before) | set(data_files) if before.get(k) != data_files.get(k))
            log.warning(
                "%s: data files changed since this run started: %s; questions whose prompt or "
                "answer changed are scored again",
                self.path,
                ", ".join(changed),
            )
        _write_atomic(
            self.path / CONFIG_FILE,
            json.dumps({**body, "data_files": data_files}, ensure_ascii=False, indent=1) + "\n",
        )

    def completed(self, repair: bool = True) -> dict[str, QuestionResult]:
        """Questions already scored; a torn last line is dropped (with a warning) and, with `repair` (the
        process that holds the lock), cut from the file, as exact duplicate lines are."""
        if repair:
            return _repair(self.path / QUESTIONS_FILE)
        return _parse_questions(self.path / QUESTIONS_FILE, tolerate_torn_tail=True).done

    def drop(self, ids: Iterable[str]) -> None:
        """Remove results from questions.jsonl (stale ones, to be scored again); lock holder only."""
        ids = set(ids)
        kept = [r for r in self.completed().values() if r.id not in ids]
        _write_atomic(self.path / QUESTIONS_FILE, "".join(r.to_json() + "\n" for r in kept))

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
                    raise EvalkitError(
                        f"{shard}: question {qid!r} has a different result in another "
                        f"questions file of {self.path}; it was scored twice"
                    )
                merged[qid] = result
        if order is not None:
            rank = {qid: i for i, qid in enumerate(order)}
            merged = dict(sorted(merged.items(), key=lambda item: rank.get(item[0], len(rank))))
        _write_atomic(self.path / QUESTIONS_FILE, "".join(r.to_json() + "\n" for r in merged.values()))
        with disk_errors(self.path):
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
        with disk_errors(path), open(path, "a", encoding="utf-8") as f:
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
    parsed = _parse_questions(path / QUESTIONS_FILE, tolerate_torn_tail=False)
    if parsed.duplicates:
        log.warning(
            "%s: %d repeated lines in %s (read once each); rerunning the run's command removes them",
            path,
            parsed.duplicates,
            QUESTIONS_FILE,
        )
    questions = parsed.done
    labeled = sum(q.correct is not None for q in questions.values())
    if result.overall is not None and result.overall.n != labeled:
        raise EvalkitError(
            f"{path}: {RUN_FILE} counts {result.overall.n} scored questions but "
            f"{QUESTIONS_FILE} holds {labeled}; the directory was changed after the run "
            "finished"
        )
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
        # glob, unlike Path.rglob before 3.13, follows symlinks: a folder of links to runs is a valid
        # selection
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
            raise EvalkitError(
                f"submission: subject {result.subject!r} has question {key!r} twice ({result.id})"
            )
        answers[key] = result.pred
    path = Path(path)
    _write_atomic(path, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
    return path
