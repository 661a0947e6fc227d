"""A comparison (evalkit.stats.compare) as markdown: the answer first, then each benchmark.

The summary: each benchmark's Average (accuracy delta with its paired CI, McNemar), the letter-distribution
divergence of B from A beside it, a power note (the smallest drop the flips let McNemar's exact test
detect) and every gate's verdict. Then per benchmark its Average and categories, the subjects where
something changed (every subject when asked), and the first questions that flipped.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from evalkit.report.text import markdown_table
from evalkit.stats.compare import BenchmarkComparison, Comparison, Delta
from evalkit.stats.divergence import divergence_columns
from evalkit.stats.gates import Gate

DIVERGENCE_HEADING = (
    "Letter distributions of B against A: KL(P_A ‖ P_B) over the four letters in nats "
    "(mean, 95th/99th percentile), agreement = questions whose top letter is the same, "
    "abs Δp(gold) = mean absolute change of the gold letter's probability; [paired "
    "bootstrap 95% CI]\n"
)


def _rows(deltas: Mapping[str, Delta]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(
        {
            name: {
                "A": f"{100 * d.a.accuracy:.1f}",
                "B": f"{100 * d.b.accuracy:.1f}",
                "Δ": f"{100 * d.delta:+.1f}",
                "95% CI": f"{100 * d.ci.low:+.1f} … {100 * d.ci.high:+.1f}",
                "n": d.a.n,
                "right→wrong": d.right_to_wrong,
                "wrong→right": d.wrong_to_right,
                "McNemar p": f"{d.p_value:.3g}",
            }
            for name, d in deltas.items()
        },
        orient="index",
    )


def _divergence_rows(deltas: Mapping[str, Delta]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(
        {name: divergence_columns(d.divergence) for name, d in deltas.items()}, orient="index"
    )


CALIBRATION_HEADING = (
    "Calibration of B against A: ECE in points (top letter, {bins} equal-width bins, pooled over the "
    "questions), Brier 0-2 (sum over the four letters of (p - y)², mean); Δ = B - A [paired bootstrap "
    "95% CI]\n"
)


def _calibration_rows(deltas: Mapping[str, Delta]) -> pd.DataFrame:
    rows = {}
    for name, d in deltas.items():
        c = d.calibration
        if c is None:
            continue
        rows[name] = {
            "ECE A": f"{100 * c.a.ece:.1f}",
            "ECE B": f"{100 * c.b.ece:.1f}",
            "Δ ECE": f"{100 * c.ece_delta:+.1f} [{100 * c.ece_ci.low:+.1f}, {100 * c.ece_ci.high:+.1f}]",
            "Brier A": f"{c.a.brier:.3f}",
            "Brier B": f"{c.b.brier:.3f}",
            "Δ Brier": f"{c.brier_delta:+.3f} [{c.brier_ci.low:+.3f}, {c.brier_ci.high:+.3f}]",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def _power(c: BenchmarkComparison) -> str:
    """What a pass can mean: the smallest drop the paired discordance lets McNemar's test detect."""
    d = c.overall
    flipped = d.right_to_wrong + d.wrong_to_right
    head = (
        f"- Power ({c.title}): {d.a.n} questions, {flipped} discordant (right in one run only, "
        f"{100 * flipped / d.a.n:.1f}%): "
    )
    if d.detectable_drop is None:
        return head + "too few flips for McNemar's exact test to detect any drop at 95% (6 one way at least)"
    return (
        head + f"the smallest drop McNemar's exact test detects at 95% is {100 * d.detectable_drop:.1f} "
        "points; a smaller one cannot be told from chance"
    )


def _gate_line(gate: Gate) -> str:
    shown = {"points": ".1f", "nats": ".3g", "fraction": ".3f"}[gate.unit]
    unit = "" if gate.unit == "fraction" else f" {gate.unit}"
    verdict = (
        "pass"
        if not gate.failed
        else "FAIL: " + ", ".join(f"{name} ({value:{shown}})" for name, value in gate.failed.items())
    )
    return f"Gate ({gate.name} {gate.threshold:g}{unit}): {verdict}"


def _changed(delta: Delta) -> bool:
    """Something moved: the accuracy, questions flipped (both ways, the accuracy may stay put), or a top
    letter changed between wrong answers."""
    flipped = delta.right_to_wrong + delta.wrong_to_right > 0
    return abs(delta.delta) > 1e-12 or flipped or delta.divergence.agreement.value < 1


