"""The `list` subcommand's output: a task's subjects, categories and row counts, aligned by display width."""

from __future__ import annotations

from collections.abc import Sequence

from wcwidth import wcswidth

from evalkit.types import Task


def _width(text: str) -> int:
    """Terminal columns of `text`: two per CJK character (wcwidth); len() where wcwidth cannot tell."""
    width = wcswidth(text)
    return len(text) if width < 0 else width


def _aligned(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Rows of cells padded to the display width of each column (two spaces apart), trailing blanks cut."""
    widths = [max(_width(row[j]) for row in rows) for j in range(len(right))]
    lines = []
    for row in rows:
        cells = []
        for cell, width, right_aligned in zip(row, widths, right, strict=True):
            pad = " " * (width - _width(cell))
            cells.append(pad + cell if right_aligned else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


def _shot_sources(task: Task) -> str:
    """Where each scheme's shots come from: the shot split for the CSV benchmarks, else per scheme."""
    sources = {
        name: {
            "split": task.shot_split,
            "file": scheme.shot_file,
            "derived": f"a seeded split ({scheme.pool_size} rows a subject)",
            "none": "nowhere (zero-shot)",
        }[scheme.shot_source]
        for name, scheme in task.schemes.items()
    }
    if len(set(sources.values())) == 1:
        return next(iter(sources.values()))
    return ", ".join(f"{where} ({name})" for name, where in sources.items())


def task_listing(task: Task, counts: dict[str, dict[str, int]] | None = None) -> str:
    """What `list` prints for one task: a summary line, then one aligned row per subject (name, Chinese
    name where the benchmark has them, categories, rows per split where `counts` (split -> subject ->
    data rows) is given) and a total row: the subjects and the rows of each split."""
    counts = counts or {}
    splits = list(counts)
    chinese = any(subject.name_zh for subject in task.subjects)
    head = ["subject", *(["name (zh)"] if chinese else []), "categories", *splits]
    rows = [head]
    for subject in task.subjects:
        rows.append(
            [
                subject.name,
                *([subject.name_zh] if chinese else []),
                ", ".join(subject.categories),
                *(str(counts[split].get(subject.name, 0)) for split in splits),
            ]
        )
    rows.append(
        [
            f"total: {len(task.subjects)} subjects",
            *([""] if chinese else []),
            "",
            *(str(sum(counts[split].values())) for split in splits),
        ]
    )
    right = [False] * (len(head) - len(splits)) + [True] * len(splits)
    summary = (
        f"{task.name} ({task.title}): {len(task.subjects)} subjects; scored split {task.eval_split}, "
        f"shots from {_shot_sources(task)}; schemes: {', '.join(task.schemes)}"
    )
    if task.keep != "all":
        summary += f"; {task.keep} rows only"
    if task.declaration_hash:
        summary += f"; declared (--task-file, sha256 {task.declaration_hash})"
    return "\n".join([summary, *("  " + line for line in _aligned(rows, right))])
