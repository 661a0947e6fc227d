"""evalkit command line: 5-shot C-Eval / MMLU / CMMLU scored like the official code.

Examples:
  python run_eval.py eval --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data-dir ../shared/data --tasks ceval,mmlu,cmmlu --limit 10
  python run_eval.py eval --model /models/Baichuan-13B-Base --trust-remote-code --precision bf16 --device cuda
  python run_eval.py report results/
  python run_eval.py list --data-dir ../shared/data

Each command's --help shows its flags, their defaults and two examples. Installed (pip install .),
the same program is the `evalkit` command. Exit status: 0 on success, 1 when a compare gate fails,
2 on a user error (one line `error: ...`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap
import typing
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.types import VLLM_ENGINE_FIELDS, EvalkitError, RunConfig
from tasks import TASKS, get_task

if TYPE_CHECKING:
    from evalkit.report.tables import ReportRun
    from evalkit.store.records import SavedRun

log = logging.getLogger("evalkit")
DEFAULTS = RunConfig(model="", task="")
DESCRIPTION_WIDTH = 100  # subcommand descriptions, wrapped by us: the formatter keeps the examples' lines


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _int_at_least(low: int) -> typing.Callable[[str], int]:
    """An argparse type: an integer >= low (the flag's range, checked before anything loads)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in its messages
    return parse


def _int_list_at_least(low: int) -> typing.Callable[[str], list[int]]:
    one = _int_at_least(low)
    return lambda text: [one(item) for item in _comma_list(text)]


def _model_match(text: str) -> tuple[str, str]:
    """report --match MODEL=NAME."""
    model, sep, name = text.partition("=")
    if not sep or not model.strip() or not name.strip():
        raise argparse.ArgumentTypeError(
            f"expected MODEL=NAME (a run's short model name = a published row), got {text!r}"
        )
    return model.strip(), name.strip()


def _sweep(args: argparse.Namespace, precisions: Sequence[str]) -> list[ReportRun]:
    """`eval` and `sweep`: the flags as a RunConfig, the tasks resolved here (evalkit does not import
    tasks/), the loop in evalkit.run.sweep."""
    from evalkit.run.sweep import run_sweep

    check_backend_flags(args)
    tasks = [get_task(name) for name in args.tasks]
    config = RunConfig(
        model=args.model,
        task="",
        data_dir=args.data_dir,
        split=args.split,
        scheme=args.scheme,
        letter_rule=args.letter_token,
        shots=args.shots,
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
        **{name: getattr(args, name) for name in VLLM_ENGINE_FIELDS if getattr(args, name) is not None},
    )
    return run_sweep(tasks, config, precisions, args.subjects, args.device_map)


# the flags only the HF scorer reads, and those only HF generate (bench) reads
HF_FLAGS = ("engine", "device_map", "quant_backend", "batch_tokens")
HF_BENCH_FLAGS = ("mode", "compile_backend", "quant_backend")


def check_backend_flags(args: argparse.Namespace, hf_only: Sequence[str] = HF_FLAGS) -> None:
    """Flags of the other backend are refused (they would be silently ignored), before anything loads;
    `hf_only`: the command's flags that --backend vllm has no use for."""
    other = hf_only if args.backend == "vllm" else VLLM_ENGINE_FIELDS
    given = [f"--{name.replace('_', '-')}" for name in other if getattr(args, name) not in (None, False)]
    if given:
        owner = "--backend hf" if args.backend == "vllm" else "--backend vllm"
        raise EvalkitError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for {owner} only; "
            f"this run is --backend {args.backend}"
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


def _saved_runs(paths: Sequence[str]) -> dict[Path, SavedRun]:
    """Finished runs found under `paths`, by directory."""
    from evalkit.store.saved_runs import find_runs, load_run

    runs = {path: load_run(path) for path in find_runs(paths)}
    if not runs:
        raise EvalkitError(f"no finished runs (run.json) under {', '.join(map(str, paths))}")
    return runs


def cmd_report(args: argparse.Namespace) -> int:
    from evalkit.report.calibration_tables import calibration_markdown
    from evalkit.report.csv import write_csv
    from evalkit.report.html import write_html
    from evalkit.report.quantization import PRECISION_TABLE, build_quant_table, show_precision
    from evalkit.report.quantization_markdown import quant_markdown
    from evalkit.report.tables import ReportRun
    from evalkit.report.tables_markdown import to_markdown
    from evalkit.store.saved_runs import short_model_name
    from tasks.references import published_quantization, published_rows

    published = () if args.no_published else published_rows()
    quant_published = () if args.no_published else published_quantization()
    matches = dict(args.match)
    runs = [
        ReportRun(
            saved.result,
            get_task(saved.result.config.task),
            path,
            saved.questions,
            matches.get(short_model_name(saved.result.config.model)),
        )
        for path, saved in _saved_runs(args.paths).items()
    ]
    print(to_markdown(runs, published, args.reference))
    if calibration := calibration_markdown(runs, args.ece_bins):
        print(calibration)
    quant = PRECISION_TABLE[args.precision_table]
    table = build_quant_table(runs, quant_published)
    if show_precision(table, quant):
        print(quant_markdown(table))
    if args.csv:
        write_csv(runs, args.csv, published, args.reference, args.ece_bins)
        print(f"CSV written: {args.csv}", file=sys.stderr)
    if args.html:
        page = write_html(runs, args.html, published, args.reference, quant_published, quant, args.ece_bins)
        print(f"HTML written: {page.path} (plots: {', '.join(str(p) for p in page.plots)})", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from evalkit.report.compare_tables import to_markdown
    from evalkit.stats.compare import check_thresholds, compare

    gates = {
        "max_drop": args.max_drop,
        "max_kl": args.max_kl,
        "min_agreement": args.min_agreement,
        "max_ece_increase": args.max_ece_increase,
    }
    check_thresholds(**gates)  # before reading any run: a NaN gate is refused, never passed
    runs_a, runs_b = list(_saved_runs([args.a]).values()), list(_saved_runs([args.b]).values())
    comparison = compare(
        runs_a, runs_b, get_task, **gates, allow_subset=args.allow_subset, bins=args.ece_bins
    )
    print(to_markdown(comparison, all_subjects=args.all_subjects))
    return 0 if comparison.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from evalkit.bench.hf_bench import run_bench
    from evalkit.bench.report import format_table, write_outputs
    from evalkit.bench.schema import BenchSettings, device_defaults
    from evalkit.models.loading import resolve_device

    check_backend_flags(args, HF_BENCH_FLAGS)
    fitting = device_defaults(resolve_device(args.device))  # what was not given, fitted to the device
    precisions = args.precision or [fitting.precision]
    new_tokens = fitting.new_tokens if args.new_tokens is None else args.new_tokens
    defaults = BenchSettings()
    vllm = None
    if args.backend == "vllm":
        from evalkit.backends.vllm.engine import VllmSettings

        given = {name: getattr(args, name) for name in VLLM_ENGINE_FIELDS if getattr(args, name) is not None}
        vllm = VllmSettings(trust_remote_code=args.trust_remote_code, **given)
    settings = BenchSettings(
        new_tokens=new_tokens,
        prompt_tokens=args.prompt_tokens,
        batch_sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        warmup=args.warmup,
        mode=args.mode or defaults.mode,
        device=args.device,
        quant_backend=args.quant_backend,
        trust_remote_code=args.trust_remote_code,
        threads=args.threads,
        compile_backend=args.compile_backend or defaults.compile_backend,
        backend=args.backend,
        vllm=vllm,
    )
    report = run_bench(args.model, precisions, settings)
    print(format_table(report))
    for path in write_outputs(report, args.output_dir):
        print(f"written: {path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from evalkit.questions.data import count_rows
    from evalkit.report.listing import task_listing

    for name in args.tasks:
        task = get_task(name)
        counts = (
            {split: count_rows(task, args.data_dir, split) for split in task.splits} if args.data_dir else {}
        )
        print(task_listing(task, counts))
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; each flag's default shown once, as it is typed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`, not `in`: a default of 0 equals False and is shown
        unset = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        unset = unset or action.default in ([], "")
        if "default" in text or not action.option_strings or unset:
            return text
        return f"{text} (default: {_as_typed(action.default)})"


def _as_typed(value: object) -> str:
    """A default the way it is typed on the command line (comma lists, not Python lists); %-escaped."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("%", "%%")


def _prog() -> str:
    """`evalkit` when run as the installed console command, else the script's own command line."""
    return "evalkit" if Path(sys.argv[0]).stem == "evalkit" else "python run_eval.py"


def _examples(prog: str, *commands: str) -> str:
    return "examples:\n" + "\n".join(f"  {prog} {command}" for command in commands)


def _subcommand(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str,
    examples: Sequence[str],
    prog: str,
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary, its description (wrapped here, so that the examples keep
    their lines) and two examples, shown in its --help."""
    wrapped = textwrap.fill(" ".join(description.split()), DESCRIPTION_WIDTH)
    return sub.add_parser(
        name,
        help=summary,
        description=wrapped,
        epilog=_examples(prog, *examples),
        formatter_class=HelpFormatter,
    )


def _literal_choices(cls: type, field_name: str) -> tuple[str, ...]:
    """The values of a Literal-typed field of a record (RunConfig.engine, ...), where they are defined."""
    hint = typing.get_type_hints(cls)[field_name]
    literals = [hint] if typing.get_origin(hint) is typing.Literal else typing.get_args(hint)  # X | None
    values = [value for literal in literals for value in typing.get_args(literal)]
    return tuple(value for value in values if isinstance(value, str))


def _add_eval_flags(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    from evalkit.models.loading import DEVICE_MAPS, DEVICES
    from evalkit.models.quant.plans import DEFAULT_QUANT_BACKEND, PRECISIONS, QUANT_BACKENDS, QUANT_BITS

    own_splits = ", ".join(f"{name} {task.eval_split}" for name, task in TASKS.items())
    parser.add_argument("--model", required=True, help="hub id, local checkpoint directory, or a .gguf file")
    parser.add_argument("--tasks", type=_comma_list, default=",".join(TASKS), help="comma list of tasks")
    parser.add_argument(
        "--data-dir",
        help="local copy of the benchmarks in their official layouts "
        f"(<dir>/{{{','.join(TASKS)}}}/...); default: the hub datasets",
    )
    parser.add_argument(
        "--split",
        help=f"split to score (default: each task's own: {own_splits}; "
        "ceval test writes the leaderboard submission JSON)",
    )
    parser.add_argument(
        "--subjects", type=_comma_list, help="comma list of subjects ('law' or 'ceval/law'; default: all)"
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
        choices=_literal_choices(RunConfig, "letter_rule"),
        help="override the scheme's rule for the A/B/C/D token ids",
    )
    parser.add_argument(
        "--shots",
        type=_int_at_least(0),
        default=DEFAULTS.shots,
        help="few-shot examples per prompt (every subject needs that many shot rows)",
    )
    parser.add_argument(
        "--limit", type=_int_at_least(1), help="score only the first N questions of each subject (smoke runs)"
    )
    if sweep:  # full precision, then every quantized one
        parser.add_argument(
            "--precision",
            type=_comma_list,
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
        "model's own quantize(bits), needs --trust-remote-code)",
    )
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
        help="run the model repository's own Python code (needed by e.g. Baichuan)",
    )
    parser.add_argument(
        "--batch-tokens",
        type=_int_at_least(1),
        help="token budget per batch (default: sized for the device); lower it after an out-of-memory error",
    )
    parser.add_argument(
        "--engine",
        choices=_literal_choices(RunConfig, "engine"),
        help="prefix: reuse the subject's shared prompt prefix (KV cache); plain: full "
        f"prompts; auto: prefix where it saves enough (default: {DEFAULTS.engine}; --backend hf only)",
    )
    _add_backend_flags(parser)
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of schemes that shuffle shots")
    parser.add_argument(
        "--permute",
        choices=_literal_choices(RunConfig, "permute"),
        default=DEFAULTS.permute,
        help="cyclic: score every question under the four cyclic rotations of its options (the gold "
        "letter moves with its text; shots unchanged) and report circular accuracy, mean accuracy over "
        "rotations and position bias; a run of its own configuration, compared only with runs permuted "
        f"the same way (default: {DEFAULTS.permute})",
    )
    parser.add_argument(
        "--threads",
        type=_int_at_least(1),
        help="torch CPU threads (default: torch's own; recorded in run.json)",
    )
    parser.add_argument("--output-dir", default=DEFAULTS.output_dir, help="where run directories go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _unit_fraction(text: str) -> float:
    """An argparse type: a float in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


SCORING_BACKENDS = (
    "scoring engine: hf (transformers, evalkit's prefix engine) or vllm (vLLM with its "
    "prefix cache; needs vLLM installed, a local model directory or .gguf file)"
)


def _add_backend_flags(parser: argparse.ArgumentParser, backend_help: str = SCORING_BACKENDS) -> None:
    """--backend and the vLLM engine's flags (evalkit.backends.vllm.engine.VllmSettings); left unset (None),
    the RunConfig defaults apply, so that a flag of the other backend can be told from a default."""
    from evalkit.backends.base import BACKENDS

    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULTS.backend,
        help=backend_help,
    )
    vllm = parser.add_argument_group(
        "--backend vllm", "how the vLLM engine is started (not in the config hash)"
    )
    vllm.add_argument(
        "--tensor-parallel-size",
        type=_int_at_least(1),
        help=f"GPUs sharing each layer (default: {DEFAULTS.tensor_parallel_size})",
    )
    vllm.add_argument(
        "--pipeline-parallel-size",
        type=_int_at_least(1),
        help=f"pipeline stages splitting the layers (default: {DEFAULTS.pipeline_parallel_size})",
    )
    vllm.add_argument(
        "--gpu-memory-utilization",
        type=_unit_fraction,
        help=f"share of each GPU's memory vLLM may take, weights and KV cache "
        f"(default: {DEFAULTS.gpu_memory_utilization})",
    )
    vllm.add_argument(
        "--max-model-len",
        type=_int_at_least(2),
        help="tokens per request, prompt + 1 (default: the model's max_position_embeddings); "
        "lower it to fit the KV cache",
    )
    vllm.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="no CUDA graphs / torch.compile: a faster start, slower steps",
    )
    vllm.add_argument(
        "--distributed-executor-backend",
        choices=_literal_choices(RunConfig, "distributed_executor_backend"),
        help="ray: spread tensor x pipeline ranks over the nodes of a running Ray cluster "
        "(default: vLLM's choice, one node)",
    )


def _add_bench_parser(sub: argparse._SubParsersAction, prog: str) -> None:
    from evalkit.bench.report import OUTPUT_DIR
    from evalkit.bench.schema import DEVICE_DEFAULTS, MODES, BenchSettings
    from evalkit.models.loading import DEVICES
    from evalkit.models.quant.plans import DEFAULT_QUANT_BACKEND, PRECISIONS, QUANT_BACKENDS

    bench = BenchSettings()
    kinds = DEVICE_DEFAULTS.items()
    fitting = ", ".join(f"{d.precision} and {d.new_tokens} on {kind.upper()}" for kind, d in kinds)
    by_device = {
        field: ", ".join(f"{getattr(d, field)} on {kind.upper()}" for kind, d in kinds)
        for field in ("precision", "new_tokens")
    }
    p = _subcommand(
        sub,
        "bench",
        "generation tokens/s per model and precision, against the memory-bandwidth bound",
        "Greedy generation of exactly --new-tokens tokens (EOS suppressed), timed between device "
        "synchronisations, model load and tokenization excluded: end-to-end tok/s (Baichuan's figure), "
        "time to first token, prefill and decode tok/s (medians over repeats, with spread), peak memory, "
        "and the decode bound from a measured memory bandwidth. Precision and length default to what fits "
        f"the device ({fitting}).",
        [
            "bench --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --precision fp32,int8",
            "bench --model /models/Baichuan-13B-Base --trust-remote-code --device cuda --batch-sizes 1,8",
        ],
        prog,
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="hub id, checkpoint directory or .gguf file; repeat for several models (ratios are "
        "to the first)",
    )
    p.add_argument(
        "--precision",
        type=_comma_list,
        help=f"comma list from {', '.join(PRECISIONS)} (default: {by_device['precision']})",
    )
    p.add_argument(
        "--quant-backend",
        choices=QUANT_BACKENDS,
        help=f"int8/int4 method (default: {DEFAULT_QUANT_BACKEND}; --backend hf only)",
    )
    p.add_argument(
        "--new-tokens",
        type=_int_at_least(1),
        help=f"tokens generated per row (default: {by_device['new_tokens']})",
    )
    p.add_argument(
        "--prompt-tokens", type=_int_at_least(1), default=bench.prompt_tokens, help="prompt length in tokens"
    )
    p.add_argument(
        "--batch-sizes",
        type=_int_list_at_least(1),
        default=",".join(map(str, bench.batch_sizes)),
        help="comma list of batch sizes; Baichuan's figure is at 1",
    )
    p.add_argument(
        "--repeats", type=_int_at_least(1), default=bench.repeats, help="timed repeats; figures are medians"
    )
    p.add_argument(
        "--warmup",
        type=_int_at_least(0),
        default=bench.warmup,
        help="untimed runs first (compiled mode needs >= 1)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help=f"eager, or compiled: static KV cache + torch.compile (reported separately; default: "
        f"{bench.mode}; --backend hf only)",
    )
    p.add_argument(
        "--compile-backend",
        help=f"torch.compile backend for --mode compiled (default: {bench.compile_backend}; "
        "--backend hf only)",
    )
    p.add_argument("--device", default=bench.device, help=f"one of {', '.join(DEVICES)}")
    p.add_argument(
        "--threads", type=_int_at_least(1), help="torch CPU threads (default: torch's own; recorded per row)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    p.add_argument("--output-dir", default=OUTPUT_DIR, help="JSON, markdown table and PNG plot go here")
    _add_backend_flags(
        p,
        "generation engine: hf (transformers generate) or vllm (LLM.generate, prefix cache off; needs vLLM "
        "installed, a local model directory or .gguf file)",
    )
    p.set_defaults(func=cmd_bench)


def _add_report_parser(sub: argparse._SubParsersAction, prog: str) -> None:
    from evalkit.report.quantization import PRECISION_TABLE, PRECISION_TABLE_DEFAULT

    p = _subcommand(
        sub,
        "report",
        "tables from saved run directories",
        "The Baichuan README's tables from finished runs (run.json): per benchmark, categories and Average "
        "with 95% intervals, rows model x precision, published figures beside the measured ones; the "
        "quantization table where a model has runs at several precisions; optionally CSV and an HTML page.",
        [
            "report results/",
            "report results/ --reference LLaMA-13B --html report/index.html --csv report/all.csv",
        ],
        prog,
    )
    p.add_argument("paths", nargs="+", help="run directories, or folders to search for them")
    p.add_argument("--csv", help="also write the tables as CSV to this file")
    p.add_argument(
        "--html",
        help="also write one self-contained HTML page (tables, plots) to this file; "
        "the plots are saved beside it as PNG",
    )
    p.add_argument(
        "--reference",
        type=_comma_list,
        default=[],
        help="published rows to add to the tables, e.g. LLaMA-13B,Baichuan-13B-Base (default: none)",
    )
    p.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="MODEL=NAME",
        type=_model_match,
        help="compare runs of MODEL (its short name) with the published row NAME "
        "(otherwise matched by name automatically); repeatable",
    )
    p.add_argument("--no-published", action="store_true", help="leave published figures out")
    _add_ece_bins(p)
    p.add_argument(
        "--precision-table",
        choices=list(PRECISION_TABLE),
        default=PRECISION_TABLE_DEFAULT,
        help="the quantization table (rows model x precision, delta to full precision with "
        "its 95%% CI); auto: when a model has runs at several precisions",
    )
    p.set_defaults(func=cmd_report)


def _add_ece_bins(parser: argparse.ArgumentParser) -> None:
    from evalkit.stats.calibration import DEFAULT_BINS

    parser.add_argument(
        "--ece-bins",
        type=_int_at_least(1),
        default=DEFAULT_BINS,
        help=f"equal-width confidence bins of the expected calibration error (default: {DEFAULT_BINS})",
    )


def _add_compare_parser(sub: argparse._SubParsersAction, prog: str) -> None:
    p = _subcommand(
        sub,
        "compare",
        "paired per-question comparison of two runs; the CI gate",
        "Compare run(s) B against A on the questions both scored: a summary per benchmark and the gate's "
        "verdict first, then accuracy deltas per category and per subject that changed, with "
        "paired-bootstrap 95% intervals, McNemar's exact p-value and the questions that flipped; beside "
        "them how far B's four-letter distributions moved from A's (KL(P_A||P_B) in nats: mean, 95th and "
        "99th percentile; top-letter agreement; mean change of the gold letter's probability), read from "
        "the saved questions, and the smallest drop the question count could detect. Gates on each "
        "benchmark's Average (the gates for quantized releases): --max-drop, --max-kl, --min-agreement; "
        "the exit status is 1 when any gate fails, else 0.",
        [
            "compare results/fp16 results/int4 --max-drop 1.0 --max-kl 0.05 --min-agreement 0.95",
            "compare results/fp32 results/int4-rtn --allow-subset --all-subjects",
        ],
        prog,
    )
    p.add_argument("a", help="baseline: a run directory or a folder of runs (one per task)")
    p.add_argument("b", help="candidate: a run directory or a folder of runs (one per task)")
    p.add_argument(
        "--max-drop", type=float, help="accuracy points B may lose against A per benchmark (default: no gate)"
    )
    p.add_argument(
        "--max-kl",
        type=float,
        metavar="NATS",
        help="the largest mean KL(P_A||P_B) over the four letters B may reach per benchmark, in "
        "nats (default: no gate)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        metavar="FRACTION",
        help="the smallest share of questions whose top letter B must keep from A per benchmark, "
        "e.g. 0.95 (default: no gate)",
    )
    p.add_argument(
        "--max-ece-increase",
        type=float,
        metavar="POINTS",
        help="the most expected calibration error (ECE, top letter, in points) B may gain over A per "
        "benchmark, e.g. 2.0 (default: no gate)",
    )
    _add_ece_bins(p)
    p.add_argument(
        "--allow-subset",
        action="store_true",
        help="compare only the questions both runs scored instead of refusing different sets",
    )
    p.add_argument(
        "--all-subjects",
        action="store_true",
        help="list every subject, not only those whose accuracy changed or whose questions flipped",
    )
    p.set_defaults(func=cmd_compare)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    prog = prog or _prog()
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.replace("python run_eval.py", prog), formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_eval = _subcommand(
        sub,
        "eval",
        "score a model on the tasks",
        "Score one model at one precision on 5-shot C-Eval, MMLU and CMMLU (or --tasks): questions.jsonl "
        "is written as questions are scored, run.json last; rerunning the same command resumes. Prints the "
        "plan (questions, prompt tokens) and a time estimate on stderr, the tables on stdout.",
        [
            "eval --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --data-dir ../shared/data "
            "--limit 10",
            "eval --model /models/Baichuan-13B-Base --trust-remote-code --precision bf16 --tasks ceval,cmmlu",
        ],
        prog,
    )
    _add_eval_flags(p_eval)
    p_eval.set_defaults(func=cmd_eval)
    p_sweep = _subcommand(
        sub,
        "sweep",
        "one model at several precisions: each loaded once, every task run on it",
        "Run eval at each --precision in turn: the model is loaded once per precision, every task is run "
        "on it, and it is freed before the next. Prints the tables and the quantization table (delta to "
        "full precision with paired 95% intervals).",
        [
            "sweep --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --data-dir ../shared/data "
            "--limit 10",
            "sweep --model /models/Baichuan-13B-Base --trust-remote-code --precision fp16,int8,int4 "
            "--quant-backend rtn",
        ],
        prog,
    )
    _add_eval_flags(p_sweep, sweep=True)
    p_sweep.set_defaults(func=cmd_sweep)
    _add_report_parser(sub, prog)
    _add_compare_parser(sub, prog)
    _add_bench_parser(sub, prog)
    p_list = _subcommand(
        sub,
        "list",
        "tasks, subjects, categories and row counts",
        "Each task's subjects with their Chinese names and categories, its scored and shot splits and "
        "schemes; with --data-dir, the rows of every split in that local copy (validated like a run).",
        ["list", "list --tasks ceval --data-dir ../shared/data"],
        prog,
    )
    p_list.add_argument("--tasks", type=_comma_list, default=",".join(TASKS), help="comma list of tasks")
    p_list.add_argument("--data-dir", help="count rows of each split in this local copy")
    p_list.set_defaults(func=cmd_list)
    return parser


@contextlib.contextmanager
def third_party_warnings_once() -> Iterator[None]:
    """Each distinct FutureWarning of the libraries shown once, in one line (torch and transformers repeat
    theirs on every task); DeprecationWarnings stay hidden unless -W / PYTHONWARNINGS asks for them.

    The "once" filter action cannot do it: every `warnings.catch_warnings()` in a library clears the
    registry it keeps, so the messages shown are remembered here.
    """
    shown: set[tuple[type[Warning], str]] = set()

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: typing.TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if (category, str(message)) in shown:
            return
        shown.add((category, str(message)))
        where = "/".join(Path(filename).parts[-2:])
        print(f"warning: {category.__name__}: {message} ({where}:{lineno})", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        warnings.filterwarnings("always", category=FutureWarning)  # each reaches `show`, which dedups
        if not sys.warnoptions:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; also the `evalkit` console command (returns the exit status)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    with third_party_warnings_once():
        try:
            return args.func(args)
        except EvalkitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
