"""The precision table: rows model × precision, baselines, Δ with evalkit.stats.compare's paired CI, memory,
published int8/int4 rows, when it is shown, and errors."""

from __future__ import annotations

import dataclasses

import pytest
from builders import answers, saved_run

from evalkit.report.quantization import build_quant_table, show_precision
from evalkit.report.quantization_markdown import quant_frame, quant_markdown
from evalkit.stats.compare import compare_pair
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ModelInfo, ReportRun, SavedRun, Timings
from evalkit.types import EvalkitError, QuestionResult, RunConfig
from tasks import get_task
from tasks.references import published_quantization

MMLU = get_task("mmlu")
# MMLU astronomy, 100 questions: fp32 and bf16 answer 70 right, int8 loses 10 of them, int4 loses 20
RIGHT = {
    "fp32": set(range(70)),
    "bf16": set(range(70)),
    "int8": set(range(10, 70)),
    "int4": set(range(20, 70)),
}
GIB = 2**30


def run(
    precision: str,
    task: str = "mmlu",
    questions: list[QuestionResult] | None = None,
    model: str = "org/Model-7B",
    info: dict | None = None,
    **config,
) -> ReportRun:
    """A saved run with questions, as `report` loads it; weight bytes 4/2/1/0.5 GiB by precision."""
    backend = config.pop("quant_backend", "bnb" if precision in ("int8", "int4") else None)
    if questions is None:
        subject = "astronomy" if task == "mmlu" else "accountant"
        questions = answers(task, subject, RIGHT[precision], 100, split=get_task(task).eval_split)
    cfg = RunConfig(model=model, task=task, precision=precision, quant_backend=backend, **config)
    weights = int({"fp32": 4, "bf16": 2, "int8": 1, "int4": 0.5}[precision] * GIB)
    saved = saved_run(cfg, questions, model_info=ModelInfo(weight_bytes=weights, **(info or {})))
    return ReportRun(saved.result, get_task(task), None, saved.questions)


def pair(report_run: ReportRun) -> SavedRun:
    return SavedRun(report_run.result, list(report_run.questions))


def test_rows_are_model_by_precision_against_the_fp32_row():
    runs = [run(p, t) for p in ("bf16", "int8", "fp32", "int4") for t in ("mmlu", "ceval")]
    rtn = [run("int4", t, quant_backend="rtn") for t in ("mmlu", "ceval")]
    table = build_quant_table(
        rtn + runs
    )  # rows in precision order, then backend order, whatever the runs' order
    assert [(r.label, r.baseline) for r in table.rows] == [
        ("Model-7B fp32", None),
        ("Model-7B bf16", "Model-7B fp32"),
        ("Model-7B int8/bnb", "Model-7B fp32"),
        ("Model-7B int4/bnb", "Model-7B fp32"),
        ("Model-7B int4/rtn", "Model-7B fp32"),
    ]
    assert table.titles == {"mmlu": "MMLU", "ceval": "C-Eval"}
    int8 = table.rows[2].cells["mmlu"]
    expected = compare_pair(MMLU, pair(runs[4]), pair(runs[2])).overall  # fp32 -> int8 on MMLU
    assert int8.delta == expected and 100 * int8.delta.delta == pytest.approx(-10.0)
    assert int8.metric.accuracy == pytest.approx(0.6) and table.rows[0].cells["mmlu"].delta is None
    assert 100 * table.rows[3].cells["ceval"].delta.delta == pytest.approx(-20.0)


def test_bf16_is_the_baseline_without_fp32_and_no_baseline_means_no_delta():
    table = build_quant_table([run("int8"), run("bf16")])
    assert [(r.label, r.baseline) for r in table.rows] == [
        ("Model-7B bf16", None),
        ("Model-7B int8/bnb", "Model-7B bf16"),
    ]
    table = build_quant_table([run("int8"), run("int4")])
    assert all(r.baseline is None and r.cells["mmlu"].delta is None for r in table.rows)
    assert "Model-7B: no fp32, bf16 or fp16 run with the same settings, so no Δ." in table.notes


