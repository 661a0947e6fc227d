"""What the backend benchmarks share: the prompts, built exactly as the runner builds them, and what two
scorings of them agree on, printed beside each speed ratio (a fast backend that disagrees is worthless).
Imported by the scripts beside it (a script's folder is first on sys.path); evalkit must be importable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def prompts(tokenizer, task_name: str, data_dir: Path, subjects: list[str], limit: int):
    """[(subject, token ids of its prompts)] and the letter ids, under the task's official scheme."""
    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts
    from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens
    from tasks import get_task

    task = get_task(task_name)
    scheme = task.schemes["official"]
    out = []
    for data in load_task_data(task, data_dir, subjects=subjects, limit=limit):
        built = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos))
        out.append((data.subject.name, encode_prompts(tokenizer, [p.text for p in built], scheme.bos)))
    return out, letter_tokens(tokenizer, scheme.letter_rule, scheme).ids


def agreement(a: Mapping[object, Sequence[float]], b: Mapping[object, Sequence[float]]) -> str:
    """One line: how many prompts have the same top letter in both, and the largest |log-prob
    difference| over every letter of every prompt (keys of `a`, each four letter log-probs)."""
    same, worst = 0, 0.0
    for key, values in a.items():
        scores_a, scores_b = [float(x) for x in values], [float(x) for x in b[key]]
        same += max(range(len(scores_a)), key=scores_a.__getitem__) == max(
            range(len(scores_b)), key=scores_b.__getitem__
        )
        worst = max(worst, *(abs(x - y) for x, y in zip(scores_a, scores_b, strict=True)))
    return f"agreement: {same}/{len(a)} same predictions, max |log-prob difference| {worst:.2e}"
