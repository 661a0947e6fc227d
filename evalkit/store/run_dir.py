"""The run directory being scored: made or resumed from its config hash, locked, appended to, finished.

`results/<utc>_<model>_<precision>_<task>_<scheme>_<hash>/`:
- config.json: the RunConfig and its hash, written when the directory is made, so a rerun of the
  same command finds the directory and resumes it; beside the paths as typed (`model`, `data_dir`
  in the config, which the hash covers) it records them resolved (`model_resolved`,
  `data_dir_resolved`: absolute, links followed) where they are local, and `data_files` (path ->
  sha256 prefix of each data file read), outside the hash;
- questions.jsonl: one QuestionResult per line, appended per batch and fsync'd (evalkit.store.questions_file);
- run.json: the RunResult, written last through a temporary file and os.replace, so it is either
  absent or complete: its presence means the run finished (read back by evalkit.store.saved_runs);
- .lock / .lock-holder.json: the flock of the one process scoring the directory, and who it is.
Every OS error on these files is one EvalkitError naming the path and the remedy (evalkit.store.disk).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from evalkit.store.disk import disk_error, disk_errors, read_json, write_atomic
from evalkit.store.questions_file import append_questions, parse_questions, repair_questions, write_questions
from evalkit.store.records import RunResult
from evalkit.store.saved_runs import (
    CONFIG_FILE,
    QUESTIONS_FILE,
    RUN_FILE,
    run_result_to_json,
    short_model_name,
)
from evalkit.types import EvalkitError, QuestionResult, RunConfig

SHARD_FILE = "questions.shard-{rank}.jsonl"
LOCK_FILE = ".lock"  # in a run directory: held (flock) by the one process that scores it
HOLDER_FILE = ".lock-holder.json"  # who holds it, for the message of a process refused
ROOT_LOCK = ".evalkit.lock"  # in --output-dir: held while a run directory is found or made
log = logging.getLogger(__name__)


def resolved_paths(config: RunConfig) -> dict[str, str]:
    """`model_resolved` / `data_dir_resolved`: the absolute path of a model or data dir that exists on this
    machine (a hub id is left out). Kept out of the config and its hash: a run resumes from the
    command as typed, wherever the paths point now."""
    out = {}
    for key, value in (("model", config.model), ("data_dir", config.data_dir)):
        if value is not None and Path(value).expanduser().exists():
            out[f"{key}_resolved"] = str(Path(value).expanduser().resolve())
    return out


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
            found = read_json(config_file).get("config_hash")
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
        write_atomic(path / CONFIG_FILE, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
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
        write_atomic(self.path / HOLDER_FILE, json.dumps(_holder(), ensure_ascii=False) + "\n")

    def release(self) -> None:
        """Let the next process open this directory (a killed process releases it with its death)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _record_data_files(self, data_files: dict[str, str]) -> None:
        """Keep config.json's record of the data read up to date; say which files changed."""
        body = read_json(self.path / CONFIG_FILE)
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
        write_atomic(
            self.path / CONFIG_FILE,
            json.dumps({**body, "data_files": data_files}, ensure_ascii=False, indent=1) + "\n",
        )

    def completed(self, repair: bool = True) -> dict[str, QuestionResult]:
        """Questions already scored; a torn last line is dropped (with a warning) and, with `repair` (the
        process that holds the lock), cut from the file, as exact duplicate lines are."""
        if repair:
            return repair_questions(self.path / QUESTIONS_FILE)
        return parse_questions(self.path / QUESTIONS_FILE, tolerate_torn_tail=True, drop_bad=True).done

    def drop(self, ids: Iterable[str]) -> None:
        """Remove results from questions.jsonl (stale ones, to be scored again); lock holder only."""
        ids = set(ids)
        kept = [r for r in self.completed().values() if r.id not in ids]
        write_questions(self.path / QUESTIONS_FILE, kept)

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
            for qid, result in repair_questions(shard).items():
                if qid in merged and merged[qid] != result:
                    raise EvalkitError(
                        f"{shard}: question {qid!r} has a different result in another "
                        f"questions file of {self.path}; it was scored twice"
                    )
                merged[qid] = result
        if order is not None:
            rank = {qid: i for i, qid in enumerate(order)}
            merged = dict(sorted(merged.items(), key=lambda item: rank.get(item[0], len(rank))))
        write_questions(self.path / QUESTIONS_FILE, merged.values())
        with disk_errors(self.path):
            for shard in shards:
                shard.unlink()

    def append(self, results: Sequence[QuestionResult]) -> None:
        """Add one batch of scored questions durably (flush + fsync)."""
        append_questions(self.questions_path, results)

    def finish(self, result: RunResult) -> None:
        """Write run.json last and atomically: from then on the run counts as finished."""
        write_atomic(self.path / RUN_FILE, run_result_to_json(result))

    def is_finished(self) -> bool:
        return (self.path / RUN_FILE).is_file()


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
    write_atomic(path, json.dumps(body, ensure_ascii=False, indent=1) + "\n")
    return path
