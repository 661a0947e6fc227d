"""evalkit's entry point: `python run_eval.py COMMAND ...` is the `evalkit` command (evalkit.cli)."""

import sys

from evalkit.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
