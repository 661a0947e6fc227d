"""Report tables from saved runs: layout, figures x100, counts, labels, flags, CSV, published rows beside
runs; the `list` text; config.json's paths."""

from __future__ import annotations

import math

import builders
import pandas as pd
import pytest
from builders import run_result

from evalkit.report.csv import write_csv
from evalkit.report.tables import build_tables
from evalkit.report.tables_markdown import to_markdown
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ReportRun, RunResult
from evalkit.store.run_dir import RunDir, write_submission
from evalkit.store.saved_runs import find_runs, load_run, run_label
from evalkit.types import EvalkitError, QuestionResult, RunConfig
from tasks import get_task
from tasks.references import published_rows

CEVAL = get_task("ceval")


def answers(subject: str, right: int, total: int, gold: str | None = "A") -> list[QuestionResult]:
    return builders.answers("ceval", subject, right, total, split="val", gold=gold)


def saved(questions: list[QuestionResult], **overrides) -> RunResult:
    return run_result(
        RunConfig(
            **{"model": "baichuan-inc/Baichuan-13B-Base", "task": "ceval", "precision": "fp16", **overrides}
        ),
        questions,
    )


# accountant: Others; advanced_mathematics: STEM + Avg(Hard); art_studies: Humanities
MIXED = answers("accountant", 1, 2) + answers("advanced_mathematics", 2, 3) + answers("art_studies", 0, 1)


def test_table_layout_follows_the_readme_with_hard_as_extra_column():
    table = build_tables([(saved(MIXED), CEVAL)])["ceval"]
    assert table.title == "C-Eval" and table.first_column == "Model 5-shot"
    assert list(table.scores.columns) == [
        "STEM",
        "Social Sciences",
        "Humanities",
        "Others",
        "Avg(Hard)",
        "Average",
    ]
    row = table.scores.loc["Baichuan-13B-Base fp16"]
    assert row["Others"] == pytest.approx(50.0) and row["Avg(Hard)"] == pytest.approx(200 / 3)
    assert row["Average"] == pytest.approx(100 * (0.5 + 2 / 3 + 0) / 3)  # macro, as C-Eval's scheme says
    assert math.isnan(row["Social Sciences"])
    assert table.questions.loc["Baichuan-13B-Base fp16", "Average"] == 6
    assert table.subjects.loc["Baichuan-13B-Base fp16", "Average"] == 3


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_markdown_shows_one_decimal_counts_and_the_subset_note():
    text = to_markdown([(saved(MIXED), CEVAL)])
    lines = text.splitlines()
    assert lines[0] == "## C-Eval"
    header = [cells(line) for line in lines if line.startswith("| Model 5-shot")]
    assert header[0] == [
        "Model 5-shot",
        "STEM",
        "Social Sciences",
        "Humanities",
        "Others",
        "Avg(Hard)",
        "Average",
    ]
    scores, counts = [cells(line) for line in lines if line.startswith("| Baichuan-13B-Base fp16")]
    assert scores == ["Baichuan-13B-Base fp16", "66.7", "–", "0.0", "50.0", "66.7", "38.9"]
    assert counts == ["Baichuan-13B-Base fp16", "3 (1)", "–", "1 (1)", "2 (1)", "3 (1)", "6 (3)"]
    assert "3 of 52 subjects" in text
    assert "mean of subject accuracies (macro)" in text


def test_limit_runs_are_flagged_in_label_and_notes():
    text = to_markdown([(saved(MIXED, limit=10), CEVAL)])
    assert "Baichuan-13B-Base fp16 ⚠ limit=10" in text
    assert "- ⚠ Baichuan-13B-Base fp16 limit=10: --limit 10 questions per subject, a smoke run" in text


