"""Golden prompts: every benchmark x scheme against strings written out by hand from the upstream
formats (hendrycks evaluate.py, hkust-nlp/ceval evaluator.py, CMMLU mp_utils.py, Baichuan-7B
evaluate_zh.py, lm-evaluation-harness yaml + samplers.py), plus the length policies."""

from __future__ import annotations

import dataclasses
import random

import pytest
from upstream import official_prompts

from evalkit.questions.prompts import build_prompts, letter_continuation
from evalkit.types import EvalkitError, Question, SubjectData
from tasks import get_task


def _q(qid: str, text: str, choices: tuple[str, str, str, str], answer: str | None) -> Question:
    return Question(qid, qid.split("/")[1], text, choices, answer)


def _data(task: str, subject: str, shots: list[Question], questions: list[Question]) -> SubjectData:
    return SubjectData(get_task(task).subject(subject), tuple(questions), tuple(shots))


def _no_count(text: str) -> int:
    return 0


def _build(task: str, scheme: str, data: SubjectData, n_shots: int, count=_no_count, seed: int = 1234):
    return build_prompts(get_task(task).schemes[scheme], data, count, n_shots=n_shots, seed=seed)


MMLU = _data(
    "mmlu",
    "abstract_algebra",
    shots=[
        _q("mmlu/abstract_algebra/dev/0", "Find all c in Z_3.", ("0", "1", "2", "3"), "B"),
        _q(
            "mmlu/abstract_algebra/dev/1",
            "Statement 1 | x.\nStatement 2 | y.",
            ("True, True", "False, False", "True, False", "False, True"),
            "D",
        ),
    ],
    questions=[_q("mmlu/abstract_algebra/test/0", " What is 2+2? ", ("3", "4", "5", "6"), "B")],
)

MMLU_OFFICIAL = (
    "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
    "Find all c in Z_3.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Statement 1 | x.\nStatement 2 | y.\nA. True, True\nB. False, False\n"
    "C. True, False\nD. False, True\nAnswer: D\n\n"
    " What is 2+2? \nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
)


def test_mmlu_official_has_two_spaces_and_keeps_text_unstripped():
    (prompt,) = _build("mmlu", "official", MMLU, 2)
    assert prompt.text == MMLU_OFFICIAL
    assert prompt.shots_used == 2 and prompt.question is MMLU.questions[0]


def test_mmlu_baichuan_is_the_official_prompt():
    assert _build("mmlu", "baichuan", MMLU, 2)[0].text == MMLU_OFFICIAL


def test_mmlu_lm_eval_one_space_and_stripped_question():
    assert _build("mmlu", "lm-eval", MMLU, 2)[0].text == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Statement 1 | x.\nStatement 2 | y.\nA. True, True\nB. False, False\n"
        "C. True, False\nD. False, True\nAnswer: D\n\n"
        "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )


CEVAL = _data(
    "ceval",
    "accountant",
    shots=[
        _q("ceval/accountant/dev/0", "甲公司的说法正确的是____。", ("一", "二", "三", "四"), "A"),
        _q("ceval/accountant/dev/1", "下列，错误的是", ("5%", "10%", "15%", "20%"), "C"),
    ],
    questions=[_q("ceval/accountant/val/0", "税率是多少？ ", ("1", "2", "3", "4"), "D")],
)


def test_ceval_official():
    assert _build("ceval", "official", CEVAL, 2)[0].text == (
        "以下是中国关于注册会计师考试的单项选择题，请选出其中的正确答案。\n\n"
        "甲公司的说法正确的是____。\nA. 一\nB. 二\nC. 三\nD. 四\n答案：A\n\n"
        "下列，错误的是\nA. 5%\nB. 10%\nC. 15%\nD. 20%\n答案：C\n\n"
        "税率是多少？ \nA. 1\nB. 2\nC. 3\nD. 4\n答案："
    )


def test_ceval_lm_eval_has_no_kaoshi_and_a_space_before_letters():
    assert _build("ceval", "lm-eval", CEVAL, 2)[0].text == (
        "以下是中国关于注册会计师的单项选择题，请选出其中的正确答案。\n\n"
        "甲公司的说法正确的是____。\nA. 一\nB. 二\nC. 三\nD. 四\n答案： A\n\n"
        "下列，错误的是\nA. 5%\nB. 10%\nC. 15%\nD. 20%\n答案： C\n\n"
        "税率是多少？\nA. 1\nB. 2\nC. 3\nD. 4\n答案："
    )


