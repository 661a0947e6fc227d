"""What the command line tells its user: --help, the plan before scoring, warnings, hub failures."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
from support_cli import eval_args, run_dirs_by_task

import run_eval
from evalkit.cli.common import third_party_warnings_once
from run_eval import build_parser, main

COMMANDS = ("eval", "sweep", "report", "compare", "bench", "list")


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def option_blocks(text: str) -> dict[str, str]:
    """Each flag's help entry in an --help text, by its first flag."""
    section = text.split("options:\n", 1)[1].split("\n\n", 1)[0]
    blocks: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        if re.match(r"^  -", line):
            name = line.split()[0].rstrip(",")
            blocks[name] = ""
        blocks[name] += " " + line.strip()
    return blocks


# ---------------------------------------------------------------- --help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_a_description_two_examples_and_one_default_per_flag(
    command, capsys, monkeypatch
):
    monkeypatch.setattr(sys, "argv", ["run_eval.py"])
    text = help_text(capsys, command)
    description = text.split("\n\n")[1]
    assert len(description.split()) > 10 and not description.startswith("options")
    examples = text.split("examples:\n", 1)[1].splitlines()
    assert len(examples) == 2 and all(e.startswith(f"  python run_eval.py {command}") for e in examples)
    for flag, entry in option_blocks(text).items():
        assert entry.count("default") <= 1, f"{command} {flag}: {entry}"
        assert not re.search(r"default: (None|False|\))", entry), f"{command} {flag}: {entry}"
        assert not re.search(r"default: [\[(]", entry), f"{command} {flag} shows a Python list: {entry}"


def test_defaults_and_choices_come_from_their_owners_as_typed(capsys):
    from evalkit.bench.schema import DEVICE_DEFAULTS, BenchSettings
    from evalkit.machine import DEVICE_MAPS
    from evalkit.models.quant.plans import PRECISIONS, QUANT_BITS
    from evalkit.types import RunConfig
    from tasks import DEFAULT_TASKS

    defaults = RunConfig(model="", task="")
    eval_help = " ".join(option_blocks(help_text(capsys, "eval")).values())
    eval_help = " ".join(eval_help.split())  # argparse wraps where it likes
    assert f"(default: {','.join(DEFAULT_TASKS)})" in eval_help
    assert "{" + ",".join(DEVICE_MAPS) + "}" in eval_help
    assert f"one of {', '.join(PRECISIONS)} (default: {defaults.precision})" in eval_help
    assert f"(default: {defaults.output_dir})" in eval_help and f"(default: {defaults.seed})" in eval_help
    sweep_help = " ".join(" ".join(option_blocks(help_text(capsys, "sweep")).values()).split())
    assert f"(default: {','.join((defaults.precision, *QUANT_BITS))})" in sweep_help
    bench_text = help_text(capsys, "bench")
    bench_help = " ".join(" ".join(option_blocks(bench_text).values()).split())
    cuda, cpu = DEVICE_DEFAULTS["cuda"], DEVICE_DEFAULTS["cpu"]
    assert f"(default: {cuda.new_tokens} on CUDA, {cpu.new_tokens} on CPU)" in bench_help
    assert f"(default: {cuda.precision} on CUDA, {cpu.precision} on CPU)" in bench_help
    assert f"(default: {BenchSettings().prompt_tokens})" in bench_help
    assert "fp16 and 2048 on CUDA, fp32 and 256 on CPU" in " ".join(bench_text.split())


