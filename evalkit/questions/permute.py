"""`--permute cyclic`: every question scored under the four cyclic rotations of its options.

Rotation k puts option (j + k) mod 4 at letter j, so the gold letter moves with its text (gold index g
becomes (g - k) mod 4). Rotation 0 is the question as given and keeps its id: its line in questions.jsonl
is the plain run's line. Rotations 1-3 get the id `<id>@rot<k>` (one line each, so resume, shard merges and
paired comparisons keep working on ids), but everything that seeds shots reads `base_id`: the four
rotations of a question share their shots, so header and shots stay one shared prefix and only the
suffix tokens are multiplied. The rotations of a question are consecutive in the subject's list.

Only tasks whose four options are separate fields can be rotated (`Task.options_separate`): options
embedded in the question text (Gaokao) or carrying their own "(A)" prefixes (AGIEval) are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import get_args

from evalkit.types import LETTERS, EvalkitError, Permute, Question, SubjectData, Task, unknown

ROTATION_MARK = "@rot"  # ids of rotations 1-3: "<question id>@rot<k>"
ROTATIONS = 4


def rotated_id(question_id: str, k: int) -> str:
    """The id of rotation k of a question (rotation 0: the question's own id)."""
    return question_id if k == 0 else f"{question_id}{ROTATION_MARK}{k}"


def base_id(question_id: str) -> str:
    """The question's own id, whatever rotation `question_id` names (it seeds shots, groups rotations)."""
    base, mark, _ = question_id.rpartition(ROTATION_MARK)
    return base if mark else question_id


def rotation_of(question_id: str) -> int:
    """Which rotation an id names (0 for a question's own id)."""
    base, mark, k = question_id.rpartition(ROTATION_MARK)
    return int(k) if mark and k.isdigit() else 0


def rotate(question: Question, k: int) -> Question:
    """Rotation k of a question: option (j + k) mod 4 at letter j; the gold letter follows its text."""
    choices = tuple(question.choices[(j + k) % ROTATIONS] for j in range(ROTATIONS))
    answer = question.answer
    if answer is not None:
        answer = LETTERS[(LETTERS.index(answer) - k) % ROTATIONS]
    return dataclasses.replace(question, id=rotated_id(question.id, k), choices=choices, answer=answer)


def permute_subjects(task: Task, data: Sequence[SubjectData], permute: Permute) -> list[SubjectData]:
    """The subjects' questions as scored under `permute`: as given ("none"), or each question followed by
    its rotations 1-3 ("cyclic"). Refused where options are not separate fields or answers are unknown."""
    if permute not in get_args(Permute):
        raise unknown("permutation", permute, get_args(Permute))
    if permute == "none":
        return list(data)
    if not task.options_separate:
        raise EvalkitError(
            f"--permute {permute}: {task.title}'s options are not separate fields (they are part of the "
            "question text or carry their own labels), so they cannot be rotated"
        )
    permuted = []
    for subject_data in data:
        unlabeled = next((q for q in subject_data.questions if q.answer is None), None)
        if unlabeled is not None:
            raise EvalkitError(
                f"--permute {permute}: question {unlabeled.id} has no gold answer; rotations are scored "
                "against the gold letter (use a labeled split)"
            )
        rotations = tuple(rotate(q, k) for q in subject_data.questions for k in range(ROTATIONS))
        permuted.append(dataclasses.replace(subject_data, questions=rotations))
    return permuted
