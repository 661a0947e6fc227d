"""MMLU (hendrycks test): 57 subjects, scored on test with 5 dev shots; micro-averaged.

Layout: mmlu/{dev,val,test}/{subject}_{split}.csv, no header, columns question,A,B,C,D,answer.
"""

from __future__ import annotations

from dataclasses import replace

from evalkit.types import Scheme, Task
from tasks.common import CHOICES, load_task_file

_DATA, _SUBJECTS = load_task_file("mmlu")
_EXAMPLE = "{question}" + CHOICES + "Answer:"

# hendrycks/test evaluate.py / evaluate_flan.py / evaluate_hf.py @ 4450500: the header template is
# "about {}." filled with format_subject(), which prefixes every word with a space -> TWO spaces
# ("about  abstract algebra."). Shots: dev rows 0..k-1; while the tokenized prompt (tokenizer
# defaults, so with BOS where the tokenizer adds one) is > 2048 tokens, k -= 1.
OFFICIAL = Scheme(
    name="official",
    header="The following are multiple choice questions (with answers) about {subject_spaced}.\n\n",
    example=_EXAMPLE,
    shot_answer=" {letter}\n\n",
    answer_cue="Answer:",
    letter_rule="in_context",
    aggregation="micro",
    length_policy="drop_last",
    max_tokens=2048,
    source="hendrycks/test evaluate.py + evaluate_flan.py @ 4450500",
)

# baichuan-inc/Baichuan-7B evaluation/evaluate_mmlu.py @ f9dc32d: the hendrycks prompt and length
# rule byte for byte; tokenizer loaded with add_bos_token=False; letters tokenizer("A").input_ids[-1].
BAICHUAN = replace(
    OFFICIAL,
    name="baichuan",
    letter_rule="standalone",
    bos="never",
    source="baichuan-inc/Baichuan-7B evaluation/evaluate_mmlu.py @ f9dc32d",
)

# EleutherAI/lm-evaluation-harness lm_eval/tasks/mmlu/default: description "...about {subject with
# spaces}.\n\n" (ONE space), doc_to_text "{{question.strip()}}\nA. {{choices[0]}}...\nAnswer:",
# fewshot sampler first_n over dev, shot = text + " " + letter + "\n\n" (target/fewshot delimiters).
LM_EVAL = Scheme(
    name="lm-eval",
    header="The following are multiple choice questions (with answers) about {subject_en}.\n\n",
    example=_EXAMPLE,
    shot_answer=" {letter}\n\n",
    answer_cue="Answer:",
    letter_rule="in_context",
    aggregation="micro",
    bos="never",
    length_policy="left_truncate",
    max_tokens=2048,
    strip_text=True,
    source=(
        "EleutherAI/lm-evaluation-harness lm_eval/tasks/mmlu/default/_default_template_yaml + api/samplers.py"
    ),
)

MMLU = Task(
    name="mmlu",
    title="MMLU",
    subjects=_SUBJECTS,
    eval_split="test",
    shot_split="dev",
    splits=("dev", "val", "test"),
    local_path="{split}/{subject}_{split}.csv",
    csv_header=None,
    hub_id="cais/mmlu",
    hub_splits={"dev": "dev", "val": "validation", "test": "test"},
    categories=tuple(_DATA["categories"]),
    extra_groups=tuple(_DATA["extra_groups"]),
    labeled_splits=("dev", "val", "test"),
    schemes={s.name: s for s in (OFFICIAL, BAICHUAN, LM_EVAL)},
)
