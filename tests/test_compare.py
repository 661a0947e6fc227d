"""Paired comparison: known deltas, McNemar p-values, bootstrap intervals, the gate, mismatch errors."""

from __future__ import annotations

import dataclasses

import pytest
from builders import answers, saved_run

from evalkit.report.compare_tables import to_markdown
from evalkit.stats.compare import compare, compare_pair, mcnemar_p
from evalkit.stats.pairing import pair_by_task
from evalkit.store.records import SavedRun
from evalkit.store.run_dir import RunDir
from evalkit.store.saved_runs import load_run
from evalkit.types import EvalkitError, QuestionResult, RunConfig
from tasks import get_task

CEVAL, MMLU = get_task("ceval"), get_task("mmlu")


def run(questions: list[QuestionResult], task: str = "mmlu", **overrides) -> SavedRun:
    return saved_run(RunConfig(**{"model": "org/Model-7B", "task": task, **overrides}), questions)


# 100 STEM questions; A answers 70 right, B loses 10 of them (right -> wrong) and gains none
BASE = answers("mmlu", "astronomy", set(range(70)), 100)
WORSE = answers("mmlu", "astronomy", set(range(10, 70)), 100)


def test_ten_right_to_wrong_flips_out_of_a_hundred():
    c = compare_pair(MMLU, run(BASE), run(WORSE, precision="int4"))
    assert 100 * c.overall.delta == pytest.approx(-10.0)
    assert (c.overall.a.accuracy, c.overall.b.accuracy) == (0.7, 0.6)
    assert (c.overall.right_to_wrong, c.overall.wrong_to_right) == (10, 0)
    assert c.overall.p_value == pytest.approx(2 * 0.5**10)
    assert c.overall.ci.high <= 0 and c.overall.ci.low < -0.1 < c.overall.ci.high
    assert [f.id for f in c.flips] == [f"mmlu/astronomy/test/{i}" for i in range(10)]
    assert {f.direction for f in c.flips} == {"right→wrong"} and c.flips[0].pred_b == "C"
    assert c.groups["STEM"] == c.overall and list(c.subjects) == ["astronomy"]
    assert (c.label_a, c.label_b) == ("Model-7B fp32", "Model-7B int4")


@pytest.mark.parametrize("max_drop, passed", [(5, False), (15, True), (10, True), (None, True)])
def test_gate_trips_only_when_the_drop_exceeds_max_drop(max_drop, passed):
    result = compare([run(BASE)], [run(WORSE)], get_task, max_drop=max_drop)
    assert result.passed is passed
    assert result.failed == (() if passed else ("mmlu",))


def test_gains_never_trip_the_gate():
    assert compare([run(WORSE)], [run(BASE)], get_task, max_drop=0).passed


def test_mcnemar_two_sided_exact_values():
    assert mcnemar_p(3, 1) == pytest.approx(10 / 16)  # P(X<=1 or X>=3), X ~ Bin(4, 1/2)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)


def test_delta_honours_macro_where_micro_would_differ():
    # C-Eval (macro): accountant 10 questions, B loses 5; art_studies 90 questions, unchanged
    art = answers("ceval", "art_studies", set(range(45)), 90)
    a = answers("ceval", "accountant", set(range(10)), 10) + art
    b = answers("ceval", "accountant", set(range(5)), 10) + art
    macro = compare_pair(CEVAL, run(a, "ceval"), run(b, "ceval")).overall
    micro = compare_pair(CEVAL, run(a, "ceval", scheme="lm-eval"), run(b, "ceval", scheme="lm-eval")).overall
    assert macro.delta == pytest.approx((-0.5 + 0) / 2)
    assert micro.delta == pytest.approx(-5 / 100)
    assert macro.p_value == micro.p_value == pytest.approx(2 * 0.5**5)  # McNemar is per question either way
    c = compare_pair(CEVAL, run(a, "ceval"), run(b, "ceval"))
    assert (
        c.subjects["art_studies"].delta == 0
        and c.subjects["art_studies"].ci.low == 0 == c.subjects["art_studies"].ci.high
    )
    assert c.groups["Others"].delta == pytest.approx(-0.5) and "Humanities" in c.groups