def test_models_and_settings_form_separate_comparisons():
    other = run("int8", model="org/Other-7B")
    smoke = run("int4", questions=answers("mmlu", "astronomy", 5, 10), limit=10)
    table = build_quant_table([run("fp32"), other, smoke])
    assert [(r.label, r.group, r.baseline) for r in table.rows] == [
        ("Model-7B fp32", 0, None),
        ("Other-7B int8/bnb", 1, None),
        ("Model-7B int4/bnb ⚠ limit=10", 2, None),
    ]
    assert not show_precision(table, None) and show_precision(table, True)
    assert show_precision(build_quant_table([run("fp32"), run("int8")]), None)
    assert not show_precision(build_quant_table([run("fp32"), run("int8")]), False)


def test_a_shuffling_schemes_tasks_share_a_row_and_equal_labels_are_never_merged():
    ceval = run("fp32", "ceval", scheme="baichuan")  # C-Eval shuffles its shots under baichuan, MMLU does not
    table = build_quant_table([run("fp32", scheme="baichuan"), ceval])
    assert len(table.rows) == 1 and set(table.rows[0].cells) == {"mmlu", "ceval"}
    frame = quant_frame(build_quant_table([run("fp32"), run("fp32", shots=3)]))  # one label, two settings
    assert list(frame.index) == ["Model-7B fp32 (comparison 1)", "Model-7B fp32 (comparison 2)"]


def test_a_subset_is_compared_on_the_shared_questions_with_a_note():
    full, part = run("fp32"), run("int8")
    part = part._replace(questions=part.questions[:80])
    table = build_quant_table([full, part])
    cell = table.rows[1].cells["mmlu"]
    assert cell.delta.a.n == 80 and 100 * cell.delta.delta == pytest.approx(100 * (60 - 70) / 80)
    notes = table.notes
    assert any("Δ over the 80 shared questions (20 and 0 left out)" in n for n in notes)


def test_two_runs_of_one_cell_are_an_error():
    first, second = run("int8"), run("int8", data_dir="/other/copy")
    with pytest.raises(EvalkitError, match="two mmlu runs of 'Model-7B int8/bnb'.*report one"):
        build_quant_table([first, second])


