"""Finished runs read back from disk (compare, report, divergence): found, loaded, checked, never repaired.

A run directory (written by evalkit.store.run_dir) holds config.json, questions.jsonl and, once it
finished, run.json: the RunResult as JSON (nothing is pickled), converted here both ways; the
names of these files are defined here, for the writer and the readers alike.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from evalkit.store.disk import read_json
from evalkit.store.questions_file import parse_questions
from evalkit.store.records import (
    Environment,
    Fallback,
    LongPrompts,
    Metric,
    ModelInfo,
    ReportRun,
    RunResult,
    SavedRun,
    Timings,
)
from evalkit.store.run_check import BadField, check_record_fields
from evalkit.types import EvalkitError, Scheme, Task, config_from_fields

CONFIG_FILE = "config.json"
QUESTIONS_FILE = "questions.jsonl"
RUN_FILE = "run.json"
SUBMISSION_FILE = "submission.json"  # unlabeled splits: the C-Eval leaderboard file
log = logging.getLogger(__name__)


def short_model_name(model: str) -> str:
    """A filesystem-safe short label for a hub id, a local directory or a GGUF file path."""
    name = Path(model.rstrip("/\\")).name or model
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")
    return name[:80] or "model"


def run_result_to_json(result: RunResult) -> str:
    data = dataclasses.asdict(result)
    data["long_prompts"] = data["long_prompts"] or {}  # run.json's shape since it was recorded
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def run_result_from_dict(data: dict) -> RunResult:
    """Rebuild the nested dataclasses that dataclasses.asdict flattened (tuples came back as lists)."""
    overall = data["overall"]
    return RunResult(
        **{
            **data,
            "config": config_from_fields(data["config"]),
            "scheme": Scheme.from_dict(data["scheme"]),
            "letter_ids": tuple(data["letter_ids"]),
            "letter_strings": tuple(data["letter_strings"]),
            "subjects": {k: Metric(**v) for k, v in data["subjects"].items()},
            "groups": {k: Metric(**v) for k, v in data["groups"].items()},
            "overall": Metric(**overall) if overall is not None else None,
            "environment": Environment.from_dict(data.get("environment") or {}),
            "timings": Timings.from_dict(data.get("timings") or {}),
            "model_info": ModelInfo.from_dict(data.get("model_info") or {}),
            "long_prompts": LongPrompts.from_dict(data.get("long_prompts") or {}),
            "fallbacks": tuple(
                Fallback(**f) for f in data.get("fallbacks", ())
            ),  # absent before it was recorded
        }
    )


def load_run(path: str | Path) -> SavedRun:
    """A finished run: run.json and every question result; read only, never repaired."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise EvalkitError(f"{path} is not a run directory (no {CONFIG_FILE})")
    if not (path / RUN_FILE).is_file():
        raise EvalkitError(f"{path}: run did not finish (no {RUN_FILE}); rerun the same command to resume")
    run_file = path / RUN_FILE
    try:
        result = run_result_from_dict(read_json(run_file))
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        raise EvalkitError(f"{run_file}: not a run result written by this evalkit ({err!r})") from err
    try:  # report and compare read these fields: a hand-edited one is named here, not a traceback there
        check_record_fields(result)
    except BadField as err:
        raise EvalkitError(f"{run_file}: {err}; the file was changed after the run finished") from err
    parsed = parse_questions(path / QUESTIONS_FILE, tolerate_torn_tail=False)
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


def run_label(
    result: RunResult, eval_split: str, *, show_scheme: bool = False, show_shots: bool = False
) -> str:
    """Model + precision (+ scheme, shots, split and --limit where they set the run apart)."""
    config = result.config
    label = f"{short_model_name(config.model)} {config.precision}"
    if config.quant_backend:
        label += f"/{config.quant_backend}"
    if show_scheme or config.scheme != "official":
        label += f" [{config.scheme}]"
    if config.letter_rule:
        label += f" letters={config.letter_rule}"
    if show_shots:
        label += f" {config.shots}-shot"
    if config.split not in (None, eval_split):
        label += f" ({config.split})"
    if config.permute != "none":
        label += f" permute={config.permute}"
    if config.limit is not None:
        label += f" ⚠ limit={config.limit}"
    return label


def saved_runs(paths: Sequence[str | Path]) -> dict[Path, SavedRun]:
    """Finished runs found under `paths`, by directory; none at all is an error naming the paths."""
    runs = {path: load_run(path) for path in find_runs(paths)}
    if not runs:
        raise EvalkitError(f"no finished runs (run.json) under {', '.join(map(str, paths))}")
    return runs


def report_runs(
    paths: Sequence[str | Path], task_of: Callable[[str], Task], matches: Mapping[str, str]
) -> list[ReportRun]:
    """The finished runs under `paths` as report rows: each with its task (`task_of`: tasks/ is the
    caller's) and the published row `matches` names for its model's short name."""
    return [
        ReportRun(
            saved.result,
            task_of(saved.result.config.task),
            path,
            saved.questions,
            matches.get(short_model_name(saved.result.config.model)),
        )
        for path, saved in saved_runs(paths).items()
    ]