def test_bootstrap_interval_is_seeded():
    first = compare_pair(MMLU, run(BASE), run(WORSE), seed=3).overall.ci
    assert first == compare_pair(MMLU, run(BASE), run(WORSE), seed=3).overall.ci


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("scheme", "lm-eval", "scheme differs"),
        ("shots", 0, "shots differs"),
        ("split", "val", "split differs"),
        ("letter_rule", "standalone", "letter rule differs"),
    ],
)
def test_different_settings_are_refused(field, value, message):
    with pytest.raises(EvalkitError, match=message):
        compare_pair(MMLU, run(BASE), run(WORSE, **{field: value}))


def test_the_default_split_equals_the_named_one():
    assert compare_pair(MMLU, run(BASE), run(WORSE, split="test")).overall.a.n == 100


def test_different_question_sets_are_refused_unless_a_subset_is_allowed():
    refusal = r"question sets differ \(20 only in A.*0 only in B.*pass --allow-subset to compare the 80 "
    with pytest.raises(EvalkitError, match=refusal):
        compare_pair(MMLU, run(BASE), run(WORSE[:80], limit=80))
    c = compare_pair(MMLU, run(BASE), run(WORSE[:80], limit=80), allow_subset=True)
    assert (c.only_a, c.only_b, c.overall.a.n) == (20, 0, 80)
    assert "20 questions only in A" in to_markdown(
        compare([run(BASE)], [run(WORSE[:80])], get_task, allow_subset=True)
    )


def test_changed_gold_or_unlabeled_runs_are_refused():
    changed = [
        dataclasses.replace(q, gold="B", correct=q.pred == "B") if q.id.endswith("/5") else q for q in WORSE
    ]
    with pytest.raises(EvalkitError, match="question mmlu/astronomy/test/5 differs"):
        compare_pair(MMLU, run(BASE), run(changed))
    blind = answers("ceval", "accountant", set(), 3, gold=None)
    with pytest.raises(EvalkitError, match="has no gold answers"):
        compare_pair(CEVAL, run(blind, "ceval", split="test"), run(blind, "ceval", split="test"))


def test_run_sets_are_paired_by_task():
    ceval_a = run(answers("ceval", "accountant", {0}, 2), "ceval")
    pairs = pair_by_task([run(BASE), ceval_a], [ceval_a, run(WORSE)])
    tasks = [(a.result.config.task, b.result.config.task) for a, b in pairs]
    assert tasks == [("mmlu", "mmlu"), ("ceval", "ceval")]
    with pytest.raises(EvalkitError, match=r"A has tasks \['ceval', 'mmlu'\], B has \['mmlu'\]"):
        pair_by_task([run(BASE), ceval_a], [run(WORSE)])
    with pytest.raises(EvalkitError, match="side B has several runs of mmlu"):
        pair_by_task([run(BASE)], [run(WORSE), run(BASE)])
    with pytest.raises(EvalkitError, match="max drop"):
        compare([run(BASE)], [run(WORSE)], get_task, max_drop=-1)


def test_markdown_lists_flips_and_the_verdict():
    comparison = compare([run(BASE)], [run(WORSE, precision="int4")], get_task, max_drop=5)
    text = to_markdown(comparison, max_flips=3)
    assert "## MMLU: B = Model-7B int4 vs A = Model-7B fp32" in text
    assert "- right→wrong: 10: mmlu/astronomy/test/0 (A→C, gold A)" in text and "… and 7 more" in text
    assert "- wrong→right: 0" in text
    average = next(line for line in text.splitlines() if line.startswith("| Average"))
    assert [c.strip() for c in average.strip("|").split("|")][:4] == ["Average", "70.0", "60.0", "-10.0"]
    assert "Gate (max drop 5 points): FAIL: mmlu" in text


