"""AGIEval and Gaokao (PROTOCOL §5) on the real files: counts, the derived split, and prompt bytes equal to
constructions written here from PROTOCOL §5 and, for AGIEval `official`, from upstream's dataset_loader."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import random

import pytest

from evalkit.questions.data import load_task_data
from evalkit.questions.prompts import build_prompts
from evalkit.types import EvalkitError
from tasks import get_task

# the data README's single4 counts (and COUNTS.tsv's test_single4 rows)
AGIEVAL_SINGLE4 = {
    "gaokao-biology": 210,
    "gaokao-chemistry": 206,
    "gaokao-chinese": 246,
    "gaokao-english": 306,
    "gaokao-geography": 199,
    "gaokao-history": 235,
    "gaokao-mathqa": 344,
    "gaokao-physics": 165,
    "jec-qa-ca": 533,
    "jec-qa-kd": 479,
    "logiqa-en": 651,
    "logiqa-zh": 651,
    "sat-en": 203,
    "sat-en-without-passage": 203,
    "sat-math": 220,
}
GAOKAO_SINGLE4 = {
    "2010-2013_English_MCQs": 105,
    "2010-2022_Biology_MCQs": 150,
    "2010-2022_Chemistry_MCQs": 124,
    "2010-2022_Chinese_Lang_and_Usage_MCQs": 44,
    "2010-2022_History_MCQs": 287,
    "2010-2022_Math_I_MCQs": 214,
    "2010-2022_Math_II_MCQs": 218,
    "2010-2022_Physics_MCQs": 41,
    "2010-2022_Political_Science_MCQs": 320,
}
# upstream src/dataset_loader.py's language lists (the subsets kept here)
ENGLISH = {"logiqa-en", "sat-math", "sat-en", "sat-en-without-passage", "gaokao-english"}
NAMES = {"gaokao-history": "高考历史", "sat-en-without-passage": "SAT英语", "logiqa-zh": "公务员"}
SAMPLE = {  # scheme -> subsets sampled: zh and en, a passage, a blanked passage, 3-shot and 1-shot caps
    "agieval": [
        "gaokao-history",
        "gaokao-chinese",
        "gaokao-geography",
        "logiqa-zh",
        "sat-en-without-passage",
    ],
    "gaokao": ["2010-2013_English_MCQs", "2010-2022_Math_I_MCQs", "2010-2022_Chinese_Lang_and_Usage_MCQs"],
}
BYTES = lambda text: len(text.encode()) // 3  # noqa: E731  a token count that makes the length rules act


def _load(task_name: str, scheme_name: str, data_dir, subjects, limit=None):
    task = get_task(task_name)
    scheme = task.schemes[scheme_name]
    return task, scheme, load_task_data(task, data_dir, None, subjects, limit, scheme.shots, scheme)


@pytest.mark.parametrize("task_name,expected", [("agieval", AGIEVAL_SINGLE4), ("gaokao", GAOKAO_SINGLE4)])
def test_single4_counts_equal_the_data_readme(task_name, expected, shared_data):
    data = load_task_data(get_task(task_name), shared_data, None, None, None, 0)
    assert {d.subject.name: len(d.questions) for d in data} == expected
    assert sum(expected.values()) == {"agieval": 4851, "gaokao": 1503}[task_name]


def _rank(benchmark: str, subset: str, row: int) -> str:
    return hashlib.sha256(f"evalkit:baichuan-split:v1:{benchmark}:{subset}:{row}".encode()).hexdigest()


@pytest.mark.parametrize(
    "task_name,subset,pool",
    [
        ("agieval", "gaokao-history", [13, 87, 99, 205, 209]),
        ("gaokao", "2010-2013_English_MCQs", [18, 63, 76, 79, 100]),
    ],
)
def test_the_split_rule_reproduces_the_protocol_pools(task_name, subset, pool, shared_data):
    _, _, (data,) = _load(task_name, "baichuan", shared_data, [subset])
    rows = [int(q.id.rsplit("/", 1)[1]) for q in data.shots]
    assert rows == pool
    scored = [int(q.id.rsplit("/", 1)[1]) for q in data.questions]
    assert scored == sorted(scored) and not set(scored) & set(pool)
    assert len(scored) + 5 == {"agieval": AGIEVAL_SINGLE4, "gaokao": GAOKAO_SINGLE4}[task_name][subset]
    ranks = sorted(rows + scored, key=lambda row: _rank(task_name, subset, row))  # the rule, written out
    assert sorted(ranks[:5]) == pool


def test_baichuan_shots_are_shuffled_per_question_as_protocol_says(shared_data):
    task, scheme, (data,) = _load("agieval", "baichuan", shared_data, ["gaokao-history"], 1)
    pool = list(data.shots)
    random.Random(f"1234/{data.questions[0].id}").shuffle(pool)
    assert data.questions[0].id == "agieval/gaokao-history/test/0"
    assert [int(q.id.rsplit("/", 1)[1]) for q in pool] == [87, 99, 13, 205, 209]


def test_baichuan_leaves_jec_qa_out_unless_named(shared_data):
    names = [d.subject.name for d in _load("agieval", "baichuan", shared_data, None, 1)[2]]
    assert len(names) == 13 and not any(n.startswith("jec-qa") for n in names)
    named = _load("agieval", "baichuan", shared_data, ["jec-qa-ca"], 1)[2]
    assert [d.subject.name for d in named] == ["jec-qa-ca"]


# ---------------------------------------------------------------- PROTOCOL §5 written out
def _raw_rows(shared_data, task_name: str, subset: str) -> list[dict]:
    if task_name == "agieval":
        lines = (shared_data / "agieval/data/v1" / f"{subset}.jsonl").read_text(encoding="utf-8").split("\n")
        return [json.loads(line) for line in lines if line.strip()]
    path = shared_data / "gaokao/Data/Objective_Questions" / f"{subset}.json"
    return json.loads(path.read_text(encoding="utf-8"))["example"]


def _protocol_baichuan(task_name: str, subset: str, name: str, row: dict, shots: list[dict]) -> str:
    """§5.3: header, "\\n" + each shot, "\\n" + the query; shots dropped from the end while > 2048."""

    def example(r: dict) -> str:
        if task_name == "gaokao":
            return r["question"].strip() + "\n答案："
        passage = r["passage"] + "\n" if r["passage"] else ""
        return passage + r["question"] + "\n" + "\n".join(r["options"]) + "\n答案："

    def gold(r: dict) -> str:
        label = r["label"] if task_name == "agieval" else r["answer"]
        return label[0] if isinstance(label, list) else label

    header = f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n"
    k = len(shots)
    while True:
        prompt = header + "".join("\n" + example(s) + gold(s) for s in shots[:k]) + "\n" + example(row)
        if k == 0 or BYTES(prompt) <= 2048:
            return prompt
        k -= 1


@pytest.mark.parametrize("task_name", ["agieval", "gaokao"])
def test_baichuan_prompts_equal_protocol(task_name, shared_data):
    for subset in SAMPLE[task_name]:
        task, scheme, (data,) = _load(task_name, "baichuan", shared_data, [subset], 3)
        raw = _raw_rows(shared_data, task_name, subset)
        prompts = build_prompts(scheme, data, BYTES, 5, 1234)
        for prompt in prompts:
            pool = list(data.shots)
            random.Random(f"1234/{prompt.question.id}").shuffle(pool)
            shots = [raw[int(q.id.rsplit("/", 1)[1])] for q in pool]
            row = raw[int(prompt.question.id.rsplit("/", 1)[1])]
            name = NAMES.get(subset, task.subject(subset).name_zh)
            assert prompt.text == _protocol_baichuan(task_name, subset, name, row, shots), prompt.question.id


def test_gaokao_official_prompts_equal_protocol(shared_data):
    prefixes = json.loads((shared_data / "gaokao/Bench/Obj_Prompt.json").read_text(encoding="utf-8"))
    prefix = {e["keyword"]: e["prefix_prompt"] for e in prefixes["examples"]}
    for subset in SAMPLE["gaokao"]:
        _, scheme, (data,) = _load("gaokao", "official", shared_data, [subset], 3)
        raw = _raw_rows(shared_data, "gaokao", subset)
        for prompt in build_prompts(scheme, data, BYTES, scheme.shots, 1234):
            row = raw[int(prompt.question.id.rsplit("/", 1)[1])]
            assert prompt.text == prefix[subset] + row["question"].strip() + "\n【答案】"
            assert prompt.shots_used == 0


def _upstream_agieval(shared_data, dataset_name: str, line: dict, n_shot: int) -> str:
    """microsoft/AGIEval src/dataset_loader.py (combine_prompt, concat_prompt, convert_few_shot), few-shot,
    completion mode, end_of_example "<END>\\n" (run_prediction.py), re-written: the prompt of `line`."""
    import pandas as pd

    path = shared_data / "agieval/data/few_shot_prompts.csv"
    skip_passage = dataset_name == "sat-en-without-passage"
    column = "sat-en" if skip_passage else dataset_name
    context_row = [0, 1, 3, 5, 7, 9]
    raw = pd.read_csv(path, header=0, skiprows=lambda x: x not in context_row, keep_default_na=False)
    contexts = [ast.literal_eval(cell) for cell in list(raw[column]) if cell]
    english = dataset_name in ENGLISH
    demos = []
    for idx, con in enumerate(contexts):
        passage = con["passage"] if con["passage"] is not None and not skip_passage else ""
        options = con["options"] if con["options"] is not None else ""
        label = con["label"] if con["label"] is not None else ""
        if english:
            text = f"Problem {idx + 1}.   " + passage + " " + con["question"] + "\n"
            text += "Choose from the following options:    " + " ".join(options) + "\n"
            text += f"The answer is therefore {label}"
        else:
            text = f"问题 {idx + 1}.   " + passage + " " + con["question"] + "\n"
            text += "从以下选项中选择:    " + " ".join(options) + "\n" + f"答案是 {label}"
        demos.append(text + "\n")
    header = (
        "Here are the answers for the problems in the exam.\n"
        if english
        else "以下是考试中各个问题的答案。\n"
    )
    demo = header + "".join(d + "<END>\n" for d in demos[:n_shot])
    passage = line["passage"] if line["passage"] is not None else ""
    if english:
        query = f"Problem {n_shot + 1}.   " + passage + " " + line["question"] + "\n"
        query += "Choose from the following options:    " + " ".join(line["options"]) + "\n"
        return demo + query + "The answer is therefore"
    query = f"问题 {n_shot + 1}.   " + passage + " " + line["question"] + "\n"
    return demo + query + "从以下选项中选择:    " + " ".join(line["options"]) + "\n" + "答案是"


# PROTOCOL §5.2's per-subset counts (upstream's 2048 cl100k-token cut)
OFFICIAL_SHOTS = {"gaokao-chinese": 1, "gaokao-english": 3, "logiqa-en": 3, "logiqa-zh": 3, "sat-en": 3}


def test_agieval_official_prompts_equal_upstream_dataset_loader(shared_data):
    subsets = [*SAMPLE["agieval"], "sat-en", "gaokao-english", "jec-qa-kd"]
    for subset in subsets:
        _, scheme, (data,) = _load("agieval", "official", shared_data, [subset], 2)
        raw = _raw_rows(shared_data, "agieval", subset)
        expected_shots = OFFICIAL_SHOTS.get(subset, 3 if subset == "sat-en-without-passage" else 5)
        for prompt in build_prompts(scheme, data, BYTES, scheme.shots, 1234):
            row = raw[int(prompt.question.id.rsplit("/", 1)[1])]
            assert prompt.shots_used == expected_shots, subset
            assert prompt.text == _upstream_agieval(shared_data, subset, row, expected_shots), (
                prompt.question.id
            )


def test_agieval_list_labels_print_as_upstream(shared_data):
    _, scheme, (data,) = _load("agieval", "official", shared_data, ["jec-qa-ca"], 1)
    text = build_prompts(scheme, data, BYTES, 5, 1234)[0].text
    assert "答案是 ['" in text  # a list label keeps its brackets, as str.format prints it


def test_points_aggregation_weights_files_by_their_points():
    from builders import answers

    from evalkit.stats.metrics import aggregate

    task = get_task("gaokao")
    english, math = "2010-2013_English_MCQs", "2010-2022_Math_I_MCQs"  # 1 and 5 points a question
    results = answers("gaokao", english, right=4, total=4, split="test") + answers(
        "gaokao", math, right=0, total=4, split="test"
    )
    summary = aggregate(task, "points", results, also=("macro", "micro"))
    assert summary.overall.accuracy == pytest.approx(4 * 1 / (4 * 1 + 4 * 5))
    assert summary.groups["Average (macro)"].accuracy == pytest.approx(0.5)
    assert summary.groups["Average (micro)"].accuracy == pytest.approx(0.5)


def test_json_layouts_need_a_data_dir():
    with pytest.raises(EvalkitError, match=r"^AGIEval needs --data-dir"):
        load_task_data(get_task("agieval"), None)


def test_a_malformed_json_line_names_file_and_line(tmp_path):
    folder = tmp_path / "agieval/data/v1"
    folder.mkdir(parents=True)
    good = {"passage": None, "question": "q", "options": ["(A)a", "(B)b", "(C)c", "(D)d"], "label": "A"}
    (folder / "sat-math.jsonl").write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(EvalkitError, match=r"sat-math.jsonl: line 2 is not valid JSON"):
        load_task_data(
            get_task("agieval"),
            tmp_path,
            None,
            ["sat-math"],
            None,
            0,
            get_task("agieval").schemes["baichuan"],
        )


def _saved(task_name: str, scheme: str, model: str, rights: dict[str, int]):
    from builders import answers, saved_run

    from evalkit.types import RunConfig

    config = RunConfig(
        model=model, task=task_name, scheme=scheme, shots=get_task(task_name).schemes[scheme].shots
    )
    results = [
        q for subset, right in rights.items() for q in answers(task_name, subset, right, 4, split="test")
    ]
    return saved_run(config, results)


def test_report_csv_html_and_compare_carry_the_new_tasks(tmp_path):
    from evalkit.report.csv import write_csv
    from evalkit.report.html import write_html
    from evalkit.report.tables_markdown import to_markdown
    from evalkit.stats.compare import compare
    from evalkit.store.records import ReportRun
    from tasks.references import published_rows

    rights = {
        "agieval": {"gaokao-history": 3, "sat-math": 1},
        "gaokao": {"2010-2013_English_MCQs": 4, "2010-2022_Math_I_MCQs": 0},
    }
    runs = []
    for task_name, scheme in (("agieval", "baichuan"), ("gaokao", "official")):
        saved = _saved(task_name, scheme, "/models/Baichuan-7B", rights[task_name])
        runs.append(ReportRun(saved.result, get_task(task_name), tmp_path, saved.questions))
    text = to_markdown(runs, published_rows())
    assert "## AGIEval" in text and "## Gaokao" in text and "|  zh  |  en  |  Average (micro)  |" in text
    assert "Baichuan-7B (published) " in text and "Baichuan-7B (published, Baichuan2-README.md)" in text
    assert "unpublished" in text and "single4 questions only" in text and "length limit" in text
    assert "weighted by their total points" in text
    write_csv(runs, tmp_path / "all.csv", published_rows())
    assert "agieval" in (tmp_path / "all.csv").read_text(encoding="utf-8")
    page = write_html(runs, tmp_path / "index.html", published_rows())
    assert "Gaokao" in page.path.read_text(encoding="utf-8")
    a = _saved("gaokao", "official", "m", rights["gaokao"])
    b = _saved("gaokao", "official", "m", {"2010-2013_English_MCQs": 0, "2010-2022_Math_I_MCQs": 4})
    result = compare([a], [b], get_task, max_drop=1.0)
    # points-weighted: B loses English (1 point a question) and wins Math (5): a gain, where micro sees none
    assert result.passed
    assert result.benchmarks["gaokao"].overall.delta == pytest.approx((20 - 4) / 24)


def test_shots_default_to_the_schemes_and_max_length_is_a_recorded_setting():
    from evalkit.run.sweep import task_config
    from evalkit.types import RunConfig

    base = RunConfig(model="m", task="")
    gaokao = task_config(get_task("gaokao"), base, None, scheme_shots=True)
    assert gaokao.shots == 0 and gaokao.task_file_hash is None
    mmlu = task_config(get_task("mmlu"), base, None, scheme_shots=True)
    assert mmlu.config_hash() == "4e50a9a2620b"  # the golden hash: "the scheme's" count is 5 there
    asked = dataclasses.replace(base, scheme="baichuan", max_length=4096)
    longer = task_config(get_task("agieval"), asked, None, scheme_shots=True)
    assert (
        longer.max_length == 4096
        and longer.config_hash() != dataclasses.replace(longer, max_length=None).config_hash()
    )
    with pytest.raises(EvalkitError, match="--max-length sets the limit of schemes that drop shots"):
        task_config(get_task("agieval"), dataclasses.replace(base, max_length=4096), None, scheme_shots=True)
