"""End to end through the CLI on tiny real models and tiny official-layout data directories."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from support_cli import eval_args, run_dirs_by_task, subjects_in

from run_eval import main

TASKS = ("ceval", "mmlu", "cmmlu")


def count_eval_rows(data_dir: Path, task: str) -> int:
    """Rows of the task's scored split, counted with the csv module (fields may hold newlines)."""
    split, header = {"ceval": ("val", 1), "mmlu": ("test", 0), "cmmlu": ("test", 1)}[task]
    total = 0
    for path in (data_dir / task / split).glob("*.csv"):
        with path.open(encoding="utf-8", newline="") as handle:
            total += len(list(csv.reader(handle))) - header
    return total


def questions(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "a question was written twice"
    return by_id


@pytest.fixture(scope="module")
def full_run(tiny_spm_model_dir, tiny_data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, out, tasks=TASKS)) == 0
    return out


def test_eval_writes_every_question_and_a_complete_run_json(full_run, tiny_data_dir, capsys):
    dirs = run_dirs_by_task(full_run)
    assert set(dirs) == set(TASKS)
    for task, run_dir in dirs.items():
        rows = questions(run_dir)
        assert len(rows) == count_eval_rows(tiny_data_dir, task)
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        assert (
            run["config_hash"]
            == json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config_hash"]
        )
        assert run["scheme"]["name"] == "official"
        assert len(set(run["letter_ids"])) == 4 and len(run["letter_strings"]) == 4
        assert run["overall"]["n"] == len(rows)
        assert sum(m["n"] for m in run["subjects"].values()) == len(rows)
        for row in rows.values():
            assert row["pred"] in "ABCD" and row["gold"] in "ABCD"
            assert row["correct"] == (row["pred"] == row["gold"])
            best = max(range(4), key=lambda i: (row["logprobs"][i], -i))
            assert "ABCD"[best] == row["pred"]
            assert row["shots_used"] == 5 and row["prompt_tokens"] > 0
        assert run["environment"]["packages"]["transformers"]


def test_report_reprints_the_tables_from_saved_results(full_run, capsys):
    assert main(["report", str(full_run), "--csv", str(full_run / "tables.csv")]) == 0
    printed = capsys.readouterr().out
    for header in ("STEM", "Social Sciences", "Humanities", "Others", "Average", "China Specific"):
        assert header in printed
    assert (full_run / "tables.csv").read_text(encoding="utf-8").strip()


def test_results_do_not_depend_on_batch_size_engine_or_placement(
    full_run, tiny_spm_model_dir, tiny_data_dir, tmp_path
):
    reference = {t: questions(d) for t, d in run_dirs_by_task(full_run).items()}
    variants = {
        "small": ["--batch-tokens", "64"],
        "plain": ["--engine", "plain"],
        "mapped": ["--device-map", "auto"],
    }
    for variant, extra in variants.items():
        out = tmp_path / variant
        assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, out, *extra, tasks=TASKS)) == 0
        for task, run_dir in run_dirs_by_task(out).items():
            got = questions(run_dir)
            assert got.keys() == reference[task].keys()
            for qid, row in got.items():
                assert row["pred"] == reference[task][qid]["pred"], (variant, qid)
                assert row["logprobs"] == pytest.approx(reference[task][qid]["logprobs"], abs=1e-4)


def test_rerun_after_a_kill_resumes_to_the_same_results(
    full_run, tiny_spm_model_dir, tiny_data_dir, tmp_path
):
    """The on-disk state a kill -9 leaves (no run.json, a torn last line) resumes to identical results."""
    out = tmp_path / "killed"
    shutil.copytree(full_run, out)
    for run_dir in run_dirs_by_task(out).values():
        (run_dir / "run.json").unlink()
        lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (run_dir / "questions.jsonl").write_text("".join(lines[:3]) + lines[3][:17], encoding="utf-8")
    assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, out, tasks=TASKS)) == 0
    reference = run_dirs_by_task(full_run)
    for task, run_dir in run_dirs_by_task(out).items():
        assert questions(run_dir) == questions(reference[task])
        resumed = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        original = json.loads((reference[task] / "run.json").read_text(encoding="utf-8"))
        assert resumed["overall"] == original["overall"] and resumed["groups"] == original["groups"]
        assert resumed["timings"]["resumed_questions"] == 3


