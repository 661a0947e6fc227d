"""`list`: each task's subjects, categories, splits and schemes, and row counts in a local copy."""

from __future__ import annotations

import argparse

from evalkit.cli.common import comma_list, subcommand
from tasks import TASKS


def add_parser(sub: argparse._SubParsersAction, program: str) -> None:
    p = subcommand(
        sub,
        "list",
        "tasks, subjects, categories and row counts",
        "Each task's subjects with their Chinese names and categories, its scored and shot splits and "
        "schemes; with --data-dir, the rows of every split in that local copy (validated like a run).",
        ["list", "list --tasks ceval --data-dir ../shared/data"],
        program,
    )
    p.add_argument("--tasks", type=comma_list, default=",".join(TASKS), help="comma list of tasks")
    p.add_argument("--data-dir", help="count rows of each split in this local copy")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from evalkit.questions.data import count_rows
    from evalkit.report.listing import task_listing
    from tasks import get_task

    for name in args.tasks:
        task = get_task(name)
        counts = (
            {split: count_rows(task, args.data_dir, split) for split in task.splits} if args.data_dir else {}
        )
        print(task_listing(task, counts))
    return 0
