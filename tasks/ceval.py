"""C-Eval: 52 subjects, scored on val with 5 dev shots; macro-averaged (test -> submission file).

Layout: ceval/{dev,val,test}/{subject}_{split}.csv, CRLF, header id,question,A,B,C,D,answer; dev adds
",explanation", test has no answer column.
"""

from __future__ import annotations

from evalkit.types import Scheme, Task
from tasks.common import CHOICES, load_task_file

_DATA, _SUBJECTS = load_task_file("ceval")
_EXAMPLE = "{question}" + CHOICES + "答案："
_HEADER = "以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。\n"

# hkust-nlp/ceval code/evaluator_series/evaluators/evaluator.py + llama.py @ cba65ae: no length rule.
# Upstream fills the header with the subject *file name* passed on the command line
# ("operating_system"); PROTOCOL fixes the Chinese name, as resources/tutorial.md asks.
OFFICIAL = Scheme(
    name="official",
    header=_HEADER + "\n",
    example=_EXAMPLE,
    shot_answer="{letter}\n\n",
    answer_cue="答案：",
    letter_rule="in_context",
    aggregation="macro",
    source="hkust-nlp/ceval code/evaluator_series/evaluators/evaluator.py + llama.py @ cba65ae",
)

# baichuan-inc/Baichuan-7B evaluation/evaluate_zh.py @ ab935aa (same prompt at f9dc32d): header line,
# then "\n" + shot for each shot and "\n" + query; dev shuffled anew for every question (unseeded
# upstream: we seed per question); tokenizer add_bos_token=False; letters tokenizer("A").input_ids[-1].
# Its TASK2DESC table equals subject_mapping.json except for this one name:
BAICHUAN = Scheme(
    name="baichuan",
    header=_HEADER,
    example=_EXAMPLE,
    shot_answer="{letter}",
    answer_cue="答案：",
    letter_rule="standalone",
    aggregation="macro",
    header_joiner="\n",
    shot_joiner="\n",
    query_joiner="\n",
    bos="never",
    shot_order="shuffled_per_question",
    subject_names={"mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论"},
    source="baichuan-inc/Baichuan-7B evaluation/evaluate_zh.py @ ab935aa",
)

# EleutherAI/lm-evaluation-harness lm_eval/tasks/ceval (ceval-valid): description has no "考试",
# doc_to_text "{{question.strip()}}\nA. {{A}}...\n答案：", first_n dev shots, " " + letter + "\n\n".
LM_EVAL = Scheme(
    name="lm-eval",
    header="以下是中国关于{subject_zh}的单项选择题，请选出其中的正确答案。\n\n",
    example=_EXAMPLE,
    shot_answer=" {letter}\n\n",
    answer_cue="答案：",
    letter_rule="in_context",
    aggregation="micro",
    bos="never",
    length_policy="left_truncate",
    strip_text=True,
    source="EleutherAI/lm-evaluation-harness lm_eval/tasks/ceval/_default_ceval_yaml + _generate_configs.py",
)

CEVAL = Task(
    name="ceval",
    title="C-Eval",
    subjects=_SUBJECTS,
    eval_split="val",
    shot_split="dev",
    splits=("dev", "val", "test"),
    local_path="{split}/{subject}_{split}.csv",
    csv_header=("id", "question", "A", "B", "C", "D", "answer"),
    hub_id="ceval/ceval-exam",
    hub_splits={"dev": "dev", "val": "val", "test": "test"},
    categories=tuple(_DATA["categories"]),
    extra_groups=tuple(_DATA["extra_groups"]),
    labeled_splits=("dev", "val"),
    split_headers={
        "dev": ("id", "question", "A", "B", "C", "D", "answer", "explanation"),
        "test": ("id", "question", "A", "B", "C", "D"),
    },
    id_column="id",
    schemes={s.name: s for s in (OFFICIAL, BAICHUAN, LM_EVAL)},
)