def test_memory_columns_prefer_cuda_peaks_and_say_which():
    table = build_quant_table(
        [
            run("fp32", info={"peak_rss_bytes": 5 * GIB}),
            run("int8", info={"peak_cuda_bytes": GIB // 2, "peak_rss_bytes": 9 * GIB}),
        ]
    )
    frame = quant_frame(table)
    assert frame.loc["Model-7B fp32", "Weights (GiB)"] == "4.00"
    assert frame.loc["Model-7B fp32", "Peak load (GiB)"] == "5.00 RSS"
    assert frame.loc["Model-7B int8/bnb", "Peak load (GiB)"] == "0.50 CUDA"
    assert frame.loc["Model-7B int8/bnb", "MMLU"].startswith("60.0 (-10.0 [")


def test_run_time_sums_the_benchmarks_and_marks_resumed_rows():
    def timed(precision: str, task: str, timings: dict) -> ReportRun:
        report_run = run(precision, task)
        return report_run._replace(result=dataclasses.replace(report_run.result, timings=Timings(**timings)))

    table = build_quant_table(
        [
            timed("fp32", "mmlu", {"scoring_seconds": 60.0, "load_seconds": 12.4}),
            timed("fp32", "ceval", {"scoring_seconds": 120.0, "load_seconds": 12.4}),
            timed("int8", "mmlu", {"scoring_seconds": 30.0, "resumed_questions": 7}),
        ]
    )
    assert [(r.scoring_seconds, r.load_seconds, r.resumed) for r in table.rows] == [
        (180.0, 12.4, False),
        (30.0, None, True),
    ]
    frame = quant_frame(table)
    assert frame.loc["Model-7B fp32", ["Scoring (min)", "Load (s)"]].tolist() == ["3.0", "12"]
    assert frame.loc["Model-7B int8/bnb", ["Scoring (min)", "Load (s)"]].tolist() == ["0.5*", "–"]


def test_published_rows_of_the_same_model_follow_with_their_deltas_and_memory():
    published = [
        PublishedRow(
            label=f"Model-7B{suffix}",
            model="Model-7B",
            benchmark="mmlu",
            scores={"Average": avg},
            sources=("card § Quantization",),
            precision=precision,
            memory_gb=gb,
        )
        for suffix, precision, avg, gb in (("", "full", 50.0, 14.0), ("-int4", "int4", 45.5, 4.5))
    ]
    table = build_quant_table([run("fp32"), run("int4")], published)
    assert [(p.label, p.averages, p.deltas, p.memory_gb) for p in table.published] == [
        ("Model-7B", {"mmlu": 50.0}, {}, 14.0),
        ("Model-7B-int4", {"mmlu": 45.5}, {"mmlu": -4.5}, 4.5),
    ]
    frame = quant_frame(table)
    assert frame.loc["Model-7B-int4 (published)", "MMLU"] == "45.5 (-4.5)"
    assert frame.loc["Model-7B-int4 (published)", "GPU Mem (GB, published)"] == "4.5"
    assert "Published rows: card § Quantization; Δ against the published unquantized row." in table.notes
    assert build_quant_table([run("fp32", model="org/Else")], published).published == ()


def test_the_real_quantization_table_stands_beside_a_baichuan_sweep():
    runs = [run(p, model="baichuan-inc/Baichuan-13B-Base") for p in ("bf16", "int8")]
    text = quant_markdown(build_quant_table(runs, published_quantization()))
    assert text.startswith("## Precision\n\n| Model")
    row = next(line for line in text.splitlines() if line.startswith("| Baichuan-13B-Base-int8 (published)"))
    assert [c.strip() for c in row.strip("|").split("|")][:2] == [
        "Baichuan-13B-Base-int8 (published)",
        "49.9 (-1.7)",
    ]
    assert "15.8" in row and "most likely GiB" in text


def test_a_subset_note_of_smoke_runs_carries_one_warning_sign():
    full, part = run("fp32", limit=100), run("int8", limit=100)
    table = build_quant_table([full, part._replace(questions=part.questions[:80])])
    (note,) = [n for n in table.notes if "Δ over the" in n]
    assert note == (
        "⚠ Model-7B int8/bnb limit=100 vs Model-7B fp32 limit=100 (MMLU): Δ over the 80 shared "
        "questions (20 and 0 left out)."
    )
    assert all(n.count("⚠") <= 1 for n in quant_markdown(table).splitlines() if n.startswith("- "))


def test_divergence_table_stands_beside_the_accuracy_deltas():
    import numpy as np

    from evalkit.report.quantization_markdown import divergence_frame

    peaked, flat = tuple(np.log([0.7, 0.1, 0.1, 0.1]).tolist()), tuple(np.log([0.25] * 4).tolist())
    runs = []
    for precision, every in (("fp32", 0), ("int8", 0), ("int4", 2)):  # int4: half the questions uniform
        questions = answers("mmlu", "astronomy", RIGHT[precision], 100)
        questions = [
            dataclasses.replace(q, logprobs=flat if every and i % every == 0 else peaked)
            for i, q in enumerate(questions)
        ]
        runs.append(run(precision, questions=questions))
    table = build_quant_table(runs)
    frame = divergence_frame(table)
    assert list(frame.index) == ["Model-7B int8/bnb", "Model-7B int4/bnb"]  # the compared rows only
    assert list(frame.columns) == ["against", "MMLU"] and set(frame["against"]) == {"Model-7B fp32"}
    kl = 0.5 * float(np.sum(np.array([0.7, 0.1, 0.1, 0.1]) * np.log(np.array([0.7, 0.1, 0.1, 0.1]) / 0.25)))
    assert frame.loc["Model-7B int8/bnb", "MMLU"].startswith("KL 0 [0, 0], p95 0, p99 0; agree 90.0 [")
    assert frame.loc["Model-7B int4/bnb", "MMLU"].startswith(f"KL {kl:.3g} [")
    assert table.rows[2].cells["mmlu"].delta.divergence.kl_mean.value == pytest.approx(kl)
    text = quant_markdown(table)
    assert text.index("## Precision") < text.index("### Letter distributions against full precision")
    assert "in nats, of the row (B) from its baseline (A)" in text
    assert "Letter distributions" not in quant_markdown(build_quant_table([run("fp32")]))
