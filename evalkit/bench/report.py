"""Presenting a throughput report: the markdown table, the bar plot, and the JSON/markdown/PNG files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from evalkit.bench.schema import MIB, BenchReport, BenchRow

HEADERS = (
    "Model",
    "Precision",
    "Batch",
    "tokens/s",
    "spread %",
    "TTFT ms",
    "prefill tok/s",
    "decode tok/s",
    "GB/s",
    "bound tok/s",
    "achieved",
    "peak MiB",
    "weights MiB",
    "threads",
    "others busy",
)


def _table_row(r: BenchRow) -> list:
    peak = r.peak_cuda_bytes if r.peak_cuda_bytes is not None else r.peak_rss_bytes
    return [
        r.model,
        r.precision_label,
        r.batch_size,
        f"{r.e2e_tok_s.median:.2f}",
        f"{r.e2e_tok_s.spread_pct:.1f}",
        f"{1000 * r.ttft_s.median:.1f}",
        f"{r.prefill_tok_s.median:.1f}",
        f"{r.decode_tok_s.median:.2f}" if r.decode_tok_s else "n/a",
        f"{r.bandwidth.gb_s:.1f}",
        f"{r.bound_tok_s:.2f}",
        f"{r.achieved_fraction:.2f}" if r.decode_tok_s else "n/a",
        f"{peak / MIB:.1f}",
        f"{r.weight_bytes / MIB:.1f}",
        r.threads,
        f"{r.load.other_cores_busy:.1f}",
    ]


def format_table(report: BenchReport) -> str:
    """Baichuan's "| Model | tokens/s |" table with our other columns, the ratio to the first model, notes."""
    from tabulate import tabulate

    s, env = report.settings, report.environment
    models = list(dict.fromkeys(row.model for row in report.rows))
    first: dict[tuple, float] = {}
    table = []
    for r in report.rows:  # the ratio compares models at the same precision and batch size
        base = first.setdefault((r.precision, r.quant_backend, r.batch_size), r.e2e_tok_s.median)
        table.append(_table_row(r) + ([f"{r.e2e_tok_s.median / base:.2f}"] if len(models) > 1 else []))
    headers = list(HEADERS) + ([f"× {models[0]}"] if len(models) > 1 else [])
    on_cuda = (env.device or "").startswith("cuda")
    engine = report.mode + (f" {report.vllm_version}" if report.vllm_version else "")  # "vllm 0.32.0"
    title = (
        f"Throughput ({engine}) on {env.device_name}: {s.new_tokens} new tokens after "
        f"{s.prompt_tokens} prompt tokens, greedy, EOS suppressed; median of {s.repeats} repeats "
        f"(spread = (max − min)/median). GB/s: best copy probe just before and after the row's repeats; "
        f"bound = GB/s ÷ bytes read per decode step; achieved = decode ÷ bound. "
        f"Peak: {'CUDA max allocated' if on_cuda else 'process peak RSS'} over the timed repeats."
    )
    notes = [
        f"- {r.model} {r.precision_label} batch {r.batch_size}: {note}"
        for r in report.rows
        for note in r.notes
    ]
    body = tabulate(
        table,
        headers,
        tablefmt="github",
        disable_numparse=True,
        colalign=("left", "left") + ("right",) * (len(headers) - 2),
    )
    return "\n\n".join([title, body] + (["\n".join(notes)] if notes else []))


def plot_throughput(report: BenchReport, path: Path) -> Path:
    """Bars of end-to-end and decode tok/s per precision, one bar per model × batch, whiskers min..max."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    precisions = list(dict.fromkeys(r.precision_label for r in report.rows))
    series = list(dict.fromkeys((r.model, r.batch_size) for r in report.rows))
    figure = Figure(figsize=(5 + 1.5 * len(precisions), 4.5), layout="constrained")
    width = 0.8 / len(series)
    panels = zip(figure.subplots(1, 2), ("e2e_tok_s", "decode_tok_s"), ("end-to-end", "decode"), strict=True)
    for ax, attr, label in panels:
        for k, (model, batch) in enumerate(series):
            # no bar where decode is unresolved
            rows = {
                r.precision_label: getattr(r, attr)
                for r in report.rows
                if (r.model, r.batch_size) == (model, batch) and getattr(r, attr) is not None
            }
            xs = [i + k * width for i, p in enumerate(precisions) if p in rows]
            stats = [rows[p] for p in precisions if p in rows]
            ax.bar(
                xs,
                [s.median for s in stats],
                width,
                label=f"{model} b{batch}",
                yerr=[[s.median - s.min for s in stats], [s.max - s.median for s in stats]],
                capsize=3,
            )
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(precisions))], precisions)
        ax.set_title(f"{label} tokens/s ({report.mode})")
        ax.set_ylabel("tokens/s")
    figure.axes[0].legend(fontsize="small")
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def write_outputs(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """JSON (every repeat's figures), the markdown table and the PNG plot, named by time and mode."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{report.created.replace(':', '').replace('+0000', 'Z')}_{report.mode}"
    json_path, table_path = out / f"{stem}.json", out / f"{stem}.md"
    text = json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False) + "\n"
    json_path.write_text(text, encoding="utf-8")
    table_path.write_text(format_table(report) + "\n", encoding="utf-8")
    return [json_path, table_path, plot_throughput(report, out / f"{stem}.png")]
