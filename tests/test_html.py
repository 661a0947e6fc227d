"""The HTML report: one self-contained page (tables, embedded plots) with the PNGs beside it, rendered in
headless Chromium where it is installed."""

from __future__ import annotations

import base64
import dataclasses
import html
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from builders import answers, saved_run

from evalkit.report.html import write_html
from evalkit.report.plots import category_figure
from evalkit.report.tables import build_tables
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ModelInfo, ReportRun
from evalkit.types import RunConfig
from tasks import get_task

CEVAL = get_task("ceval")
PUBLISHED = (
    PublishedRow(
        label="Baichuan-13B-Base",
        model="Baichuan-13B-Base",
        benchmark="ceval",
        scores={"Others": 49.3, "Average": 52.4},
        sources=("README.md § C-Eval",),
    ),
    PublishedRow(
        label="Vicuna-13B",
        model="Vicuna-13B",
        benchmark="ceval",
        scores={"Average": 32.8},
        sources=("README.md § C-Eval",),
    ),
)
QUANT_PUBLISHED = (
    PublishedRow(
        label="Baichuan-13B-Base-int8",
        model="Baichuan-13B-Base",
        benchmark="ceval",
        scores={"Average": 51.2},
        sources=("README.md § Quantization",),
        precision="int8",
        memory_gb=15.8,
    ),
)


def runs(precisions: tuple[str, ...] = ("fp16", "int8")) -> list[ReportRun]:
    """Baichuan-13B-Base on two C-Eval subjects: fp16 answers 30 + 20 of 40 right, int8 loses 5 of each."""
    out = []
    for precision in precisions:
        lost = 5 if precision == "int8" else 0
        questions = answers("ceval", "accountant", set(range(lost, 30)), 40, split="val") + answers(
            "ceval", "advanced_mathematics", set(range(lost, 20)), 40, split="val"
        )
        config = RunConfig(
            model="baichuan-inc/Baichuan-13B-Base",
            task="ceval",
            precision=precision,
            quant_backend="bnb" if precision == "int8" else None,
        )
        saved = saved_run(config, questions, model_info=ModelInfo(weight_bytes=2**30, peak_cuda_bytes=2**31))
        out.append(ReportRun(saved.result, CEVAL, None, saved.questions))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "report.html"
    return write_html(runs(), path, PUBLISHED, ["Vicuna-13B"], QUANT_PUBLISHED)