def test_every_footnote_has_one_warning_sign_at_most_and_in_front():
    flagged = PublishedRow(
        label="Baichuan-13B-Base",
        model="Baichuan-13B-Base",
        benchmark="ceval",
        scores={"Average": 52.4},
        sources=("README.md § C-Eval",),
        split="test",
        scheme="baichuan",
        notes=("⚠ figures from a ⚠ later table",),
    )
    runs = [(saved(MIXED, limit=10), CEVAL), (saved(MIXED, limit=10, scheme="lm-eval"), CEVAL)]
    text = to_markdown(runs, [flagged])
    notes = [line[2:] for line in text.splitlines() if line.startswith("- ")]
    warnings = [note for note in notes if "⚠" in note]
    assert len(warnings) >= 5  # two smoke runs, two subset runs, the scheme and split of the matched run
    assert all(note.count("⚠") == 1 and note.startswith("⚠ ") for note in warnings)
    assert (
        "⚠ Baichuan-13B-Base fp16 [official] limit=10: 3 of 52 subjects; groups without results are blank."
    ) in notes
    assert (
        "Baichuan-13B-Base (published): README.md § C-Eval; code reproduced by scheme baichuan; "
        "figures from a later table"
    ) in notes
    assert "Categories and Average for Baichuan-13B-Base fp16 [official] limit=10: mean of subject" in text


def test_scheme_is_in_the_label_when_schemes_are_mixed_or_not_official():
    assert run_label(saved(MIXED), "val") == "Baichuan-13B-Base fp16"
    assert run_label(saved(MIXED, scheme="baichuan"), "val") == "Baichuan-13B-Base fp16 [baichuan]"
    table = build_tables([(saved(MIXED), CEVAL), (saved(MIXED, scheme="lm-eval"), CEVAL)])["ceval"]
    assert list(table.scores.index) == [
        "Baichuan-13B-Base fp16 [official]",
        "Baichuan-13B-Base fp16 [lm-eval]",
    ]
    micro = 100 * 3 / 6  # lm-eval aggregates over questions
    assert table.scores.loc["Baichuan-13B-Base fp16 [lm-eval]", "Average"] == pytest.approx(micro)
    assert any("for Baichuan-13B-Base fp16 [lm-eval]: mean over questions (micro)" in n for n in table.notes)


def test_identical_labels_are_told_apart_and_shots_shown_when_mixed():
    a, b = saved(MIXED, seed=1), saved(MIXED, seed=2)
    table = build_tables([(a, CEVAL), (b, CEVAL)])["ceval"]
    assert list(table.scores.index) == [
        f"Baichuan-13B-Base fp16 #{a.config_hash[:6]}",
        f"Baichuan-13B-Base fp16 #{b.config_hash[:6]}",
    ]
    table = build_tables([(saved(MIXED), CEVAL), (saved(MIXED, shots=0), CEVAL)])["ceval"]
    assert table.first_column == "Model"
    assert list(table.scores.index) == ["Baichuan-13B-Base fp16 5-shot", "Baichuan-13B-Base fp16 0-shot"]


def test_test_split_runs_list_their_submission_instead_of_a_row(tmp_path):
    unlabeled = answers("accountant", 0, 2, gold=None)
    write_submission(tmp_path / "submission.json", unlabeled)
    run = ReportRun(saved(unlabeled, split="test"), CEVAL, tmp_path)
    table = build_tables([run, (saved(MIXED), CEVAL)])["ceval"]
    assert list(table.scores.index) == ["Baichuan-13B-Base fp16"]
    assert any(n.endswith(f"submission written: {tmp_path / 'submission.json'}") for n in table.notes)
    assert "split test has no answers" in to_markdown([run])
    assert "submission written: missing from" in to_markdown([run._replace(path=tmp_path / "other")])


def test_confidence_interval_column_when_questions_are_given():
    table = build_tables([ReportRun(saved(MIXED), CEVAL, questions=MIXED)])["ceval"]
    interval = table.intervals["Baichuan-13B-Base fp16"]
    assert interval.low <= (0.5 + 2 / 3) / 3 <= interval.high
    assert "95% CI" in to_markdown([ReportRun(saved(MIXED), CEVAL, questions=MIXED)])
    assert "95% CI" not in to_markdown([(saved(MIXED), CEVAL)])