def test_bench_defaults_fit_the_device(tiny_bpe_model_dir, tmp_path, capsys):
    from evalkit.bench.schema import DEVICE_DEFAULTS

    assert (
        main(
            [
                "bench",
                "--model",
                str(tiny_bpe_model_dir),
                "--prompt-tokens",
                "4",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    cpu = DEVICE_DEFAULTS["cpu"]
    assert f"{cpu.new_tokens} new tokens after 4 prompt tokens" in out
    assert re.search(rf"\|\s*{cpu.precision}\s*\|", out), out


@pytest.mark.parametrize(
    "argv0, prog", [("/venv/bin/evalkit", "evalkit"), ("run_eval.py", "python run_eval.py")]
)
def test_program_name_reads_well_as_console_command_and_script(argv0, prog, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [argv0])
    top = help_text(capsys)
    assert top.startswith(f"usage: {prog} [-h] COMMAND ...") and f"  {prog} report results/" in top
    assert help_text(capsys, "list").startswith(f"usage: {prog} list")


def test_console_entry_point_reads_sys_argv_and_returns_the_status(capsys, monkeypatch):
    """`[project.scripts] evalkit = "run_eval:main"` calls main() without arguments, exits with its value."""
    monkeypatch.setattr(sys, "argv", ["evalkit", "list", "--tasks", "mmlu"])
    assert main() == 0
    assert capsys.readouterr().out.startswith("mmlu (MMLU)")
    monkeypatch.setattr(sys, "argv", ["evalkit", "list", "--tasks", "mmlux"])
    assert main() == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_parser_program_name_can_be_given():
    assert build_parser("evalkit").format_usage().startswith("usage: evalkit")


# ---------------------------------------------------------------- the plan


def expected_tokens(model_dir: Path, data_dir: Path, task_name: str) -> tuple[int, int, int]:
    """(questions, tokens without reuse, with reuse), from the prompts' token ids and the prefix groups."""
    from transformers import AutoTokenizer

    from evalkit.backends.hf.batching import prefix_groups
    from evalkit.questions.data import load_task_data
    from evalkit.questions.prompts import build_prompts
    from evalkit.questions.tokens import count_tokens_fn, encode_prompts
    from tasks import get_task

    task = get_task(task_name)
    scheme = task.schemes["official"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    subjects = [p.stem.removesuffix("_dev") for p in sorted((data_dir / task_name / "dev").glob("*.csv"))]
    questions = without = saved = 0
    for data in load_task_data(task, data_dir, subjects=subjects):
        prompts = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos), n_shots=5)
        ids = encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos)
        questions += len(ids)
        without += sum(map(len, ids))
        saved += sum((len(members) - 1) * prefix for prefix, members in prefix_groups(ids))
    return questions, without, without - saved


def test_eval_prints_the_plan_and_one_estimate_per_task(tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys):
    assert main(eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, tasks=("mmlu", "cmmlu"))) == 0
    err = capsys.readouterr().err
    for task, title in (("mmlu", "MMLU"), ("cmmlu", "CMMLU")):
        questions, without, with_reuse = expected_tokens(tiny_spm_model_dir, tiny_data_dir, task)
        assert with_reuse < without
        assert (
            f"{title} official fp32: {questions} questions to score in 3 subjects; prompt tokens to "
            f"compute: {without:,} without prefix reuse, {with_reuse:,} with it, "
            f"{without / with_reuse:.1f}x fewer\n" in err
        ), err
        estimates = re.findall(
            rf"^{title} official fp32: \d+ questions scored in [\d.]+ s: "
            rf"about [\d.]+ (?:s|min|h) for the {questions} questions to score$",
            err,
            re.M,
        )
        assert len(estimates) == 1, err
        assert err.index(f"{title} official fp32: {questions} questions") < err.index(estimates[0])
    warned = [line for line in err.splitlines() if "Warning" in line]
    assert len(warned) == len(set(warned)), "a warning was shown twice"
    assert "resuming" not in err


def test_a_resumed_run_says_how_much_was_scored(tiny_spm_model_dir, tiny_data_dir, tmp_path, capsys):
    args = eval_args(tiny_spm_model_dir, tiny_data_dir, tmp_path, tasks=("ceval",))
    assert main(args) == 0
    run_dir = run_dirs_by_task(tmp_path)["ceval"]
    total = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["timings"]["questions"]
    (run_dir / "run.json").unlink()
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (run_dir / "questions.jsonl").write_text("".join(lines[:4]), encoding="utf-8")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"resuming {run_dir}: 4 of {total} questions already scored\n" in err
    assert f"C-Eval official fp32: {total - 4} questions to score" in err


