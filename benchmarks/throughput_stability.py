"""How stable is a tokens/s figure? Benchmark one model twice in one process and compare the runs.

Example (from the repository root):
  python -m benchmarks.throughput_stability --new-tokens 64 --repeats 3 --threads 1

The model is loaded once; `evalkit.bench.hf_bench.bench_loaded` (with its bandwidth probes) then runs
twice on it.
Printed per figure: each run's median, the relative difference of the medians (run 2 vs run 1) and
each run's repeat spread ((max − min) / median), then how busy the machine was during each run.
A difference well above the spreads means the machine changed between runs (other load, clocks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tabulate import tabulate

from evalkit.bench.hf_bench import bench_loaded
from evalkit.bench.schema import MODES, BenchRow, BenchSettings
from evalkit.models.loading import load_model, resolve_device
from evalkit.types import EvalkitError

SMOLLM = Path(__file__).resolve().parents[2] / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
FIGURES = (
    ("e2e_tok_s", "end-to-end tok/s"),
    ("decode_tok_s", "decode tok/s"),
    ("prefill_tok_s", "prefill tok/s"),
    ("ttft_s", "time to first token s"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=str(SMOLLM), help="model directory, .gguf file or hub id (default: %(default)s)"
    )
    parser.add_argument(
        "--precision", default="fp32", help="fp32 | bf16 | fp16 | int8 | int4 (default: %(default)s)"
    )
    parser.add_argument(
        "--new-tokens", type=int, default=64, help="tokens generated per row (default: %(default)s)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="rows per generate call (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per run (default: %(default)s)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed generate calls per run (default: %(default)s)"
    )
    parser.add_argument(
        "--mode",
        default="eager",
        choices=MODES,
        help="eager, or compiled: static KV cache + torch.compile (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    return parser


def _compare(first: BenchRow, second: BenchRow) -> str:
    table = []
    for attr, label in FIGURES:
        a, b = getattr(first, attr), getattr(second, attr)
        if a is None or b is None:  # decode unresolved in a run (timer noise): see its notes
            table.append(
                [
                    label,
                    "n/a" if a is None else f"{a.median:.4g}",
                    "n/a" if b is None else f"{b.median:.4g}",
                    "",
                    "",
                    "",
                ]
            )
            continue
        table.append(
            [
                label,
                f"{a.median:.4g}",
                f"{b.median:.4g}",
                f"{100 * (b.median - a.median) / a.median:+.1f}",
                f"{a.spread_pct:.1f}",
                f"{b.spread_pct:.1f}",
            ]
        )
    return tabulate(
        table,
        ["figure", "run 1 median", "run 2 median", "difference %", "spread 1 %", "spread 2 %"],
        tablefmt="github",
        disable_numparse=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = BenchSettings(
            new_tokens=args.new_tokens,
            prompt_tokens=args.prompt_tokens,
            batch_sizes=(args.batch_size,),
            repeats=args.repeats,
            warmup=args.warmup,
            mode=args.mode,
            device=args.device,
            threads=args.threads,
        )
        torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        loaded = load_model(args.model, args.precision, device)
        first, second = (bench_loaded(loaded, args.batch_size, settings) for _ in range(2))
    except EvalkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{first.model} {first.precision} ({first.mode}) on {device}: batch {args.batch_size}, "
        f"{args.prompt_tokens} prompt + {args.new_tokens} new tokens, {args.repeats} repeats per run, "
        f"threads {torch.get_num_threads()}"
    )
    print(_compare(first, second))
    bw1, bw2 = first.bandwidth.gb_s, second.bandwidth.gb_s
    print(
        f"bandwidth GB/s (best copy around each run's repeats): run 1 {bw1:.2f}, run 2 {bw2:.2f} "
        f"({100 * (bw2 - bw1) / bw1:+.1f} %)"
    )
    for name, row in (("run 1", first), ("run 2", second)):
        achieved = "n/a" if row.achieved_fraction is None else f"{row.achieved_fraction:.2f}"
        print(
            f"{name}: achieved {achieved} of the {row.bound_tok_s:.2f} tok/s bound; "
            f"load average {row.load.loadavg_1m_start:.2f} -> {row.load.loadavg_1m_end:.2f}, "
            f"other processes busy {row.load.other_cores_busy:.2f} of {row.load.cpu_count} cores"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