def test_csv_has_every_figure_with_its_n(tmp_path):
    path = write_csv(
        [ReportRun(saved(MIXED), CEVAL, questions=MIXED), (saved(MIXED, precision="int4"), CEVAL)],
        tmp_path / "out" / "report.csv",
    )
    frame = pd.read_csv(path)
    assert len(frame) == 2 * 5  # STEM, Humanities, Others, Avg(Hard), Average per run; no empty group
    average = frame[(frame["group"] == "Average") & (frame["precision"] == "fp16")].iloc[0]
    assert average["accuracy"] == pytest.approx(100 * (0.5 + 2 / 3) / 3)
    assert (average["n"], average["subjects"], average["scheme"]) == (6, 3, "official")
    assert average["ci95_low"] <= average["accuracy"] <= average["ci95_high"]
    others = frame[(frame["group"] == "Others") & (frame["precision"] == "fp16")].iloc[0]
    assert others["ci95_low"] <= others["accuracy"] == 50.0 <= others["ci95_high"]  # every figure has its CI
    assert frame[frame["precision"] == "int4"]["ci95_low"].isna().all()


def test_report_from_run_directories_on_disk(tmp_path):
    for precision, right in (("fp16", 2), ("int8", 1)):
        cfg = RunConfig(
            model="/m/Baichuan-13B-Base",
            task="ceval",
            precision=precision,
            output_dir=str(tmp_path / "results"),
        )
        questions = answers("accountant", right, 4)
        run = RunDir.open(cfg, "Baichuan-13B-Base")
        run.append(questions)
        run.finish(saved(questions, **{k: getattr(cfg, k) for k in ("model", "precision", "output_dir")}))
    runs = [ReportRun(*load_run(p)[:1], CEVAL) for p in find_runs([tmp_path / "results"])]
    scores = build_tables(runs)["ceval"].scores["Others"]
    assert dict(scores) == {"Baichuan-13B-Base fp16": 50.0, "Baichuan-13B-Base int8": 25.0}


# --- published figures side by side ------------------------------------------------------------------------

BASE_PUBLISHED = PublishedRow(
    label="Baichuan-13B-Base",
    model="Baichuan-13B-Base",
    benchmark="ceval",
    scores={"STEM": 45.9, "Social Sciences": 63.5, "Humanities": 57.2, "Others": 49.3, "Average": 52.4},
    sources=("README.md § C-Eval",),
    scheme="official",
)
PUBLISHED = (
    BASE_PUBLISHED,
    PublishedRow(
        label="LLaMA-13B",
        model="LLaMA-13B",
        benchmark="ceval",
        scores={"Others": 27.6, "Average": 28.5},
        sources=("README.md § C-Eval",),
        split="test",
        scheme="baichuan",
    ),
    PublishedRow(
        label="Vicuna-13B",
        model="Vicuna-13B",
        benchmark="ceval",
        scores={"Average": 32.8},
        sources=("README.md § C-Eval",),
        notes=("a footnote",),
    ),
    PublishedRow(
        label="Vicuna-13B",
        model="Vicuna-13B",
        benchmark="mmlu",
        scores={"Average": 52.0},
        sources=("README.md § MMLU",),
    ),
)


def test_published_rows_stand_under_the_runs_they_match_with_a_delta_row():
    runs = [
        ReportRun(saved(MIXED), CEVAL, questions=MIXED),
        (saved(MIXED, model="huggyllama/llama-13b"), CEVAL),
    ]
    table = build_tables(runs, PUBLISHED, extra=["vicuna 13b"])["ceval"]
    assert [(label, kind) for label, kind, _ in table.rows()] == [
        ("Baichuan-13B-Base fp16", "measured"),
        ("Baichuan-13B-Base (published)", "published"),
        ("Δ Baichuan-13B-Base fp16", "delta"),
        ("llama-13b fp16", "measured"),
        ("LLaMA-13B (published)", "published"),
        ("Δ llama-13b fp16", "delta"),
        ("Vicuna-13B (published)", "published"),
    ]
    delta = dict((label, figures) for label, _, figures in table.rows())["Δ Baichuan-13B-Base fp16"]
    assert delta["Others"] == pytest.approx(50.0 - 49.3) and delta["STEM"] == pytest.approx(200 / 3 - 45.9)
    assert delta["Average"] == pytest.approx(100 * (0.5 + 2 / 3) / 3 - 52.4)
    assert math.isnan(delta["Avg(Hard)"])
    lines = {
        cells(line)[0]: cells(line)
        for line in to_markdown(runs, PUBLISHED, ["Vicuna-13B"]).splitlines()
        if line.startswith("| ")
    }
    assert lines["Baichuan-13B-Base (published)"] == [
        "Baichuan-13B-Base (published)",
        "45.9",
        "63.5",
        "57.2",
        "49.3",
        "–",
        "52.4",
        "–",
    ]
    assert lines["Δ Baichuan-13B-Base fp16"] == [
        "Δ Baichuan-13B-Base fp16",
        "+20.8",
        "–",
        "-57.2",
        "+0.7",
        "–",
        "-13.5",
        "–",
    ]
    assert lines["Δ llama-13b fp16"][4:7] == ["+22.4", "–", "+10.4"]  # Others 50 - 27.6; Average 38.9 - 28.5


