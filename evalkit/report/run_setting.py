"""The setting a reader needs beside AGIEval / Gaokao / declared-task figures (PROTOCOL §5): scheme, where the
shots came from, subsets scored and left out, the length limit. Those figures depend on all of them."""

from __future__ import annotations

from evalkit.store.records import RunResult
from evalkit.types import Task

LENGTH_NOTES = {"left_truncate": "none (cut from the left at the model's context)", "none": "none"}
SHOT_SOURCES = {
    "split": "shots from the shot split",
    "file": "shots from the few-shot file",
    "derived": "shots from a seeded split",
    "none": "zero-shot",
}


def run_setting_note(label: str, task: Task, result: RunResult) -> str:
    """Scheme, subsets and length limit of a run (PROTOCOL §5: the figures depend on all three)."""
    scheme = result.scheme
    subsets = list(result.subjects)
    left_out = [s.name for s in task.subjects if s.name not in result.subjects]
    limit = LENGTH_NOTES.get(scheme.length_policy) or f"{scheme.max_tokens} tokens ({scheme.length_policy})"
    also = "".join(f"; Average ({a}) beside it" for a in scheme.also)
    return (
        f"{label}: scheme {scheme.name} ({SHOT_SOURCES[scheme.shot_source]}), {len(subsets)} subsets"
        f"{' (left out: ' + ', '.join(left_out) + ')' if left_out else ''}, length limit {limit}, "
        f"{'single4 questions only' if task.keep == 'single4' else 'every row'}{also}."
    )
