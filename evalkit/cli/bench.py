"""`bench`: generation tokens/s per model, precision and batch size, against the memory-bandwidth bound."""

from __future__ import annotations

import argparse
import sys

from evalkit.backends import refuse_foreign_flags
from evalkit.bench.schema import DEVICE_DEFAULTS, MODES, OUTPUT_DIR, BenchSettings
from evalkit.cli.common import (
    add_backend_flags,
    backend_settings,
    comma_list,
    int_at_least,
    int_list_at_least,
    subcommand,
)
from evalkit.machine import DEVICES
from evalkit.models.quant.choices import DEFAULT_QUANT_BACKEND, PRECISIONS, QUANT_BACKENDS


def add_parser(sub: argparse._SubParsersAction, program: str) -> None:
    bench = BenchSettings()
    kinds = DEVICE_DEFAULTS.items()
    fitting = ", ".join(f"{d.precision} and {d.new_tokens} on {kind.upper()}" for kind, d in kinds)
    by_device = {
        field: ", ".join(f"{getattr(d, field)} on {kind.upper()}" for kind, d in kinds)
        for field in ("precision", "new_tokens")
    }
    p = subcommand(
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
            "bench --model /models/Baichuan-13B-Base --device cuda --batch-sizes 1,8",
        ],
        program,
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
        type=comma_list,
        help=f"comma list from {', '.join(PRECISIONS)} (default: {by_device['precision']})",
    )
    p.add_argument(
        "--quant-backend",
        choices=QUANT_BACKENDS,
        help=f"int8/int4 method (default: {DEFAULT_QUANT_BACKEND}; --backend hf only)",
    )
    p.add_argument(
        "--new-tokens",
        type=int_at_least(1),
        help=f"tokens generated per row (default: {by_device['new_tokens']})",
    )
    p.add_argument(
        "--prompt-tokens", type=int_at_least(1), default=bench.prompt_tokens, help="prompt length in tokens"
    )
    p.add_argument(
        "--batch-sizes",
        type=int_list_at_least(1),
        default=",".join(map(str, bench.batch_sizes)),
        help="comma list of batch sizes; Baichuan's figure is at 1",
    )
    p.add_argument(
        "--repeats", type=int_at_least(1), default=bench.repeats, help="timed repeats; figures are medians"
    )
    p.add_argument(
        "--warmup",
        type=int_at_least(0),
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
        "--threads", type=int_at_least(1), help="torch CPU threads (default: torch's own; recorded per row)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code")
    p.add_argument("--output-dir", default=OUTPUT_DIR, help="JSON, markdown table and PNG plot go here")
    add_backend_flags(p, bench=True)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from evalkit.bench.report import format_table, write_outputs
    from evalkit.bench.runs import run_bench
    from evalkit.bench.schema import fitted_defaults

    refuse_foreign_flags(vars(args), args.backend, bench=True)
    fitting = fitted_defaults(args.device)  # what was not given, fitted to the device
    defaults = BenchSettings()
    settings = BenchSettings(
        new_tokens=fitting.new_tokens if args.new_tokens is None else args.new_tokens,
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
        **backend_settings(args),
    )
    report = run_bench(args.model, args.precision or [fitting.precision], settings)
    print(format_table(report))
    for path in write_outputs(report, args.output_dir):
        print(f"written: {path}", file=sys.stderr)
    return 0
