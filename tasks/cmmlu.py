"""CMMLU: 67 subjects, scored on test with 5 dev shots; macro-averaged ("China Specific" overlaps).

Layout: cmmlu/{dev,test}/{subject}.csv, LF, header ",Question,A,B,C,D,Answer" (first column = row index).
"""

from __future__ import annotations

from dataclasses import replace

from evalkit.types import Scheme, Task
from tasks.ceval import LM_EVAL as CEVAL_LM_EVAL
from tasks.common import CHOICES, load_task_file

_DATA, _SUBJECTS = load_task_file("cmmlu")
_HEADER = "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
_EXAMPLE = "题目：{question}" + CHOICES + "答案是："

# haonan-li/CMMLU src/mp_utils.py (format_example, gen_prompt) + src/hf_causal_model.py @ d6e7b71.
# Length: if len(enc(header)) + len(enc(query)) > 2048 the prompt is the query alone; else, while the
# shots' separately encoded lengths sum to >= 2048 - that, every shot of the longest length is dropped.
OFFICIAL = Scheme(
    name="official",
    header=_HEADER,
    example=_EXAMPLE,
    shot_answer="{letter}\n\n",
    answer_cue="答案是：",
    letter_rule="in_context",
    aggregation="macro",
    length_policy="drop_longest",
    max_tokens=2048,
    source="haonan-li/CMMLU src/mp_utils.py + src/hf_causal_model.py @ d6e7b71",
)

# haonan-li/CMMLU @ 0293725 (before 0b27e9f "update ABCD token mapping"): the same prompt code, with
# the letters read as tokenizer("A").input_ids[-1] and the tokenizer's default BOS.
BAICHUAN = replace(
    OFFICIAL,
    name="baichuan",
    letter_rule="standalone",
    source="haonan-li/CMMLU src/mp_utils.py + src/hf_causal_model.py @ 0293725",
)

# EleutherAI/lm-evaluation-harness lm_eval/tasks/cmmlu: the C-Eval layout ("答案：", no "题目："),
# doc_to_text "{{Question.strip()}}\nA. {{A}}...\n答案：", first_n dev shots, " " + letter + "\n\n".
LM_EVAL = replace(
    CEVAL_LM_EVAL,
    header=_HEADER,
    source="EleutherAI/lm-evaluation-harness lm_eval/tasks/cmmlu/_default_template_yaml + "
    "_generate_configs.py",
)

CMMLU = Task(
    name="cmmlu",
    title="CMMLU",
    subjects=_SUBJECTS,
    eval_split="test",
    shot_split="dev",
    splits=("dev", "test"),
    local_path="{split}/{subject}.csv",
    csv_header=("", "Question", "A", "B", "C", "D", "Answer"),
    hub_id="haonan-li/cmmlu",
    hub_splits={"dev": "dev", "test": "test"},
    categories=tuple(_DATA["categories"]),
    extra_groups=tuple(_DATA["extra_groups"]),
    labeled_splits=("dev", "test"),
    id_column="",
    schemes={s.name: s for s in (OFFICIAL, BAICHUAN, LM_EVAL)},
)
