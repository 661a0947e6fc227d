"""The benchmark registry: one module per benchmark (layout + schemes) over its data file in tasks/data.

Adding a benchmark = one module + its data + one line in TASKS + tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from evalkit.types import Subject, Task, unknown

DATA_DIR = Path(__file__).parent / "data"
CHOICES = "\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n"  # the choice block every scheme here shares


def load_task_file(benchmark: str) -> tuple[dict, tuple[Subject, ...]]:
    """The converted data file of a benchmark (tasks/data/<benchmark>.json) and its subjects."""
    data = json.loads((DATA_DIR / f"{benchmark}.json").read_text(encoding="utf-8"))
    subjects = tuple(
        Subject(s["name"], s["name_en"], s["name_zh"], tuple(s["categories"])) for s in data["subjects"]
    )
    return data, subjects


# the task modules use load_task_file and CHOICES, so they are imported after them
from tasks.ceval import CEVAL  # noqa: E402
from tasks.cmmlu import CMMLU  # noqa: E402
from tasks.mmlu import MMLU  # noqa: E402

TASKS: dict[str, Task] = {task.name: task for task in (CEVAL, MMLU, CMMLU)}


def get_task(name: str) -> Task:
    """The registered task called `name`; unknown names get a did-you-mean error."""
    if name in TASKS:
        return TASKS[name]
    raise unknown("task", name, sorted(TASKS))