def test_ceval_baichuan_layout_and_own_subject_name():
    data = _data("ceval", "mao_zedong_thought", shots=[CEVAL.shots[0]], questions=list(CEVAL.questions))
    header = "以下是中国关于毛泽东思想和中国特色社会主义理论概论考试的单项选择题，请选出其中的正确答案。\n"
    query = "税率是多少？ \nA. 1\nB. 2\nC. 3\nD. 4\n答案："
    assert _build("ceval", "baichuan", data, 1)[0].text == (
        header + "\n" + "甲公司的说法正确的是____。\nA. 一\nB. 二\nC. 三\nD. 四\n答案：A" + "\n" + query
    )
    assert _build("ceval", "baichuan", data, 0)[0].text == header + "\n" + query  # evaluate_zh.py, shot == 0


def test_ceval_baichuan_shuffles_dev_per_question_reproducibly():
    shots = [_q(f"ceval/law/dev/{i}", f"题{i}", ("a", "b", "c", "d"), "ABCD"[i % 4]) for i in range(5)]
    questions = [_q(f"ceval/law/val/{i}", f"问{i}", ("a", "b", "c", "d"), "A") for i in range(8)]
    data = _data("ceval", "law", shots, questions)
    prompts = _build("ceval", "baichuan", data, 5, seed=7)
    orders = []
    for question, prompt in zip(questions, prompts):
        expected = [f"题{i}" for i in range(5)]
        random.Random(f"7/{question.id}").shuffle(expected)  # the documented per-question seed
        order = [line for line in prompt.text.split("\n") if line.startswith("题")]
        assert order == expected
        orders.append(tuple(order))
    assert len(set(orders)) > 1  # shuffled anew for each question
    assert [p.text for p in _build("ceval", "baichuan", data, 5, seed=7)] == [p.text for p in prompts]
    assert [p.text for p in _build("ceval", "baichuan", data, 5, seed=8)] != [p.text for p in prompts]


CMMLU = _data(
    "cmmlu",
    "agronomy",
    shots=[
        _q("cmmlu/agronomy/dev/0", "肉牛屠宰后，胴体的哪个部位肉质较好", ("胸", "腹", "大腿", "小腿"), "C"),
        _q("cmmlu/agronomy/dev/1", "牛的发情周期平均为", ("16～17天", "21天", "28天", "19～20天"), "B"),
    ],
    questions=[
        _q(
            "cmmlu/agronomy/test/0",
            " 下列鸭品种中，产蛋量最高的品种是",
            ("高邮鸭", "北京鸭", "樱桃谷鸭", "绍鸭"),
            "D",
        )
    ],
)

CMMLU_OFFICIAL = (
    "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
    "题目：肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案是：C\n\n"
    "题目：牛的发情周期平均为\nA. 16～17天\nB. 21天\nC. 28天\nD. 19～20天\n答案是：B\n\n"
    "题目： 下列鸭品种中，产蛋量最高的品种是\nA. 高邮鸭\nB. 北京鸭\nC. 樱桃谷鸭\nD. 绍鸭\n答案是："
)


@pytest.mark.parametrize("scheme", ["official", "baichuan"])
def test_cmmlu_official_and_baichuan(scheme):
    assert _build("cmmlu", scheme, CMMLU, 2)[0].text == CMMLU_OFFICIAL


def test_cmmlu_lm_eval_uses_the_ceval_layout():
    assert _build("cmmlu", "lm-eval", CMMLU, 2)[0].text == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案： C\n\n"
        "牛的发情周期平均为\nA. 16～17天\nB. 21天\nC. 28天\nD. 19～20天\n答案： B\n\n"
        "下列鸭品种中，产蛋量最高的品种是\nA. 高邮鸭\nB. 北京鸭\nC. 樱桃谷鸭\nD. 绍鸭\n答案："
    )


def test_letter_continuation_follows_the_shot_answer():
    assert letter_continuation(get_task("mmlu").schemes["official"], "A") == " A"
    assert letter_continuation(get_task("ceval").schemes["official"], "B") == "B"
    assert letter_continuation(get_task("cmmlu").schemes["lm-eval"], "C") == " C"