def test_a_different_config_starts_a_new_run(full_run, tiny_spm_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "two"
    shutil.copytree(full_run, out)
    assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, out, "--shots", "2", tasks=("ceval",))) == 0
    configs = [json.loads(p.read_text(encoding="utf-8"))["config"] for p in out.glob("*/config.json")]
    assert sorted(c["shots"] for c in configs if c["task"] == "ceval") == [2, 5]


def test_bpe_tokenizer_scores_in_context_space_letters(tiny_bpe_model_dir, tiny_data_dir, tmp_path):
    assert main(eval_args(tiny_bpe_model_dir, tiny_data_dir, tmp_path, tasks=("mmlu",))) == 0
    run = json.loads((run_dirs_by_task(tmp_path)["mmlu"] / "run.json").read_text(encoding="utf-8"))
    assert run["letter_strings"] == ["ĠA", "ĠB", "ĠC", "ĠD"]
    assert run["bos"] is False


def test_lm_eval_keeps_the_last_max_length_tokens_and_the_hash_records_them(
    tiny_bpe_model_dir, tiny_data_dir, tmp_path
):
    """lm-eval's left truncation to the model's length; prompt_hash fingerprints the ids really scored."""
    from transformers import AutoTokenizer

    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts
    from evalkit.types import token_ids_hash
    from tasks import get_task

    model_dir, limit = tmp_path / "short", 40
    shutil.copytree(tiny_bpe_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    (model_dir / "config.json").write_text(
        json.dumps({**config, "max_position_embeddings": limit}), encoding="utf-8"
    )
    for scheme in ("lm-eval", "official"):
        assert (
            main(eval_args(model_dir, tiny_data_dir, tmp_path / scheme, "--scheme", scheme, tasks=("mmlu",)))
            == 0
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    task = get_task("mmlu")
    texts = {
        p.question.id: p.text
        for d in load_task_data(task, tiny_data_dir, subjects=subjects_in(tiny_data_dir, "mmlu"))
        for p in build_prompts(task.schemes["lm-eval"], d, lambda text: 0)
    }
    truncated = questions(run_dirs_by_task(tmp_path / "lm-eval")["mmlu"])
    full = questions(run_dirs_by_task(tmp_path / "official")["mmlu"])
    assert truncated.keys() == texts.keys() == full.keys()
    for qid, row in truncated.items():
        ids = tokenizer(texts[qid], add_special_tokens=False)["input_ids"]
        assert len(ids) > limit
        assert (row["prompt_tokens"], row["prompt_hash"]) == (limit, token_ids_hash(ids[-limit:]))
        assert full[qid]["prompt_tokens"] > limit and full[qid]["prompt_hash"] != row["prompt_hash"]


def test_sweep_runs_each_precision_on_every_task_and_prints_the_paired_table(
    tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys
):
    args = eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, tasks=("mmlu", "ceval"))
    args[0] = "sweep"
    assert main([*args, "--precision", "fp32,int8,int4", "--quant-backend", "rtn"]) == 0
    printed = capsys.readouterr().out
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in tmp_path.glob("*/run.json")]
    assert sorted((r["config"]["precision"], r["config"]["task"]) for r in runs) == sorted(
        (p, t) for p in ("fp32", "int8", "int4") for t in ("mmlu", "ceval")
    )
    weights = {r["config"]["precision"]: r["model_info"]["weight_bytes"] for r in runs}
    assert weights["int4"] < weights["int8"] < weights["fp32"]
    precision_table = printed[printed.index("## Precision") :].split("### Letter distributions", 1)[0]
    rows = {
        line.split("|")[1].strip(): line
        for line in precision_table.splitlines()
        if line.startswith("| model ")
    }
    assert set(rows) == {"model fp32", "model int8/rtn", "model int4/rtn"}
    assert rows["model int4/rtn"].count("[") == 2 and "[" not in rows["model fp32"]  # Δ [CI] per benchmark
    assert "95% CI" in printed[: printed.index("## Precision")]  # the benchmark tables carry CIs too
    assert "### Letter distributions against full precision" in printed  # KL beside the accuracy deltas


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_llm_int8_scores_one_prompt_per_forward(tiny_spm_model_dir, tiny_data_dir, tmp_path):
    """LLM.int8 picks its fp16 outlier columns from every token in a forward, so each question must be
    scored alone: the saved log-probs equal a batch-1 forward of exactly the saved prompt."""
    import torch

    from evalkit.models.loading import load_model
    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts
    from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens
    from evalkit.types import token_ids_hash
    from tasks import get_task

    assert (
        main(eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, "--precision", "int8", tasks=("mmlu",)))
        == 0
    )
    run_dir = run_dirs_by_task(tmp_path)["mmlu"]
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert run["engine"] == "isolated" and run["config"]["quant_backend"] == "bnb"
    loaded, task = load_model(str(tiny_spm_model_dir), "int8", "cpu"), get_task("mmlu")
    scheme = task.schemes["official"]
    letters = list(letter_tokens(loaded.tokenizer, scheme.letter_rule, scheme).ids)
    saved = questions(run_dir)
    for data in load_task_data(task, tiny_data_dir, subjects=subjects_in(tiny_data_dir, "mmlu")):
        prompts = build_prompts(scheme, data, count_tokens_fn(loaded.tokenizer, scheme.bos))
        for prompt, ids in zip(
            prompts, encode_prompts(loaded.tokenizer, [p.text for p in prompts], scheme.bos)
        ):
            row = saved[prompt.question.id]
            assert row["prompt_hash"] == token_ids_hash(ids)
            with torch.inference_mode():
                alone = torch.log_softmax(
                    loaded.model(torch.tensor([ids])).logits[0, -1, letters].float(), -1
                )
            assert torch.allclose(torch.tensor(row["logprobs"]), alone, atol=1e-5), prompt.question.id


