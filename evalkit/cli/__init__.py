"""evalkit command line: 5-shot C-Eval / MMLU / CMMLU scored like the official code.

Examples:
  python run_eval.py eval --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data-dir ../shared/data --tasks ceval,mmlu,cmmlu --limit 10
  python run_eval.py eval --model /models/Baichuan-13B-Base --precision bf16 --device cuda
  python run_eval.py report results/
  python run_eval.py list --data-dir ../shared/data

Each command's --help shows its flags, their defaults and two examples. Installed (pip install .),
the same program is the `evalkit` command. Exit status: 0 on success, 1 when a compare gate fails,
2 on a user error (one line `error: ...`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from evalkit.cli import bench, compare, evaluate, listing, report
from evalkit.cli.common import HelpFormatter, prog, third_party_warnings_once
from evalkit.types import EvalkitError


def build_parser(program: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; each module owns its parser, description and examples."""
    program = program or prog()
    parser = argparse.ArgumentParser(
        prog=program,
        description=__doc__.replace("python run_eval.py", program),
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    evaluate.add_parsers(sub, program)
    report.add_parser(sub, program)
    compare.add_parser(sub, program)
    bench.add_parser(sub, program)
    listing.add_parser(sub, program)
    return parser


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
        except KeyboardInterrupt as exc:  # Ctrl-C: one line saying what is saved, exit 130
            from evalkit.store.interrupt import report_interrupt

            return report_interrupt(exc)