def test_mmlu_drop_last_keeps_a_prompt_of_exactly_max_tokens():
    """hendrycks: `while len(ids) > 2048: k -= 1`, dropping the LAST shots; equal length fits."""
    one_shot = MMLU_OFFICIAL.replace(
        "Statement 1 | x.\nStatement 2 | y.\nA. True, True\nB. False, False\n"
        "C. True, False\nD. False, True\nAnswer: D\n\n",
        "",
    )
    scheme = dataclasses.replace(get_task("mmlu").schemes["official"], max_tokens=len(one_shot))
    (prompt,) = build_prompts(scheme, MMLU, len, n_shots=2)
    assert (prompt.text, prompt.shots_used) == (one_shot, 1)
    scheme = dataclasses.replace(scheme, max_tokens=len(one_shot) - 1)
    zero = build_prompts(scheme, MMLU, len, n_shots=2)[0]
    assert zero.shots_used == 0 and zero.text.endswith(
        "about  abstract algebra.\n\n What is 2+2? \nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )
    tiny = build_prompts(dataclasses.replace(scheme, max_tokens=5), MMLU, len, n_shots=2)[0]
    assert tiny.shots_used == 0  # still too long at 0 shots: returned as is (upstream would loop forever)


def _cmmlu_three_shots() -> tuple[SubjectData, list[str], str, str]:
    shots = [
        _q("cmmlu/arts/dev/0", "短", ("a", "b", "c", "d"), "A"),
        _q("cmmlu/arts/dev/1", "长长长长", ("a", "b", "c", "d"), "B"),
        _q("cmmlu/arts/dev/2", "长长长长", ("e", "f", "g", "h"), "C"),
    ]
    query = _q("cmmlu/arts/test/0", "问", ("1", "2", "3", "4"), "D")
    texts = [
        "题目：短\nA. a\nB. b\nC. c\nD. d\n答案是：A\n\n",
        "题目：长长长长\nA. a\nB. b\nC. c\nD. d\n答案是：B\n\n",
        "题目：长长长长\nA. e\nB. f\nC. g\nD. h\n答案是：C\n\n",
    ]
    return (
        _data("cmmlu", "arts", shots, [query]),
        texts,
        "以下是关于艺术学的单项选择题，请直接给出正确答案的选项。\n\n",
        "题目：问\nA. 1\nB. 2\nC. 3\nD. 4\n答案是：",
    )


def test_cmmlu_drop_longest_counts_pieces_separately_and_drops_all_longest():
    """mp_utils.gen_prompt: base = len(enc(header)) + len(enc(query)), each with its own BOS; while
    sum(len(enc(shot))) >= max - base, remove every shot of the longest length."""
    data, shots, header, query = _cmmlu_three_shots()

    def count(text: str) -> int:
        return len(text) + 1  # a BOS per encode call

    base = count(header) + count(query)
    total = sum(count(s) for s in shots)
    scheme = get_task("cmmlu").schemes["official"]
    fits = build_prompts(dataclasses.replace(scheme, max_tokens=base + total + 1), data, count, n_shots=3)[0]
    assert (fits.text, fits.shots_used) == (header + "".join(shots) + query, 3)
    dropped = build_prompts(dataclasses.replace(scheme, max_tokens=base + total), data, count, n_shots=3)[0]
    assert (dropped.text, dropped.shots_used) == (header + shots[0] + query, 1)  # both longest went at once
    bare = build_prompts(dataclasses.replace(scheme, max_tokens=base - 1), data, count, n_shots=3)[0]
    assert (bare.text, bare.shots_used) == (query, 0)  # header dropped too


def test_too_many_shots_is_an_error():
    with pytest.raises(
        EvalkitError, match=r"3 shots requested for subject 'abstract_algebra', which has 2 shot rows"
    ):
        _build("mmlu", "official", MMLU, 3)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mmlu", "ceval", "cmmlu"])
def test_official_prompts_equal_upstream_construction_on_all_real_data(task, shared_data):
    from evalkit.questions.data import load_task_data

    spec = get_task(task)
    for data in load_task_data(spec, shared_data):
        ours = [p.text for p in build_prompts(spec.schemes["official"], data, _no_count)]
        assert ours == official_prompts(task, shared_data, data.subject.name, spec.eval_split), (
            data.subject.name
        )