def test_limit_is_flagged_in_the_report(tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys):
    assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, "--limit", "2", tasks=("cmmlu",))) == 0
    run_dir = run_dirs_by_task(tmp_path)["cmmlu"]
    assert len(questions(run_dir)) == 2 * len(subjects_in(tiny_data_dir, "cmmlu"))
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["limited"] is True
    assert "limit" in capsys.readouterr().out.lower()


def test_ceval_test_split_writes_a_submission_and_no_accuracy(tiny_spm_model_dir, tiny_data_dir, tmp_path):
    if not (tiny_data_dir / "ceval" / "test").is_dir():
        pytest.skip("fixture wrote no C-Eval test split")
    assert (
        main(eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, "--split", "test", tasks=("ceval",))) == 0
    )
    run_dir = run_dirs_by_task(tmp_path)["ceval"]
    submission = json.loads((run_dir / "submission.json").read_text(encoding="utf-8"))
    assert set(submission) == set(subjects_in(tiny_data_dir, "ceval"))
    assert all(answer in "ABCD" for answers in submission.values() for answer in answers.values())
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["overall"] is None


def test_bad_input_exits_2_with_the_file_and_row(tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    subject = subjects_in(data, "mmlu")[0]
    bad = data / "mmlu" / "test" / f"{subject}_test.csv"
    bad.write_text(bad.read_text(encoding="utf-8") + "q,a,b,c,d,E\n", encoding="utf-8")
    assert main(eval_args(tiny_spm_model_dir, data, tmp_path / "out", tasks=("mmlu",))) == 2
    message = capsys.readouterr().err
    assert bad.name in message and "E" in message and "row" in message.lower()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*/questions.jsonl"))


def test_unknown_task_and_subject_suggest_the_right_name(capsys):
    assert main(["eval", "--model", "x", "--tasks", "cevl"]) == 2
    assert "did you mean ceval" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--tasks", "ceval", "--subjects", "acountant"]) == 2
    assert "accountant" in capsys.readouterr().err


def test_bench_command_writes_table_json_and_plot(tiny_bpe_model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--model",
                str(tiny_bpe_model_dir),
                "--precision",
                "fp32",
                "--new-tokens",
                "4",
                "--prompt-tokens",
                "8",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "tokens/s" in capsys.readouterr().out
    saved = json.loads(next(tmp_path.glob("*.json")).read_text(encoding="utf-8"))
    assert saved and list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_smollm2_on_real_data_end_to_end(smollm_gguf, shared_data, tmp_path, capsys):
    """The real GGUF model on one real subject of each benchmark, through the CLI."""
    subjects = "ceval/law,mmlu/anatomy,cmmlu/agronomy"
    assert (
        main(
            [
                "eval",
                "--model",
                str(smollm_gguf),
                "--data-dir",
                str(shared_data),
                "--subjects",
                subjects,
                "--limit",
                "3",
                "--output-dir",
                str(tmp_path),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "## C-Eval" in printed and "## MMLU" in printed and "## CMMLU" in printed
    dirs = run_dirs_by_task(tmp_path)
    letters = {
        t: json.loads((d / "run.json").read_text(encoding="utf-8"))["letter_strings"] for t, d in dirs.items()
    }
    assert letters == {
        "mmlu": ["ĠA", "ĠB", "ĠC", "ĠD"],
        "ceval": ["A", "B", "C", "D"],
        "cmmlu": ["A", "B", "C", "D"],
    }
    for run_dir in dirs.values():
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        assert run["overall"]["n"] == 3 and run["limited"] is True
        assert run["model_info"]["weights_format"].startswith("gguf")
        assert all(row["shots_used"] == 5 for row in questions(run_dir).values())


@pytest.mark.slow
def test_smollm2_sweep_fp32_int8_int4_on_real_data(smollm_gguf, shared_data, tmp_path, capsys):
    """The default backend (bitsandbytes) through `sweep`: one load per precision, a run per task."""
    subjects = "ceval/law,mmlu/anatomy,cmmlu/agronomy"
    assert (
        main(
            [
                "sweep",
                "--model",
                str(smollm_gguf),
                "--data-dir",
                str(shared_data),
                "--subjects",
                subjects,
                "--limit",
                "2",
                "--precision",
                "fp32,int8,int4",
                "--output-dir",
                str(tmp_path),
                "--no-progress",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in tmp_path.glob("*/run.json")]
    assert sorted((r["config"]["precision"], r["config"]["task"]) for r in runs) == sorted(
        (p, t) for p in ("fp32", "int8", "int4") for t in TASKS
    )
    info = {r["config"]["precision"]: r["model_info"] for r in runs}
    assert info["int4"]["weight_bytes"] < info["int8"]["weight_bytes"] < info["fp32"]["weight_bytes"] / 2
    assert info["int8"]["quant_backend"] == info["int4"]["quant_backend"] == "bnb"
    assert {r["engine"] for r in runs if r["config"]["precision"] == "int8"} == {
        "isolated"
    }  # LLM.int8: see above
    precision_table = printed[printed.index("## Precision") :].split("### Letter distributions", 1)[0]
    rows = [line for line in precision_table.splitlines() if "SmolLM2" in line]
    assert [row.split("|")[1].split("⚠")[0].strip() for row in rows] == [
        "SmolLM2-135M-Instruct.Q4_1 fp32",
        "SmolLM2-135M-Instruct.Q4_1 int8/bnb",
        "SmolLM2-135M-Instruct.Q4_1 int4/bnb",
    ]
    assert all(row.count("[") == 3 for row in rows[1:])  # Δ [95% CI] for each of the three benchmarks
