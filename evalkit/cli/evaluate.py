"""`eval` and `sweep`: score one model on the tasks, at one precision or at several (each loaded once)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evalkit.backends import refuse_foreign_flags
from evalkit.cli.common import (
    DEFAULTS,
    add_backend_flags,
    add_task_file_flag,
    backend_settings,
    comma_list,
    int_at_least,
    literal_choices,
    register_task_files,
    subcommand,
)
from evalkit.machine import DEVICE_MAPS, DEVICES
from evalkit.models.quant.choices import DEFAULT_QUANT_BACKEND, PRECISIONS, QUANT_BACKENDS, QUANT_BITS
from evalkit.types import RunConfig
from tasks import DEFAULT_TASKS, TASKS, expand_tasks, get_task

if TYPE_CHECKING:
    from evalkit.store.records import ReportRun


def add_parsers(sub: argparse._SubParsersAction, program: str) -> None:
    p_eval = subcommand(
        sub,
        "eval",
        "score a model on the tasks",
        "Score one model at one precision on 5-shot C-Eval, MMLU and CMMLU (or --tasks): questions.jsonl "
        "is written as questions are scored, run.json last; rerunning the same command resumes. Prints the "
        "plan (questions, prompt tokens) and a time estimate on stderr, the tables on stdout.",
        [
            "eval --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --data-dir ../shared/data "
            "--limit 10",
            "eval --model /models/Baichuan-13B-Base --precision bf16 --tasks ceval,cmmlu",
        ],
        program,
    )
    add_eval_flags(p_eval)
    p_eval.set_defaults(func=cmd_eval)
    p_sweep = subcommand(
        sub,
        "sweep",
        "one model at several precisions: each loaded once, every task run on it",
        "Run eval at each --precision in turn: the model is loaded once per precision, every task is run "
        "on it, and it is freed before the next. Prints the tables and the quantization table (delta to "
        "full precision with paired 95% intervals).",
        [
            "sweep --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --data-dir ../shared/data "
            "--limit 10",
            "sweep --model /models/Baichuan-13B-Base --precision fp16,int8,int4 --quant-backend rtn",
        ],
        program,
    )
    add_eval_flags(p_sweep, sweep=True)
    p_sweep.set_defaults(func=cmd_sweep)


def add_eval_flags(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The flags of `eval` and `sweep` (which takes a list of precisions), in four groups."""
    _add_question_flags(parser)
    _add_precision_flags(parser, sweep)
    _add_engine_flags(parser)
    _add_run_flags(parser)


def _add_question_flags(parser: argparse.ArgumentParser) -> None:
    """What is scored: the model, tasks, data, subjects, scheme, shots."""
    own_splits = ", ".join(f"{name} {task.eval_split}" for name, task in TASKS.items())
    parser.add_argument("--model", required=True, help="hub id, local checkpoint directory, or a .gguf file")
    parser.add_argument(
        "--tasks",
        type=comma_list,
        default=",".join(DEFAULT_TASKS),
        help=f"comma list of tasks from {', '.join(TASKS)} or declared with --task-file; all: every one",
    )
    parser.add_argument(
        "--data-dir",
        help="local copy of the benchmarks in their official layouts "
        f"(<dir>/{{{','.join(TASKS)}}}/...); default: the hub datasets (agieval, gaokao and declared "
        "tasks need it)",
    )
    add_task_file_flag(parser)
    parser.add_argument(
        "--split",
        help=f"split to score (default: each task's own: {own_splits}; "
        "ceval test writes the leaderboard submission JSON)",
    )
    parser.add_argument(
        "--subjects", type=comma_list, help="comma list of subjects ('law' or 'ceval/law'; default: all)"
    )
    parser.add_argument(
        "--scheme",
        default=DEFAULTS.scheme,
        choices=sorted({s for t in TASKS.values() for s in t.schemes}),
        help="prompt/scoring scheme: official (the benchmarks' own code), baichuan "
        "(Baichuan's evaluation scripts), lm-eval (lm-evaluation-harness)",
    )
    parser.add_argument(
        "--letter-token",
        choices=literal_choices(RunConfig, "letter_rule"),
        help="override the scheme's rule for the A/B/C/D token ids",
    )
    parser.add_argument(
        "--shots",
        type=int_at_least(0),
        help="few-shot examples per prompt, capped by a scheme's per-subject counts (default: the "
        "scheme's: 5; agieval official 1/3/5 per subset; gaokao official 0)",
    )
    parser.add_argument(
        "--max-length",
        type=int_at_least(1),
        help="token limit of the scheme's length policy, recorded in the config (default: the "
        "scheme's, 2048; e.g. 4096 for the baichuan scheme of agieval/gaokao)",
    )
    parser.add_argument(
        "--limit", type=int_at_least(1), help="score only the first N questions of each subject (smoke runs)"
    )