def test_notes_name_sources_and_flag_scheme_split_and_the_ci():
    all_right = answers("accountant", 40, 40)
    runs = [
        ReportRun(saved(all_right), CEVAL, questions=all_right),
        (saved(MIXED, model="/m/LLaMA-13B"), CEVAL),
    ]
    notes = build_tables(runs, PUBLISHED, ["Vicuna-13B"])["ceval"].notes
    assert "Baichuan-13B-Base (published): README.md § C-Eval; code reproduced by scheme official" in notes
    assert "Vicuna-13B (published): README.md § C-Eval; a footnote" in notes
    assert (
        "Baichuan-13B-Base fp16: the published Average 52.4 lies outside the measured 95% CI 100.0–100.0."
    ) in notes
    assert "⚠ LLaMA-13B fp16: measured on val, published on test." in notes
    assert (
        "⚠ LLaMA-13B fp16: measured with scheme official; the published figures come from the code "
        "that scheme "
        "baichuan reproduces."
    ) in notes
    # same scheme, split not stated
    assert not any("Baichuan-13B-Base fp16: measured with" in n for n in notes)


def test_a_run_names_its_reference_and_bad_names_are_errors():
    run = ReportRun(saved(MIXED, model="/tmp/tiny-model"), CEVAL, reference="LLaMA-13B")
    assert build_tables([run], PUBLISHED)["ceval"].links == {"tiny-model fp16": ("LLaMA-13B (published)",)}
    with pytest.raises(EvalkitError, match="unknown published row 'LLaMA-31B'; did you mean LLaMA-13B"):
        build_tables([run._replace(reference="LLaMA-31B")], PUBLISHED)
    with pytest.raises(
        EvalkitError, match="unknown published row 'Vicuna'.*valid: Baichuan-13B-Base, LLaMA-13B"
    ):
        to_markdown([run], PUBLISHED, extra=["Vicuna"])


def test_quantized_runs_are_not_set_beside_full_precision_figures():
    table = build_tables([(saved(MIXED, precision="int8", quant_backend="bnb"), CEVAL)], PUBLISHED)["ceval"]
    assert table.links == {} and len(table.published) == 0


def test_published_figures_in_the_csv(tmp_path):
    runs = [ReportRun(saved(MIXED), CEVAL, questions=MIXED)]
    frame = pd.read_csv(write_csv(runs, tmp_path / "r.csv", PUBLISHED, ["Vicuna-13B"]))
    others = frame[(frame["run"] == "Baichuan-13B-Base fp16") & (frame["group"] == "Others")].iloc[0]
    assert (others["source"], others["accuracy"], others["published"]) == ("measured", 50.0, 49.3)
    assert others["published_row"] == "Baichuan-13B-Base (published)"
    vicuna = frame[frame["run"] == "Vicuna-13B (published)"]
    assert vicuna[["source", "group", "accuracy"]].values.tolist() == [
        ["README.md § C-Eval", "Average", 32.8]
    ]
    hard = frame[(frame["run"] == "Baichuan-13B-Base fp16") & (frame["group"] == "Avg(Hard)")].iloc[0]
    assert pd.isna(hard["published"]) and pd.isna(hard["published_row"])


