"""Helpers shared by the tests that run the command line: one `eval` argument list, and the run
directories a run leaves under its output folder."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path


def subjects_in(data_dir: Path, task: str) -> list[str]:
    """The subjects a fixture wrote for a task (from its dev files)."""
    names = [p.stem.removesuffix("_dev") for p in sorted((data_dir / task / "dev").glob("*.csv"))]
    assert names, f"fixture wrote no {task} subjects"
    return names


def eval_args(
    model: Path,
    data: Path,
    out: Path,
    *extra: str,
    subjects: Mapping[str, Sequence[str]] | None = None,
    tasks: Sequence[str] = (),
) -> list[str]:
    """`eval` of `model` on `data` into `out`, no progress bars: the task -> subjects of `subjects`, or
    every subject the data folder holds for each of `tasks`."""
    chosen = dict(subjects or {}) | {task: subjects_in(data, task) for task in tasks}
    assert chosen, "name the subjects or the tasks to score"
    return [
        "eval",
        "--model",
        str(model),
        "--data-dir",
        str(data),
        "--tasks",
        ",".join(chosen),
        "--subjects",
        ",".join(f"{task}/{name}" for task, names in chosen.items() for name in names),
        "--output-dir",
        str(out),
        "--no-progress",
        *extra,
    ]


def run_dirs(out: Path) -> list[Path]:
    """Every run directory under `out` (each has its config.json from the start)."""
    return sorted(p.parent for p in out.glob("*/config.json"))


def run_dirs_by_task(out: Path) -> dict[str, Path]:
    """task -> its single run directory under `out`."""
    dirs: dict[str, Path] = {}
    for run_dir in run_dirs(out):
        task = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["task"]
        assert task not in dirs, f"two run dirs for {task} under {out}"
        dirs[task] = run_dir
    return dirs
