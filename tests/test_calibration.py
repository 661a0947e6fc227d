"""Calibration (ECE, Brier) against hand-computed cases, letter mass coverage, position bias and circular
accuracy on hand-made results, the questions-file bytes of the new field, and the compare gate."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from builders import run_result

from evalkit.stats.calibration import (
    calibration,
    calibration_delta,
    letter_mass,
    per_question,
    reliability,
)
from evalkit.stats.compare import compare
from evalkit.stats.gates import check_thresholds
from evalkit.stats.permutation import position_bias, robustness
from evalkit.store.records import SavedRun
from evalkit.types import EvalkitError, QuestionResult, RunConfig
from tasks import get_task


def result(
    index: int,
    probs: tuple[float, ...],
    gold: str,
    pred: str,
    *,
    subject: str = "accountant",
    mass: float | None = None,
    qid: str | None = None,
) -> QuestionResult:
    return QuestionResult(
        id=qid or f"ceval/{subject}/val/{index}",
        subject=subject,
        gold=gold,
        pred=pred,
        logprobs=tuple(math.log(p) for p in probs),
        correct=pred == gold,
        shots_used=5,
        prompt_tokens=10,
        letter_mass=mass,
    )


# confidences 0.72, 0.72, 0.45, 0.25 (no bin edge within float noise)
HAND = [
    result(0, (0.72, 0.1, 0.1, 0.08), "A", "A"),
    result(1, (0.72, 0.1, 0.1, 0.08), "B", "A"),
    result(2, (0.45, 0.3, 0.15, 0.1), "A", "A"),
    result(3, (0.25, 0.25, 0.25, 0.25), "D", "A"),  # a tie goes to A, as the runner breaks it
]


def test_ece_and_brier_by_hand():
    # bins (0.7, 0.8]: 2 questions, accuracy 0.5, confidence 0.72 -> 2/4 * 0.22
    # (0.4, 0.5]: 1 question right at 0.45 -> 1/4 * 0.55; (0.2, 0.3]: 1 wrong at 0.25 -> 1/4 * 0.25
    got = calibration(per_question(HAND), 10, n_boot=0)
    assert got.ece == pytest.approx(0.11 + 0.1375 + 0.0625)
    # Brier per question: 0.1048, 1.3448, 0.425, 0.75
    assert got.brier == pytest.approx((0.1048 + 1.3448 + 0.425 + 0.75) / 4)
    assert got.n == 4 and got.bins == 10 and got.ece_ci is None
    one_bin = calibration(per_question(HAND), 1, n_boot=0)  # |accuracy - mean confidence|
    assert one_bin.ece == pytest.approx(abs(0.5 - (0.72 + 0.72 + 0.45 + 0.25) / 4))


def test_brier_extremes_and_perfect_calibration():
    perfect = [result(i, (0.997, 0.001, 0.001, 0.001), "A", "A") for i in range(3)]
    wrong = [result(i, (0.997, 0.001, 0.001, 0.001), "B", "A") for i in range(3)]
    assert calibration(per_question(perfect), n_boot=0).brier == pytest.approx(0, abs=1e-4)
    assert calibration(per_question(wrong), n_boot=0).brier == pytest.approx(2, abs=1e-2)
    assert calibration(per_question(wrong), n_boot=0).ece == pytest.approx(0.997)


def test_pooled_over_subjects_and_intervals():
    other = [result(i, (0.9, 0.05, 0.03, 0.02), "A", "A", subject="law") for i in range(6)]
    parts = per_question(HAND + other)
    assert set(parts) == {"accountant", "law"}
    got = calibration(parts, n_boot=500, seed=1)
    pooled = calibration(
        per_question([dataclasses.replace(r, subject="law") for r in HAND + other]), n_boot=0
    )
    assert got.ece == pytest.approx(pooled.ece) and got.n == 10  # pooled, not a mean of subjects
    assert got.ece_ci.low <= got.ece <= got.ece_ci.high and got.brier_ci.low <= got.brier <= got.brier_ci.high
    assert calibration(parts, n_boot=500, seed=1) == got  # seeded


def test_paired_delta_of_a_run_with_itself_is_zero():
    parts = per_question(HAND)
    delta = calibration_delta(parts, parts, n_boot=200)
    assert delta.ece_delta == 0 and (delta.ece_ci.low, delta.ece_ci.high) == (0, 0)
    assert delta.brier_delta == 0


def test_reliability_bins():
    bins = reliability(per_question(HAND), 10)
    assert [b.n for b in bins] == [0, 0, 1, 0, 1, 0, 0, 2, 0, 0]
    assert bins[7].accuracy == 0.5 and bins[7].confidence == pytest.approx(0.72) and bins[0].accuracy is None


def test_bad_bin_count_is_refused():
    with pytest.raises(EvalkitError, match="--ece-bins"):
        calibration(per_question(HAND), 0)


def test_letter_mass_counts_what_it_covers():
    old = HAND[:2]  # saved before the field existed: no mass
    new = [dataclasses.replace(r, letter_mass=m) for r, m in zip(HAND[2:], (0.5, 0.7), strict=True)]
    got = letter_mass(old + new)
    assert got.mean == pytest.approx(0.6) and (got.n, got.of) == (2, 4)
    assert letter_mass(old).mean is None


def test_questions_file_lines_keep_their_bytes_without_the_mass():
    line = HAND[0].to_json()
    assert "letter_mass" not in line
    assert QuestionResult.from_dict(json.loads(line)) == HAND[0]
    with_mass = dataclasses.replace(HAND[0], letter_mass=0.25)
    assert json.loads(with_mass.to_json())["letter_mass"] == 0.25
    assert QuestionResult.from_dict(json.loads(with_mass.to_json())) == with_mass


def rotations(index: int, right: tuple[bool, bool, bool, bool]) -> list[QuestionResult]:
    """Four rotation lines of one question; gold moves A, D, C, B (rotation k: gold index -k mod 4)."""
    out = []
    for k, ok in enumerate(right):
        gold = "ADCB"[k]
        pred = gold if ok else ("A" if gold != "A" else "B")
        qid = f"ceval/accountant/val/{index}" + (f"@rot{k}" if k else "")
        out.append(result(index, (0.4, 0.3, 0.2, 0.1), gold, pred, qid=qid))
    return out


def test_circular_accuracy_and_position_bias():
    results = rotations(0, (True, True, True, True)) + rotations(1, (True, False, True, True))
    got = robustness(results, "micro")
    assert got.circular.accuracy == 0.5 and got.mean_over_rotations.accuracy == pytest.approx(7 / 8)
    assert got.questions == 2
    assert robustness(HAND, "micro") is None  # a plain run: no rotations
    assert robustness(results[:-1], "micro") is None  # an incomplete rotation set: no guess
    bias = position_bias(results)
    assert bias.gold == (0.25, 0.25, 0.25, 0.25)
    assert bias.picked == (3 / 8, 2 / 8, 2 / 8, 1 / 8) and bias.largest_skew == pytest.approx(0.125)


SHARP = {"A": (0.97, 0.01, 0.01, 0.01), "B": (0.01, 0.97, 0.01, 0.01)}


def test_compare_gates_on_the_ece_increase():
    task = get_task("ceval")
    config = RunConfig(model="m", task="ceval", subjects=("accountant",))
    # A: every question at confidence 0.5, half right (ECE 0); B: the same answers at confidence 0.97
    calibrated = [result(i, (0.5, 0.2, 0.2, 0.1), "A", "A") for i in range(4)]
    calibrated += [result(i, (0.2, 0.5, 0.2, 0.1), "A", "B") for i in range(4, 8)]
    overconfident = [
        dataclasses.replace(r, logprobs=tuple(math.log(p) for p in SHARP[r.pred])) for r in calibrated
    ]
    a = SavedRun(run_result(config, calibrated), calibrated)
    b = SavedRun(run_result(config, overconfident), overconfident)
    passed = compare([a], [a], lambda name: task, max_ece_increase=1.0, n_boot=100)
    assert passed.passed and passed.benchmarks["ceval"].overall.calibration.ece_delta == 0
    failed = compare([a], [b], lambda name: task, max_ece_increase=1.0, n_boot=100)
    assert not failed.passed and failed.gates[0].name == "max ECE increase"
    assert failed.gates[0].failed["ceval"] == pytest.approx(100 * (0.47 - 0.0), abs=1e-6)
    with pytest.raises(EvalkitError, match="--max-ece-increase"):
        check_thresholds(max_ece_increase=-1)
    with pytest.raises(EvalkitError, match="--max-ece-increase"):
        check_thresholds(max_ece_increase=math.nan)


def test_report_shows_dashes_for_old_runs_and_counts_mass_coverage(tmp_path):
    import pandas as pd

    from evalkit.report.calibration_tables import calibration_markdown
    from evalkit.report.csv import write_csv
    from evalkit.report.html import write_html
    from evalkit.store.records import ReportRun

    task = get_task("ceval")
    config = RunConfig(model="org/old", task="ceval", subjects=("accountant",))
    old = ReportRun(run_result(config, HAND), task, None, None)  # saved without its questions read back
    mixed = [dataclasses.replace(r, letter_mass=0.5) for r in HAND[:2]] + HAND[2:]
    new_config = dataclasses.replace(config, model="org/new")
    new = ReportRun(run_result(new_config, mixed), task, None, mixed)
    text = calibration_markdown([old, new])
    old_row = next(line for line in text.splitlines() if line.startswith("| old"))
    new_row = next(line for line in text.splitlines() if line.startswith("| new"))
    assert old_row.count("–") == 6  # ECE, Brier, mass, circular, rotation mean, position bias
    assert "0.500 (2/4)" in new_row and "31.0 [" in new_row  # mass over the 2 of 4 that carry it; ECE
    frame = pd.read_csv(write_csv([old, new], tmp_path / "t.csv"))
    average = frame[(frame.group == "Average") & (frame.source == "measured")].set_index("run")
    assert (
        average.at["new fp32", "ece"] == pytest.approx(31.0) and average.at["new fp32", "letter_mass_n"] == 2
    )
    assert pd.isna(average.at["old fp32", "ece"]) and average.at["old fp32", "permute"] == "none"
    page = write_html([old, new], tmp_path / "r.html")
    assert any(p.name == "r-reliability.png" for p in page.plots)
    assert "calibration and answer order" in page.path.read_text(encoding="utf-8")