def test_the_real_references_match_a_baichuan_run():
    table = build_tables([(saved(MIXED), CEVAL)], published_rows(), ["LLaMA-13B"])["ceval"]
    base = table.published_rows["Baichuan-13B-Base (published)"]
    assert base.scores["Average"] == 52.4
    assert base.sources == ("Baichuan-13B-README.md § Benchmark Results > C-Eval",)
    assert list(table.published.index) == ["Baichuan-13B-Base (published)", "LLaMA-13B (published)"]


def test_added_published_rows_follow_the_order_of_the_names():
    table = build_tables(
        [(saved(MIXED, model="/m/tiny"), CEVAL)], PUBLISHED, ["Vicuna-13B", "LLaMA-13B", "vicuna13b"]
    )
    assert list(table["ceval"].published.index) == ["Vicuna-13B (published)", "LLaMA-13B (published)"]


# --- the `list` subcommand ---------------------------------------------------------------------------


def test_list_aligns_chinese_names_by_display_width_and_totals_each_split(tiny_data_dir):
    from datafiles import TINY_SUBJECTS
    from wcwidth import wcswidth

    from evalkit.questions.data import count_rows
    from evalkit.report.listing import task_listing

    tiny = list(TINY_SUBJECTS["ceval"])
    counts = {split: count_rows(CEVAL, tiny_data_dir, split, tiny) for split in CEVAL.splits}
    lines = task_listing(CEVAL, counts).splitlines()
    assert lines[0].startswith("ceval (C-Eval): 52 subjects; scored split val, shots from dev")
    table = lines[1:]
    assert table[0].split() == ["subject", "name", "(zh)", "categories", "dev", "val", "test"]
    assert len(table) == 1 + 52 + 1
    assert len({wcswidth(line) for line in table}) == 1  # counts right-aligned: every row ends in one column
    rows = {line.split()[0]: line for line in table}
    for name, zh, category in (
        ("accountant", "注册会计师", "Others"),
        ("law", "法学", "Humanities"),
        ("advanced_mathematics", "高等数学", "STEM"),
    ):
        line = rows[name]
        assert wcswidth(line[: line.index(zh)]) == wcswidth(table[0][: table[0].index("name (zh)")])
        assert wcswidth(line[: line.index(category)]) == wcswidth(table[0][: table[0].index("categories")])
    assert rows["law"].split()[-3:] == ["5", "6", "6"] and rows["art_studies"].split()[-3:] == ["0", "0", "0"]
    assert table[-1].split() == ["total:", "52", "subjects", "15", "18", "18"]


def test_list_without_a_data_dir_names_subjects_and_their_total(capsys):
    from run_eval import main

    assert main(["list", "--tasks", "mmlu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["subject", "categories"]  # MMLU has no Chinese names: no empty column
    assert lines[2].split() == ["abstract_algebra", "STEM"]
    assert lines[-1].strip() == "total: 57 subjects"


# --- config.json: paths as typed and resolved -----------------------------------------------------------


def test_config_json_keeps_paths_as_typed_and_resolved_outside_the_hash(tmp_path, monkeypatch):
    import json

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    config = RunConfig(model="latest", task="ceval", data_dir="data", output_dir=str(tmp_path / "results"))
    run = RunDir.open(config, "tiny")
    saved_config = json.loads((run.path / "config.json").read_text(encoding="utf-8"))
    assert (saved_config["config"]["model"], saved_config["config"]["data_dir"]) == ("latest", "data")
    assert saved_config["model_resolved"] == str((tmp_path / "models" / "tiny").resolve())
    assert saved_config["data_dir_resolved"] == str((tmp_path / "data").resolve())
    assert saved_config["config_hash"] == config.config_hash()
    assert "model_resolved" not in config.result_fields()
    assert RunDir.open(config, "tiny").path == run.path  # the same command resumes the run
    hub_config = RunConfig(model="org/Model-7B", task="ceval", output_dir=str(tmp_path / "results"))
    hub = RunDir.open(hub_config, "m")
    saved_hub = json.loads((hub.path / "config.json").read_text(encoding="utf-8"))
    assert saved_hub["config"]["model"] == "org/Model-7B"
    assert "model_resolved" not in saved_hub and "data_dir_resolved" not in saved_hub  # a hub id, no data dir