def test_markdown_puts_the_summary_and_verdict_first_and_lists_changed_subjects():
    same = answers("mmlu", "anatomy", {0, 2}, 4)
    a, b = run(BASE + same), run(WORSE + same, precision="int4")
    text = to_markdown(compare([a], [b], get_task, max_drop=5))
    lines = text.splitlines()
    assert lines[0] == (
        "## Summary: B = Model-7B int4 vs A = Model-7B fp32 (benchmark Averages, accuracy points)"
    )
    summary = next(line for line in lines if line.startswith("| MMLU"))
    assert [c.strip() for c in summary.strip("|").split("|")][:4] == ["MMLU", "69.2", "59.6", "-9.6"]
    assert text.index("Gate (max drop 5 points): FAIL: mmlu") < text.index("## MMLU: B = Model-7B int4")
    assert "| astronomy" in text and "| anatomy" not in text
    assert (
        "Not listed: 1 of 2 subjects, unchanged (same accuracy, no question flipped, the same top "
        "letters); --all-subjects lists every subject"
    ) in text
    every = to_markdown(compare([a], [b], get_task), all_subjects=True)
    assert "| anatomy" in every and "Not listed" not in every and "Gate" not in every
    # flips both ways leave the accuracy unchanged, and the subject is still listed
    swapped = answers("mmlu", "anatomy", {1, 3}, 4)
    assert "| anatomy" in to_markdown(compare([run(same)], [run(swapped, precision="int8")], get_task))