# ---------------------------------------------------------------- warnings


def test_third_party_future_warnings_show_once_in_one_line(capsys):
    with third_party_warnings_once():
        for _ in range(3):
            with warnings.catch_warnings():  # as libraries do: it resets the "already shown" registries
                warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
            warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    shown = "warning: FutureWarning: `past_key_values` is deprecated (tests/test_cli.py:"
    assert lines[0].startswith(shown), err


# ---------------------------------------------------------------- the hub


def test_an_unreachable_hub_model_or_dataset_names_the_local_alternative(
    tiny_data_dir, tiny_spm_model_dir, tmp_path, capsys, monkeypatch
):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    args = ["--tasks", "mmlu", "--subjects", "anatomy", "--output-dir", str(tmp_path)]
    assert main(["eval", "--model", "some-org/some-model", "--data-dir", str(tiny_data_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Retry" not in err, err
    assert err.startswith("error: cannot reach the Hugging Face hub (http://127.0.0.1:9: ")
    assert "'some-org/some-model'" in err and "pass its local directory or .gguf file as --model" in err
    assert main(["eval", "--model", str(tiny_spm_model_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot reach the Hugging Face hub"), err
    assert "to load cais/mmlu; pass --data-dir with the official MMLU CSV files" in err


def test_the_real_hub_id_fails_with_one_line(tiny_data_dir, tmp_path):
    """No network here: the real endpoint is probed once; exit 2, one line, nothing retried."""
    import subprocess

    repo = Path(run_eval.__file__).resolve().parent
    command = [
        sys.executable,
        str(repo / "run_eval.py"),
        "eval",
        "--model",
        "some-org/some-model",
        "--tasks",
        "mmlu",
        "--subjects",
        "anatomy",
        "--data-dir",
        str(tiny_data_dir),
        "--output-dir",
        str(tmp_path),
    ]
    # a fresh HOME: no hub cache, no token; the timeout only guards the suite (retries took 25 s)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "'some-org/some-model'" in lines[0] and "--model" in lines[0], done.stderr


def test_the_plan_counts_a_shared_prefix_once_and_only_questions_left():
    from evalkit.run.plan import token_plan

    prefix = list(range(1000, 1200))  # 200 shared tokens: a prefix group of three
    prompts = [prefix + [1, 2], prefix + [3], prefix + [4, 5, 6]]
    fresh = token_plan([(prompts, [0, 1, 2])])
    assert (fresh.questions, fresh.todo, fresh.plain_tokens) == (3, 3, 606)
    assert fresh.reuse_tokens == 606 - 2 * 200
    resumed = token_plan([(prompts, [0, 2]), ([[7, 8, 9]], [])])
    assert (resumed.subjects, resumed.questions, resumed.done) == (1, 4, 2)
    assert (resumed.plain_tokens, resumed.reuse_tokens) == (405, 405 - 200)


@pytest.mark.parametrize(
    "backend, flag",
    [
        ("vllm", ["--mode", "compiled"]),
        ("vllm", ["--compile-backend", "aot_eager"]),
        ("vllm", ["--quant-backend", "rtn"]),
        ("hf", ["--tensor-parallel-size", "2"]),
        ("hf", ["--enforce-eager"]),
    ],
)
def test_bench_refuses_the_other_backends_flags_before_loading(backend, flag, tmp_path, capsys, monkeypatch):
    def no_bench(*args, **kwargs):  # nothing may load: the refusal comes first
        raise AssertionError("run_bench reached")

    monkeypatch.setattr("evalkit.bench.runs.run_bench", no_bench)
    argv = ["bench", "--model", str(tmp_path / "absent"), "--backend", backend, *flag]
    assert main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    other = "vllm" if backend == "hf" else "hf"
    assert err == f"error: {flag[0]} is for --backend {other} only; this run is --backend {backend}\n"