def test_page_and_plots_are_written_side_by_side(report):
    assert report.path.is_file()
    assert [p.name for p in report.plots] == [
        "report-ceval.png",
        "report-reliability.png",  # the calibration section's reliability diagram
        "report-precision.png",
        "report-kl.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in report.plots)


def test_plots_are_embedded_as_the_same_png_bytes(report):
    page = report.path.read_text(encoding="utf-8")
    embedded = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert [name for name, _ in embedded] == [p.name for p in report.plots]
    for (_, data), plot in zip(embedded, report.plots, strict=True):
        assert base64.b64decode(data) == plot.read_bytes()


def test_page_needs_nothing_from_outside(report):
    page = report.path.read_text(encoding="utf-8")
    assert not re.search(r"<script|<link|@import|url\(", page)
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert len(links) == 4 and all(link.startswith("data:image/png;base64,") for link in links)
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page


def test_page_holds_the_tables(report):
    page = report.path.read_text(encoding="utf-8")
    assert '<tr class="published"><td>Baichuan-13B-Base (published)</td>' in page
    assert '<tr class="delta"><td>Δ Baichuan-13B-Base fp16</td>' in page
    assert "<th>Model 5-shot</th>" in page and "<h2>Precision</h2>" in page
    assert "<td>51.2 (-1.2)</td>" not in page  # no published unquantized row given, so no published Δ
    assert "<td>15.8</td>" in page


def test_precision_section_carries_the_letter_divergence_table_and_its_kl_plot(report):
    page = report.path.read_text(encoding="utf-8")
    assert "<h3>Letter distributions against full precision</h3>" in page
    # the fixture's runs share their log-probs (KL 0) but int8 answers 10 of 80 questions otherwise
    row = re.search(
        r"<tr[^>]*><td>Baichuan-13B-Base int8/bnb</td><td>Baichuan-13B-Base fp16</td>"
        r"<td>([^<]*)</td>",
        page,
    )
    assert row and row.group(1).startswith("KL 0 [0, 0], p95 0, p99 0; agree 87.5 [")
    image = matplotlib.image.imread(report.plots[-1])
    assert image.shape[1] > image.shape[0] and image[..., :3].std() > 0.05  # drawn, not blank


def test_kl_plot_draws_one_curve_per_compared_row_and_benchmark():
    from evalkit.report.plots import kl_figure
    from evalkit.report.quantization import build_quant_table

    table = build_quant_table(
        runs(("fp16", "int8"))
        + [
            r._replace(
                result=dataclasses.replace(
                    r.result, config=dataclasses.replace(r.result.config, quant_backend="rtn")
                )
            )
            for r in runs(("int8",))
        ]
    )
    fig = kl_figure(table)
    (ax,) = fig.axes
    assert ax.get_title() == "C-Eval" and ax.get_xscale() == "log" and len(ax.get_lines()) == 2 + 1  # + 99%
    assert {t.get_text().split(" (")[0] for t in fig.legends[0].get_texts()} == {
        "Baichuan-13B-Base int8/bnb vs Baichuan-13B-Base fp16",
        "Baichuan-13B-Base int8/rtn vs Baichuan-13B-Base fp16",
    }


def test_precision_section_only_for_a_sweep_unless_asked(tmp_path):
    single = write_html(runs(("fp16",)), tmp_path / "one.html")
    assert "<h2>Precision</h2>" not in single.path.read_text(encoding="utf-8")
    assert [p.name for p in single.plots] == ["one-ceval.png", "one-reliability.png"]
    asked = write_html(runs(("fp16",)), tmp_path / "asked.html", quant=True)
    assert "<h2>Precision</h2>" in asked.path.read_text(encoding="utf-8")
    never = write_html(runs(), tmp_path / "never.html", quant=False)
    assert "<h2>Precision</h2>" not in never.path.read_text(encoding="utf-8")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    return found


def render(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on the page with a fresh profile and no network activity of its own."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
        page.as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_chromium_renders_the_tables(report, tmp_path):
    dom = render(report.path, tmp_path, "--dump-dom").stdout
    assert "<td>Δ Baichuan-13B-Base fp16</td>" in dom and "<td>Vicuna-13B (published)</td>" in dom
    assert "<td>52.4</td>" in dom and "<td>32.8</td>" in dom  # published Averages
    assert "<td>62.5</td>" in dom  # measured fp16 Average: (30/40 + 20/40) / 2 subjects
    assert len(re.findall(r'<img alt="report-', dom)) == len(report.plots)  # every plot embedded


def test_chromium_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    render(report.path, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert len({tuple(p) for p in pixels[::20, ::20, :3].reshape(-1, 3).round(2)}) > 20  # text, tables, bars


# --- what the category plot shows ------------------------------------------------------------------------


def _category_figure(published=PUBLISHED, extra=("Vicuna-13B",), precisions=("fp16", "int8")):
    table = build_tables(runs(precisions), published, extra)["ceval"]
    return table, category_figure(table)


def _legend_texts(fig) -> list[str]:
    return [text.get_text() for text in fig.legends[0].get_texts()]


def test_measured_bars_carry_their_95_ci_as_whiskers():
    table, fig = _category_figure()
    ax = fig.axes[0]
    bars = {container.get_label(): container for container in ax.containers}
    fp16 = bars["Baichuan-13B-Base fp16"]
    assert fp16.errorbar is not None
    segments = fp16.errorbar.lines[2][0].get_segments()  # one vertical whisker per column
    columns = list(table.scores.columns)
    for column in ("Others", "Average"):
        (_, low), (_, high) = segments[columns.index(column)]
        ci = table.group_intervals["Baichuan-13B-Base fp16"][column]
        assert (low, high) == pytest.approx((100 * ci.low, 100 * ci.high))
        assert low < table.scores.at["Baichuan-13B-Base fp16", column] < high
    assert bars["Baichuan-13B-Base (published)"].errorbar is None  # a published figure has no interval
    assert ax.get_title() == "C-Eval per category (whiskers: 95% CI)"


def test_chance_line_at_a_quarter_and_hatched_legend_only_with_published_bars():
    _, fig = _category_figure()
    chance = [line for line in fig.axes[0].get_lines() if line.get_label() == "chance (25%)"]
    assert len(chance) == 1 and set(chance[0].get_ydata()) == {25.0}
    assert "chance (25%)" in _legend_texts(fig) and "hatched: published" in _legend_texts(fig)
    _, alone = _category_figure(published=(), extra=(), precisions=("fp16",))
    assert "hatched: published" not in _legend_texts(alone)
    assert "hatched" not in alone.axes[0].get_title()
    assert _legend_texts(alone) == ["chance (25%)", "Baichuan-13B-Base fp16"]


def test_no_whiskers_without_the_questions():
    table = build_tables([(run.result, run.task) for run in runs(("fp16",))])["ceval"]
    fig = category_figure(table)
    assert all(container.errorbar is None for container in fig.axes[0].containers)
    assert fig.axes[0].get_title() == "C-Eval per category"


def test_page_footnotes_carry_one_warning_sign_each(tmp_path):
    smoke = []
    for run in runs():
        config = dataclasses.replace(run.result.config, limit=40)
        smoke.append(run._replace(result=dataclasses.replace(run.result, config=config)))
    page = write_html(smoke, tmp_path / "smoke.html", PUBLISHED, quant=True).path.read_text(encoding="utf-8")
    notes = [html.unescape(n) for n in re.findall(r"<li>(.*?)</li>", page)]
    warnings = [n for n in notes if "⚠" in n]
    assert any(n.startswith("⚠ Baichuan-13B-Base fp16 limit=40: --limit 40 questions") for n in warnings)
    assert len(warnings) >= 4 and all(n.count("⚠") == 1 and n.startswith("⚠ ") for n in warnings)
    assert "<td>Baichuan-13B-Base fp16 ⚠ limit=40</td>" in page  # the row label keeps its flag
