"""Which saved runs make a paired comparison (evalkit.stats.compare): the same task, prompts and split on
each side, and the questions both scored; anything else is refused with the reason."""

from __future__ import annotations

from collections.abc import Sequence

from evalkit.store.records import SavedRun
from evalkit.types import EvalkitError, Task

SAMPLE_IDS = 3  # question ids quoted in a mismatch error


def check_comparable(task: Task, a: SavedRun, b: SavedRun) -> None:
    """Scores from different prompts, shots or splits are not a paired comparison: refuse them."""
    ca, cb = a.result.config, b.result.config
    settings = {
        "task": (ca.task, cb.task),
        "scheme": (ca.scheme, cb.scheme),
        "letter rule": (
            ca.letter_rule or a.result.scheme.letter_rule,
            cb.letter_rule or b.result.scheme.letter_rule,
        ),
        "shots": (ca.shots, cb.shots),
        "split": (ca.split or task.eval_split, cb.split or task.eval_split),
        "answer-order permutation (--permute)": (ca.permute, cb.permute),
    }
    if a.result.scheme.shot_order == "shuffled_per_question":
        settings["shot shuffle seed"] = (ca.seed, cb.seed)
    for name, (va, vb) in settings.items():
        if va != vb:
            raise EvalkitError(
                f"cannot compare: {name} differs (A: {va!r}, B: {vb!r}); a paired comparison "
                "needs the same prompts on the same questions"
            )
    if a.result.scheme != b.result.scheme:
        raise EvalkitError(
            f"cannot compare: scheme {ca.scheme!r} was recorded with different contents in A "
            "and B (made by different evalkit versions?)"
        )
    for side, run in (("A", a), ("B", b)):
        if run.result.overall is None:
            raise EvalkitError(
                f"cannot compare: run {side} ({task.name} {ca.split or task.eval_split}) has no gold answers"
            )


def shared_ids(a: SavedRun, b: SavedRun, allow_subset: bool) -> tuple[list[str], int, int]:
    """The ids both runs scored, in A's order, and how many only A and only B scored; differing sets
    are refused unless `allow_subset`."""
    ids_a = [q.id for q in a.questions]
    ids_b = {q.id for q in b.questions}
    shared = [i for i in ids_a if i in ids_b]
    only_a, only_b = len(ids_a) - len(shared), len(ids_b) - len(shared)
    if (only_a or only_b) and not allow_subset:
        examples_a = [i for i in ids_a if i not in ids_b][:SAMPLE_IDS]
        examples_b = sorted(ids_b - set(ids_a))[:SAMPLE_IDS]
        raise EvalkitError(
            f"cannot compare: the question sets differ ({only_a} only in A, e.g. "
            f"{examples_a}; {only_b} only in B, e.g. {examples_b}); pass --allow-subset to "
            f"compare the {len(shared)} questions both scored"
        )
    if not shared:
        raise EvalkitError("cannot compare: the runs share no question")
    return shared, only_a, only_b


def pair_by_task(runs_a: Sequence[SavedRun], runs_b: Sequence[SavedRun]) -> list[tuple[SavedRun, SavedRun]]:
    """Match two sets of runs by task: each task once per set, and in both sets."""
    sides = {}
    for side, runs in (("A", runs_a), ("B", runs_b)):
        tasks = [r.result.config.task for r in runs]
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:
            raise EvalkitError(
                f"cannot compare: side {side} has several runs of {', '.join(repeated)}; give one each"
            )
        sides[side] = {r.result.config.task: r for r in runs}
    if sides["A"].keys() != sides["B"].keys():
        raise EvalkitError(
            f"cannot compare: A has tasks {sorted(sides['A'])}, B has {sorted(sides['B'])}; "
            "give the same tasks on both sides"
        )
    return [(sides["A"][t], sides["B"][t]) for t in sides["A"]]
