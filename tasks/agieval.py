"""AGIEval v1 (microsoft/AGIEval b1187aa): the 15 subsets with single4 questions (4,851), PROTOCOL §5.

Declared as data (tasks/declarations/agieval.json, the --task-file format): layout, the en / zh templates
of upstream's completion-mode few-shot prompt (`official`, shots from few_shot_prompts.csv, 1 / 3 / 5 per
subset as upstream's 2048 cl100k-token cut leaves them), and Baichuan's C-Eval-like layout on a seeded
split (`baichuan`). Language follows upstream's english_qa_datasets / chinese_qa_datasets lists.
"""

from __future__ import annotations

from tasks.common import DECLARATIONS, builtin_declaration

AGIEVAL = builtin_declaration(DECLARATIONS / "agieval.json")
