"""The upstream sources' own prompt constructions, written out independently of evalkit.questions.prompts, for
checking evalkit's prompts on the real data files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES

from tasks import get_task


def official_prompts(task: str, shared_data, subject: str, split: str) -> list[str]:
    """The upstream scripts' own construction (pandas.read_csv + format_example/gen_prompt) with the
    NA strings of pandas 1.x, which those scripts ran on ("None" became NaN only in pandas 2.0)."""
    read = {"keep_default_na": False, "na_values": sorted(STR_NA_VALUES - {"None"})}
    name = get_task(task).subject(subject).name_zh
    if task == "mmlu":
        dev = pd.read_csv(shared_data / "mmlu" / "dev" / f"{subject}_dev.csv", header=None, **read)
        test = pd.read_csv(shared_data / "mmlu" / split / f"{subject}_{split}.csv", header=None, **read)
        fmt = "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:"
        head = "The following are multiple choice questions (with answers) about {}.\n\n".format(
            "".join(" " + w for w in subject.split("_"))
        )
        shot = "".join(fmt.format(*dev.iloc[i, :5]) + f" {dev.iloc[i, 5]}\n\n" for i in range(5))
        return [head + shot + fmt.format(*test.iloc[i, :5]) for i in range(test.shape[0])]
    if task == "ceval":
        dev = pd.read_csv(shared_data / "ceval" / "dev" / f"{subject}_dev.csv", **read)
        test = pd.read_csv(shared_data / "ceval" / split / f"{subject}_{split}.csv", **read)
        head = f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n"

        def fmt(line) -> str:
            return line["question"] + "".join(f"\n{c}. {line[c]}" for c in "ABCD") + "\n答案："

        return [
            head + "".join(fmt(dev.iloc[i]) + dev.iloc[i]["answer"] + "\n\n" for i in range(5)) + fmt(row)
            for _, row in test.iterrows()
        ]
    dev = pd.read_csv(shared_data / "cmmlu" / "dev" / f"{subject}.csv", header=0, index_col=0, **read)
    test = pd.read_csv(shared_data / "cmmlu" / split / f"{subject}.csv", header=0, index_col=0, **read)
    fmt = "题目：{}\nA. {}\nB. {}\nC. {}\nD. {}\n答案是："
    head = f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
    shot = "".join(fmt.format(*dev.iloc[i, :5]) + f"{dev.iloc[i, 5]}\n\n" for i in range(5))
    return [head + shot + fmt.format(*test.iloc[i, :5]) for i in range(test.shape[0])]


def lm_eval_prompts(task: str, shared_data: Path, subject: str, split: str) -> list[str]:
    """lm-evaluation-harness's contexts (mmlu, ceval-valid, cmmlu yaml: description + first_n dev shots
    as doc_to_text + " " + answer, joined by "\n\n"), fields read as the plain strings of its datasets."""
    read = {"keep_default_na": False, "dtype": str}
    name = get_task(task).subject(subject).name_zh
    if task == "mmlu":
        dev = pd.read_csv(shared_data / "mmlu" / "dev" / f"{subject}_dev.csv", header=None, **read)
        rows = pd.read_csv(shared_data / "mmlu" / split / f"{subject}_{split}.csv", header=None, **read)
        topic = subject.replace("_", " ")
        description = f"The following are multiple choice questions (with answers) about {topic}.\n\n"
        cue = "Answer:"
    else:
        folder = shared_data / task
        dev_path, rows_path = (
            (folder / "dev" / f"{subject}_dev.csv", folder / split / f"{subject}_{split}.csv")
            if task == "ceval"
            else (folder / "dev" / f"{subject}.csv", folder / split / f"{subject}.csv")
        )
        dev, rows = (
            pd.read_csv(path, header=0, index_col=0, **read).iloc[:, :6] for path in (dev_path, rows_path)
        )
        description = (
            f"以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n"
            if task == "ceval"
            else f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
        )
        cue = "答案："

    def doc_to_text(row) -> str:
        choices = "".join(f"\n{letter}. {row.iloc[k + 1]}" for k, letter in enumerate("ABCD"))
        return f"{row.iloc[0].strip()}{choices}\n{cue}"

    shots = [doc_to_text(dev.iloc[i]) + " " + dev.iloc[i, 5] for i in range(5)]
    return [description + "\n\n".join(shots + [doc_to_text(rows.iloc[i])]) for i in range(rows.shape[0])]