def _summary(comparison: Comparison) -> list[str]:
    """The answer first: each benchmark's Average, and the gate's verdict."""
    rows = _rows({c.title: c.overall for c in comparison.benchmarks.values()}).rename_axis("benchmark")
    labels = {(c.label_b, c.label_a) for c in comparison.benchmarks.values()}
    sides = "B = {} vs A = {}".format(*labels.pop()) if len(labels) == 1 else "B vs A"
    parts = [f"## Summary: {sides} (benchmark Averages, accuracy points)\n", markdown_table(rows)]
    overall = {c.title: c.overall for c in comparison.benchmarks.values()}
    parts += [DIVERGENCE_HEADING, markdown_table(_divergence_rows(overall).rename_axis("benchmark"))]
    calibration = _calibration_rows(overall)
    if len(calibration):
        bins = next(iter(comparison.benchmarks.values())).overall.calibration.a.bins
        parts += [CALIBRATION_HEADING.format(bins=bins), markdown_table(calibration.rename_axis("benchmark"))]
    parts += [_power(c) for c in comparison.benchmarks.values()]
    if comparison.max_drop is not None:
        loose = [
            f"{c.title} ({100 * c.overall.detectable_drop:.1f})"
            for c in comparison.benchmarks.values()
            if c.overall.detectable_drop and 100 * c.overall.detectable_drop > comparison.max_drop
        ]
        if loose:
            parts.append(
                f"- ⚠ max drop {comparison.max_drop:g} points is below what these questions can "
                f"detect on {', '.join(loose)}: a pass of that gate means little"
            )
    parts.append("")
    if comparison.gates:
        parts += [_gate_line(gate) for gate in comparison.gates]
        failing = [gate.name for gate in comparison.gates if gate.failed]
        parts += [f"Verdict: {'FAIL (' + ', '.join(failing) + ')' if failing else 'pass'}", ""]
    return parts


def _subject_rows(c: BenchmarkComparison, all_subjects: bool) -> list[str]:
    shown = {name: d for name, d in c.subjects.items() if all_subjects or _changed(d)}
    parts = [markdown_table(_rows(shown).rename_axis("subject"))] if shown else []
    if shown:
        parts += [markdown_table(_divergence_rows(shown).rename_axis("subject"))]
    if len(shown) < len(c.subjects):
        hidden = len(c.subjects) - len(shown)
        parts.append(
            f"Not listed: {hidden} of {len(c.subjects)} subjects, unchanged (same accuracy, no "
            "question flipped, the same top letters); --all-subjects lists every subject\n"
        )
    return parts


def to_markdown(comparison: Comparison, max_flips: int = 20, all_subjects: bool = False) -> str:
    """The summary and the gate first; then per benchmark: the Average and categories, the subjects where
    something changed (every subject with `all_subjects`), and the first flipped questions."""
    parts = _summary(comparison)
    for c in comparison.benchmarks.values():
        parts.append(f"## {c.title}: B = {c.label_b} vs A = {c.label_a} (accuracy points, {c.aggregation})\n")
        if c.only_a or c.only_b:
            parts.append(
                f"⚠ subset comparison: {c.only_a} questions only in A and {c.only_b} only in B left out\n"
            )
        parts.append(markdown_table(_rows({"Average": c.overall, **c.groups}).rename_axis("group")))
        averages = {"Average": c.overall, **c.groups}
        parts.append(markdown_table(_divergence_rows(averages).rename_axis("group")))
        calibration = _calibration_rows(averages)
        if len(calibration):
            bins = c.overall.calibration.a.bins
            parts.append(CALIBRATION_HEADING.format(bins=bins))
            parts.append(markdown_table(calibration.rename_axis("group")))
        parts += _subject_rows(c, all_subjects)
        for direction in ("right→wrong", "wrong→right"):
            flips = [f for f in c.flips if f.direction == direction]
            shown = ", ".join(f"{f.id} ({f.pred_a}→{f.pred_b}, gold {f.gold})" for f in flips[:max_flips])
            more = f" … and {len(flips) - max_flips} more" if len(flips) > max_flips else ""
            parts.append(f"- {direction}: {len(flips)}" + (f": {shown}{more}" if flips else ""))
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"
