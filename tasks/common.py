"""Shared task helpers (the task modules import this, never the tasks package: no import cycle)."""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.types import EvalkitError, Scheme, Subject, Task

DATA_DIR = Path(__file__).parent / "data"
CHOICES = "\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n"  # the choice block every CSV scheme here shares


def load_task_file(benchmark: str) -> tuple[dict, tuple[Subject, ...]]:
    """The converted data file of a benchmark (tasks/data/<benchmark>.json) and its subjects."""
    data = json.loads((DATA_DIR / f"{benchmark}.json").read_text(encoding="utf-8"))
    subjects = tuple(
        Subject(s["name"], s["name_en"], s["name_zh"], tuple(s["categories"])) for s in data["subjects"]
    )
    return data, subjects


DECLARATIONS = Path(__file__).parent / "declarations"


def builtin_declaration(path: Path) -> Task:
    """A built-in task declared in the --task-file format (no `base` scheme: it needs no registry)."""
    from tasks.declaration import load_declaration

    def no_base(name: str) -> Scheme:
        raise EvalkitError(f"built-in declarations name no base scheme, got {name!r}")

    return load_declaration(path, no_base, builtin=True)
