"""GAOKAO-Bench (OpenLMLab 6dbb24f): the single4 items of the 9 objective files that have any (1,503).

Declared as data (tasks/declarations/gaokao.json, the --task-file format): options live in the question
text; `official` is GAOKAO-Bench's per-file prompt prefix, zero-shot, the letter read right after 【答案】,
weighted by points as upstream; `baichuan` is Baichuan's C-Eval-like layout on a seeded split (§5.3).
"""

from __future__ import annotations

from tasks.common import DECLARATIONS, builtin_declaration

GAOKAO = builtin_declaration(DECLARATIONS / "gaokao.json")
