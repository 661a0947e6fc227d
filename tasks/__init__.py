"""The benchmark registry: one module (or declaration file) per benchmark over its data in tasks/data.

Adding a benchmark = one module or declaration + its data + one line in TASKS + tests. User benchmarks
declared with --task-file join the registry through `register_task_file`.
"""

from __future__ import annotations

from evalkit.types import EvalkitError, Scheme, Task, unknown
from tasks.agieval import AGIEVAL
from tasks.ceval import CEVAL
from tasks.cmmlu import CMMLU
from tasks.common import CHOICES, DATA_DIR, load_task_file  # noqa: F401  (names this package always exported)
from tasks.gaokao import GAOKAO
from tasks.mmlu import MMLU

TASKS: dict[str, Task] = {task.name: task for task in (CEVAL, MMLU, CMMLU, AGIEVAL, GAOKAO)}
DEFAULT_TASKS = ("ceval", "mmlu", "cmmlu")  # the Baichuan-13B README's three; `--tasks all` adds the rest
BUILTIN = frozenset(TASKS)


def get_task(name: str) -> Task:
    """The registered task called `name`; unknown names get a did-you-mean error."""
    if name in TASKS:
        return TASKS[name]
    raise unknown("task", name, sorted(TASKS))


def expand_tasks(names: list[str]) -> list[str]:
    """`all` -> every registered task (user tasks included), in registry order; other names as given."""
    out: list[str] = []
    for name in names:
        for item in TASKS if name == "all" else [name]:
            if item not in out:
                out.append(item)
    return out


def scheme_by_path(path: str) -> Scheme:
    """A declaration's `base`: "<task>/<scheme>", e.g. "ceval/official"."""
    task_name, _, scheme_name = path.partition("/")
    task = get_task(task_name)
    if scheme_name not in task.schemes:
        raise unknown(f"{task_name} scheme", scheme_name, task.schemes)
    return task.schemes[scheme_name]


def register_task_file(path: str) -> Task:
    """Read a user declaration (--task-file) and add its task to the registry."""
    from tasks.declaration import load_declaration

    task = load_declaration(path, scheme_by_path)
    if task.name in BUILTIN:
        raise EvalkitError(f"{path}: task.name {task.name!r} is a built-in task; choose another name")
    TASKS[task.name] = task
    return task
