"""`list`: each task's subjects, categories, splits and schemes, and row counts in a local copy."""

from __future__ import annotations

import argparse

from evalkit.cli.common import add_task_file_flag, comma_list, register_task_files, subcommand


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
    p.add_argument(
        "--tasks",
        type=comma_list,
        default="all",
        help="comma list of tasks; all: every task, declared ones too",
    )
    p.add_argument("--data-dir", help="count rows of each split in this local copy")
    add_task_file_flag(p)
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from evalkit.questions.data import count_rows
    from evalkit.report.listing import task_listing
    from tasks import expand_tasks, get_task

    register_task_files(args)
    for name in expand_tasks(args.tasks):
        task = get_task(name)
        counts = (
            {split: count_rows(task, args.data_dir, split) for split in task.splits} if args.data_dir else {}
        )
        print(task_listing(task, counts))
    return 0
