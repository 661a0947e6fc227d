"""`compare A B`: the paired per-question comparison of two runs, and the gates for quantized releases."""

from __future__ import annotations

import argparse

from evalkit.cli.common import add_ece_bins, add_task_file_flag, register_task_files, subcommand


def add_parser(sub: argparse._SubParsersAction, program: str) -> None:
    p = subcommand(
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
        program,
    )
    p.add_argument("a", help="baseline: a run directory or a folder of runs (one per task)")
    p.add_argument("b", help="candidate: a run directory or a folder of runs (one per task)")
    add_task_file_flag(p)
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
    add_ece_bins(p)
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


def cmd_compare(args: argparse.Namespace) -> int:
    from evalkit.report.compare_tables import to_markdown
    from evalkit.stats.compare import compare
    from evalkit.stats.gates import check_thresholds
    from evalkit.store.saved_runs import saved_runs
    from tasks import get_task

    gates = {
        "max_drop": args.max_drop,
        "max_kl": args.max_kl,
        "min_agreement": args.min_agreement,
        "max_ece_increase": args.max_ece_increase,
    }
    check_thresholds(**gates)  # before reading any run: a NaN gate is refused, never passed
    register_task_files(args)
    runs_a, runs_b = list(saved_runs([args.a]).values()), list(saved_runs([args.b]).values())
    comparison = compare(
        runs_a, runs_b, get_task, **gates, allow_subset=args.allow_subset, bins=args.ece_bins
    )
    print(to_markdown(comparison, all_subjects=args.all_subjects))
    return 0 if comparison.passed else 1