def _add_precision_flags(parser: argparse.ArgumentParser, sweep: bool) -> None:
    """At which precision(s), and how int8/int4 are made."""
    if sweep:  # full precision, then every quantized one
        parser.add_argument(
            "--precision",
            type=comma_list,
            default=",".join((DEFAULTS.precision, *QUANT_BITS)),
            help=f"comma list of precisions from {', '.join(PRECISIONS)}",
        )
    else:
        parser.add_argument(
            "--precision",
            "--dtype",
            dest="precision",
            default=DEFAULTS.precision,
            choices=PRECISIONS,
            metavar="PRECISION",
            help=f"one of {', '.join(PRECISIONS)}",
        )
    parser.add_argument(
        "--quant-backend",
        choices=QUANT_BACKENDS,
        help=f"int8/int4 method (default: {DEFAULT_QUANT_BACKEND}, i.e. LLM.int8 / NF4): "
        "torchao (weight-only), "
        "rtn (per-channel absmax round-to-nearest, Baichuan's quantize()), model (the "
        "model's own quantize(bits): --trust-remote-code, except on the native Baichuan ports)",
    )


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """Where and how the model runs: device, placement, remote code, the HF engine's batching."""
    parser.add_argument("--device", default=DEFAULTS.device, help=f"one of {', '.join(DEVICES)}")
    parser.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="spread one model over all visible GPUs (transformers/accelerate) instead of "
        "one device; for models too large for one GPU (not under accelerate launch)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own Python code (never needed, nor used, for the Baichuan "
        "models, which evalkit runs natively)",
    )
    parser.add_argument(
        "--batch-tokens",
        type=int_at_least(1),
        help="token budget per batch (default: sized for the device); lower it after an out-of-memory error",
    )
    parser.add_argument(
        "--engine",
        choices=literal_choices(RunConfig, "engine"),
        help="prefix: reuse the subject's shared prompt prefix (KV cache); plain: full "
        f"prompts; auto: prefix where it saves enough (default: {DEFAULTS.engine}; --backend hf only)",
    )


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The backend and its own flags, and the run's seed, threads, output and progress."""
    add_backend_flags(parser)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of schemes that shuffle shots")
    parser.add_argument(
        "--permute",
        choices=literal_choices(RunConfig, "permute"),
        default=DEFAULTS.permute,
        help="cyclic: score every question under the four cyclic rotations of its options (the gold "
        "letter moves with its text; shots unchanged) and report circular accuracy, mean accuracy over "
        "rotations and position bias; a run of its own configuration, compared only with runs permuted "
        f"the same way (default: {DEFAULTS.permute})",
    )
    parser.add_argument(
        "--threads",
        type=int_at_least(1),
        help="torch CPU threads (default: torch's own; recorded in run.json)",
    )
    parser.add_argument("--output-dir", default=DEFAULTS.output_dir, help="where run directories go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _sweep(args: argparse.Namespace, precisions: Sequence[str]) -> list[ReportRun]:
    """`eval` and `sweep`: the flags as a RunConfig, the tasks resolved here (evalkit does not import
    tasks/), the loop in evalkit.run.sweep."""
    from evalkit.run.sweep import run_sweep

    refuse_foreign_flags(vars(args), args.backend)
    register_task_files(args)
    tasks = [get_task(name) for name in expand_tasks(args.tasks)]
    config = RunConfig(
        model=args.model,
        task="",
        data_dir=args.data_dir,
        split=args.split,
        scheme=args.scheme,
        letter_rule=args.letter_token,
        shots=DEFAULTS.shots if args.shots is None else args.shots,
        max_length=args.max_length,
        limit=args.limit,
        quant_backend=args.quant_backend,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
        batch_tokens=args.batch_tokens,
        engine=args.engine or DEFAULTS.engine,
        output_dir=args.output_dir,
        progress=not args.no_progress,
        backend=args.backend,
        permute=args.permute,
        **backend_settings(args),
    )
    return run_sweep(
        tasks, config, precisions, args.subjects, args.device_map, scheme_shots=args.shots is None
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from evalkit.machine import is_main_process
    from evalkit.report.calibration_tables import calibration_markdown
    from evalkit.report.tables_markdown import to_markdown
    from tasks.references import published_rows

    runs = _sweep(args, [args.precision])
    if is_main_process():
        print(to_markdown(runs, published_rows()))
        if calibration := calibration_markdown(runs):
            print(calibration)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from evalkit.machine import is_main_process
    from evalkit.report.calibration_tables import calibration_markdown
    from evalkit.report.quantization import build_quant_table
    from evalkit.report.quantization_markdown import quant_markdown
    from evalkit.report.tables_markdown import to_markdown
    from tasks.references import published_quantization, published_rows

    runs = _sweep(args, args.precision)
    if is_main_process():
        print(to_markdown(runs, published_rows()))
        if calibration := calibration_markdown(runs):
            print(calibration)
        print(quant_markdown(build_quant_table(runs, published_quantization())))
    return 0