def test_cli_compare_names_the_flag_and_prints_every_subject_when_asked(tmp_path, capsys):
    from run_eval import main

    same = answers("mmlu", "anatomy", {0, 2}, 4)
    dirs = []
    for precision, questions in (("fp16", BASE + same), ("int8", WORSE[:80] + same)):
        cfg = RunConfig(
            model="org/Model-7B", task="mmlu", precision=precision, output_dir=str(tmp_path / precision)
        )
        directory = RunDir.open(cfg, "Model-7B")
        directory.append(questions)
        result = dataclasses.replace(run(questions).result, config=cfg, config_hash=cfg.config_hash())
        directory.finish(result)
        dirs.append(str(directory.path))
    assert main(["compare", *dirs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot compare: the question sets differ") and "pass --allow-subset" in err
    assert main(["compare", *dirs, "--allow-subset", "--max-drop", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## Summary") and "Gate (max drop 20 points): pass" in out
    assert "| astronomy" in out and "| anatomy" not in out
    assert main(["compare", *dirs, "--allow-subset", "--all-subjects"]) == 0
    assert "| anatomy" in capsys.readouterr().out


def test_compare_runs_read_back_from_disk(tmp_path):
    saved = []
    for precision, questions in (("fp16", BASE), ("int8", WORSE)):
        cfg = RunConfig(model="org/Model-7B", task="mmlu", precision=precision, output_dir=str(tmp_path))
        directory = RunDir.open(cfg, "Model-7B")
        directory.append(questions)
        result = dataclasses.replace(run(questions).result, config=cfg, config_hash=cfg.config_hash())
        directory.finish(result)
        saved.append(load_run(directory.path))
    result = compare(saved[:1], saved[1:], get_task, max_drop=5)
    assert result.failed == ("mmlu",) and 100 * result.benchmarks["mmlu"].overall.delta == pytest.approx(-10)


# ---- the divergence gates, refused thresholds and the power note ----
def _shifted(
    questions: list[QuestionResult], logprobs: tuple[float, ...], every: int = 1
) -> list[QuestionResult]:
    """Every `every`-th question with other log-probs (its prediction kept)."""
    return [
        dataclasses.replace(q, logprobs=logprobs) if i % every == 0 else q for i, q in enumerate(questions)
    ]


def test_kl_and_agreement_gates_name_the_benchmark_and_its_value():
    import numpy as np

    p_a = np.array([0.7, 0.1, 0.1, 0.1])
    a = _shifted(BASE, tuple(np.log(p_a).tolist()))
    b = _shifted(a, tuple(np.log([0.25] * 4).tolist()), 4)  # 25 of 100 questions move to uniform
    kl = 25 / 100 * float(np.sum(p_a * np.log(p_a / 0.25)))
    result = compare([run(a)], [run(b)], get_task, max_kl=kl / 2, min_agreement=1.0)
    (kl_gate,) = [g for g in result.gates if g.name == "max KL"]
    assert kl_gate.failed == {"mmlu": pytest.approx(kl)} and result.failed == ("mmlu",)
    assert [g.failed for g in result.gates if g.name == "min agreement"] == [{}]  # predictions kept
    text = to_markdown(result)
    assert f"Gate (max KL {kl / 2:g} nats): FAIL: mmlu ({kl:.3g})" in text
    assert "Gate (min agreement 1): pass" in text and "Verdict: FAIL (max KL)" in text
    assert compare([run(a)], [run(b)], get_task, max_kl=kl).passed  # equal to the threshold passes
    worse = compare([run(BASE)], [run(WORSE)], get_task, max_drop=50, min_agreement=0.95)
    assert worse.failed == ("mmlu",) and worse.gates[1].failed == {"mmlu": pytest.approx(0.9)}
    assert "Gate (max drop 50 points): pass" in to_markdown(worse)
    assert "Verdict: FAIL (min agreement)" in to_markdown(worse)


@pytest.mark.parametrize(
    "gates, message",
    [
        ({"max_drop": float("nan")}, "--max-drop must be a finite number, got nan"),
        ({"max_kl": float("inf")}, "--max-kl must be a finite number, got inf"),
        ({"min_agreement": float("nan")}, "--min-agreement must be a finite number"),
        ({"max_kl": -0.1}, "--max-kl must be >= 0 nats"),
        ({"min_agreement": 1.5}, r"--min-agreement is a fraction in \[0, 1\]"),
    ],
)
def test_thresholds_that_cannot_judge_are_refused(gates, message):
    with pytest.raises(EvalkitError, match=message):
        compare([run(BASE)], [run(WORSE)], get_task, **gates)


def test_power_note_says_how_small_a_drop_the_questions_can_detect():
    text = to_markdown(compare([run(BASE)], [run(WORSE)], get_task, max_drop=5))
    # 10 discordant questions: 9 of 10 one way is the least McNemar's exact test calls significant
    assert (
        "- Power (MMLU): 100 questions, 10 discordant (right in one run only, 10.0%): the smallest drop "
        "McNemar's exact test detects at 95% is 8.0 points"
    ) in text
    assert "⚠ max drop 5 points is below what these questions can detect on MMLU (8.0)" in text
    assert "too few flips" in to_markdown(compare([run(BASE)], [run(BASE)], get_task))
    assert compare_pair(MMLU, run(BASE), run(WORSE)).overall.detectable_drop == pytest.approx(0.08)


def _saved_pair(tmp_path, a_questions, b_questions) -> list[str]:
    dirs = []
    for precision, questions in (("fp16", a_questions), ("int4", b_questions)):
        cfg = RunConfig(
            model="org/Model-7B",
            task="mmlu",
            precision=precision,
            quant_backend=None,
            output_dir=str(tmp_path / precision),
        )
        directory = RunDir.open(cfg, "Model-7B")
        directory.append(questions)
        result = dataclasses.replace(run(questions).result, config=cfg, config_hash=cfg.config_hash())
        directory.finish(result)
        dirs.append(str(directory.path))
    return dirs


@pytest.mark.parametrize(
    "flags", [("--max-drop", "nan"), ("--max-kl", "inf"), ("--min-agreement", "nan"), ("--max-drop=-inf",)]
)
def test_cli_refuses_non_finite_gates_with_one_error_line(tmp_path, capsys, flags):
    from run_eval import main

    forty = answers("mmlu", "astronomy", set(range(30, 70)), 100)  # a 40-point drop
    dirs = _saved_pair(tmp_path, BASE, forty)
    assert main(["compare", *dirs, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"error: {flags[0].split('=')[0]} must be a finite number")


def test_cli_exit_status_fails_when_any_gate_fails(tmp_path, capsys):
    from run_eval import main

    dirs = _saved_pair(tmp_path, BASE, WORSE)  # -10 points, agreement 0.9, KL 0 (same log-probs)
    assert main(["compare", *dirs, "--max-drop", "20", "--max-kl", "0", "--min-agreement", "0.9"]) == 0
    assert "Verdict: pass" in capsys.readouterr().out
    assert main(["compare", *dirs, "--max-drop", "20", "--max-kl", "0", "--min-agreement", "0.91"]) == 1
    out = capsys.readouterr().out
    assert "Gate (min agreement 0.91): FAIL: mmlu (0.900)" in out and "Gate (max KL 0 nats): pass" in out
