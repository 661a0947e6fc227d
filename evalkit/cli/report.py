"""`report`: the Baichuan README's tables (and CSV, HTML) from saved run directories."""

from __future__ import annotations

import argparse
import sys

from evalkit.cli.common import add_ece_bins, add_task_file_flag, comma_list, register_task_files, subcommand
from evalkit.report import PRECISION_TABLE, PRECISION_TABLE_DEFAULT


def _model_match(text: str) -> tuple[str, str]:
    """report --match MODEL=NAME."""
    model, sep, name = text.partition("=")
    if not sep or not model.strip() or not name.strip():
        raise argparse.ArgumentTypeError(
            f"expected MODEL=NAME (a run's short model name = a published row), got {text!r}"
        )
    return model.strip(), name.strip()


def add_parser(sub: argparse._SubParsersAction, program: str) -> None:
    p = subcommand(
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
        program,
    )
    p.add_argument("paths", nargs="+", help="run directories, or folders to search for them")
    add_task_file_flag(p)
    p.add_argument("--csv", help="also write the tables as CSV to this file")
    p.add_argument(
        "--html",
        help="also write one self-contained HTML page (tables, plots) to this file; "
        "the plots are saved beside it as PNG",
    )
    p.add_argument(
        "--reference",
        type=comma_list,
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
    add_ece_bins(p)
    p.add_argument(
        "--precision-table",
        choices=list(PRECISION_TABLE),
        default=PRECISION_TABLE_DEFAULT,
        help="the quantization table (rows model x precision, delta to full precision with "
        "its 95%% CI); auto: when a model has runs at several precisions",
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from evalkit.report.calibration_tables import calibration_markdown
    from evalkit.report.csv import write_csv
    from evalkit.report.html import write_html
    from evalkit.report.quantization import build_quant_table, show_precision
    from evalkit.report.quantization_markdown import quant_markdown
    from evalkit.report.tables_markdown import to_markdown
    from evalkit.store.saved_runs import report_runs
    from tasks import get_task
    from tasks.references import published_quantization, published_rows

    register_task_files(args)
    published = () if args.no_published else published_rows()
    quant_published = () if args.no_published else published_quantization()
    runs = report_runs(args.paths, get_task, dict(args.match))
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
