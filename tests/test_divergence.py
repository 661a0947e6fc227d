"""Letter-distribution divergence of a pair of runs: KL(P_A || P_B), its percentiles, top-letter agreement
and the gold letter's probability shift on constructed pairs (expected values computed here with numpy),
the power note, and a real pair: a tiny model at fp32 and at rtn int4."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from builders import saved_run
from scipy.stats import binomtest

from evalkit.questions.permute import ROTATION_MARK, ROTATIONS, rotated_id
from evalkit.stats.compare import compare, compare_pair
from evalkit.stats.divergence import detectable_drop, expanded_quantile, letter_kl
from evalkit.store.saved_runs import find_runs, load_run
from evalkit.types import LETTERS, QuestionResult, RunConfig
from tasks import get_task

MMLU, CEVAL = get_task("mmlu"), get_task("ceval")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def scored(task: str, subject: str, logprobs: np.ndarray, golds: list[str]) -> list[QuestionResult]:
    """Questions whose prediction is their top letter, as the scorer saves them."""
    out = []
    for i, (row, gold) in enumerate(zip(logprobs, golds, strict=True)):
        pred = LETTERS[int(np.argmax(row))]
        out.append(
            QuestionResult(
                id=f"{task}/{subject}/test/{i}",
                subject=subject,
                gold=gold,
                pred=pred,
                logprobs=tuple(float(x) for x in row),
                correct=pred == gold,
                shots_used=5,
                prompt_tokens=100,
            )
        )
    return out


def pair(task: str, subjects: dict[str, int], noise: float, seed: int = 0):
    """Runs A and B of `task` on `subjects` (name -> questions): B's logits are A's plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    qa, qb, arrays = [], [], {}
    for subject, n in subjects.items():
        logits = 2.0 * rng.normal(size=(n, 4))
        la, lb = log_softmax(logits), log_softmax(logits + noise * rng.normal(size=(n, 4)))
        golds = [LETTERS[i % 4] for i in range(n)]
        qa += scored(task, subject, la, golds)
        qb += scored(task, subject, lb, golds)
        arrays[subject] = (la, lb, np.array([i % 4 for i in range(n)]))
    a = saved_run(RunConfig(model="org/Model-7B", task=task), qa)
    b = saved_run(RunConfig(model="org/Model-7B", task=task, precision="int4", quant_backend="rtn"), qb)
    return a, b, arrays


def expected(arrays: dict, subjects: list[str]) -> dict[str, np.ndarray]:
    """Per-question KL(P_A || P_B), agreement and |Δ P(gold)| computed from probabilities."""
    kl, agree, shift = [], [], []
    for subject in subjects:
        la, lb, gold = arrays[subject]
        pa, pb = np.exp(la), np.exp(lb)
        kl.append(np.sum(pa * np.log(pa / pb), axis=1))
        agree.append(pa.argmax(axis=1) == pb.argmax(axis=1))
        rows = np.arange(len(gold))
        shift.append(np.abs(pb[rows, gold] - pa[rows, gold]))
    return {"kl": np.concatenate(kl), "agree": np.concatenate(agree), "shift": np.concatenate(shift)}


def test_kl_agreement_and_gold_shift_match_numpy_per_subject_category_and_benchmark():
    a, b, arrays = pair("mmlu", {"astronomy": 120, "anatomy": 80}, noise=0.8)
    c = compare_pair(MMLU, a, b)
    levels = {
        "astronomy": c.subjects["astronomy"],
        "anatomy": c.subjects["anatomy"],
        "STEM": c.groups["STEM"],
        "Average": c.overall,
    }
    members = {
        "astronomy": ["astronomy"],
        "anatomy": ["anatomy"],
        "STEM": ["astronomy"],
        "Average": ["astronomy", "anatomy"],
    }
    for level, delta in levels.items():
        want, got = expected(arrays, members[level]), delta.divergence
        assert got.n == len(want["kl"])
        assert got.kl_mean.value == pytest.approx(want["kl"].mean(), rel=1e-9)
        assert got.kl_p95.value == pytest.approx(np.percentile(want["kl"], 95), rel=1e-9)
        assert got.kl_p99.value == pytest.approx(np.percentile(want["kl"], 99), rel=1e-9)
        assert got.agreement.value == pytest.approx(want["agree"].mean())
        assert got.gold_shift.value == pytest.approx(want["shift"].mean(), rel=1e-9)
        for estimate in (got.kl_mean, got.kl_p95, got.agreement, got.gold_shift):
            assert estimate.ci.low <= estimate.value <= estimate.ci.high
    overall = c.overall.divergence
    assert 0 < overall.kl_mean.value and overall.agreement.value < 1  # the noise flips some top letters
    assert overall.kl_mean.ci.high - overall.kl_mean.ci.low < overall.kl_mean.value  # a tight interval
    assert c.groups["Others"].divergence == c.subjects["anatomy"].divergence


def test_kl_runs_from_a_to_b_not_the_other_way():
    la = np.log(np.array([[0.7, 0.1, 0.1, 0.1]]))
    lb = np.log(np.array([[0.4, 0.4, 0.1, 0.1]]))
    forward = 0.7 * np.log(0.7 / 0.4) + 0.1 * np.log(0.1 / 0.4)
    backward = 0.4 * np.log(0.4 / 0.7) + 0.4 * np.log(0.4 / 0.1)
    assert letter_kl(la, lb)[0] == pytest.approx(forward) and forward != pytest.approx(backward)
    assert letter_kl(lb, la)[0] == pytest.approx(backward)
    assert letter_kl(la, la)[0] == 0.0
    certain, split = np.array([[0.0, -np.inf, -np.inf, -np.inf]]), np.log([[0.5, 0.5, 1e-300, 1e-300]])
    assert letter_kl(certain, split)[0] == pytest.approx(np.log(2))  # letters A gives 0 add nothing
    assert letter_kl(split, certain)[0] == np.inf  # B rules out a letter A allows


def test_identical_runs_diverge_by_nothing():
    a, _, _ = pair("mmlu", {"astronomy": 30}, noise=0.0)
    d = compare_pair(MMLU, a, a).overall.divergence
    assert (d.kl_mean.value, d.kl_p99.value, d.agreement.value, d.gold_shift.value) == (0.0, 0.0, 1.0, 0.0)
    assert (d.kl_mean.ci.low, d.kl_mean.ci.high, d.agreement.ci.low) == (0.0, 0.0, 1.0)


def test_macro_benchmarks_average_the_subject_means():
    # C-Eval (macro): every accountant question moves by KL k1, every art_studies one by k2
    la = np.log(np.tile([0.7, 0.1, 0.1, 0.1], (10, 1)))
    lb = np.log(np.tile([0.4, 0.4, 0.1, 0.1], (10, 1)))
    la2 = np.log(np.tile([0.25, 0.25, 0.25, 0.25], (30, 1)))
    lb2 = np.log(np.tile([0.4, 0.2, 0.2, 0.2], (30, 1)))
    k1, k2 = letter_kl(la[:1], lb[:1])[0], letter_kl(la2[:1], lb2[:1])[0]
    a = scored("ceval", "accountant", la, ["A"] * 10) + scored("ceval", "art_studies", la2, ["B"] * 30)
    b = scored("ceval", "accountant", lb, ["A"] * 10) + scored("ceval", "art_studies", lb2, ["B"] * 30)
    for scheme, want in (("official", (k1 + k2) / 2), ("lm-eval", (10 * k1 + 30 * k2) / 40)):
        runs = [
            saved_run(RunConfig(model="m", task="ceval", scheme=scheme, precision=p), q)
            for p, q in (("fp32", a), ("int8", b))
        ]
        d = compare_pair(CEVAL, *runs).overall.divergence
        assert d.kl_mean.value == pytest.approx(want)
        assert d.agreement.value == 1.0  # art_studies: A's tie breaks to "A", B's top letter is "A" too
        assert d.gold_shift.value == pytest.approx(
            (0.3 + 0.05) / 2 if scheme == "official" else (10 * 0.3 + 30 * 0.05) / 40
        )


def test_the_divergence_interval_is_seeded_and_paired():
    a, b, _ = pair("mmlu", {"astronomy": 60}, noise=0.5)
    first = compare_pair(MMLU, a, b, seed=4).overall.divergence
    assert first == compare_pair(MMLU, a, b, seed=4).overall.divergence
    assert first.kl_mean.ci != compare_pair(MMLU, a, b, seed=5).overall.divergence.kl_mean.ci


@pytest.mark.parametrize("discordant", range(0, 41))
def test_detectable_drop_is_the_smallest_significant_one_way_split(discordant):
    n = 200
    significant = [
        k for k in range(discordant + 1) if 2 * k > discordant and binomtest(k, discordant, 0.5).pvalue < 0.05
    ]
    want = None if not significant else (2 * significant[0] - discordant) / n
    assert detectable_drop(n, discordant) == (None if want is None else pytest.approx(want))


def test_detectable_drop_known_values():
    assert detectable_drop(60, 7) == pytest.approx(7 / 60)  # all 7 one way: p = 2/128
    assert detectable_drop(100, 10) == pytest.approx(8 / 100)  # 9 of 10 one way: p = 22/1024
    assert detectable_drop(100, 5) is None  # even 5 of 5 gives p = 1/16


# ---- a real pair: the tiny SentencePiece llama at fp32 and at rtn int4 ----
# 0-shot prompts on 20 rows of each tiny MMLU subject: the random model's top letter then varies with the
# question, and int4 moves about a sixth of them (11 of 60, from top-2 margins up to 0.6 nats), so
# agreement < 1 holds with room. (The 6-row `tiny_data_dir` at 5 shots flips none: every question's top
# letter is the same one, by a margin of 1.5 nats.)
REAL_ROWS = 20


@pytest.fixture(scope="module")
def real_pair(tiny_spm_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    from datafiles import TINY_SUBJECTS, write_data_dir

    from run_eval import main

    root = tmp_path_factory.mktemp("real_pair")
    data = write_data_dir(root / "data", "mmlu", {name: REAL_ROWS for name in TINY_SUBJECTS["mmlu"]})
    subjects = ",".join(f"mmlu/{name}" for name in TINY_SUBJECTS["mmlu"])
    dirs = []
    for name, flags in (("fp32", ()), ("int4", ("--precision", "int4", "--quant-backend", "rtn"))):
        args = [
            "eval",
            "--model",
            str(tiny_spm_model_dir),
            "--data-dir",
            str(data),
            "--tasks",
            "mmlu",
            "--subjects",
            subjects,
            "--shots",
            "0",
            "--output-dir",
            str(root / name),
            "--no-progress",
            *flags,
        ]
        assert main(args) == 0
        dirs.append(root / name)
    return dirs[0], dirs[1]


def _logprobs(folder: Path) -> dict[str, list[float]]:
    (run_dir,) = find_runs([folder])
    lines = (run_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row["logprobs"] for row in map(json.loads, lines)}


def test_real_int4_pair_diverges_and_changes_top_letters(real_pair):
    fp32, int4 = real_pair
    la, lb = _logprobs(fp32), _logprobs(int4)
    ids = list(la)
    pa, pb = np.exp(np.array([la[i] for i in ids])), np.exp(np.array([lb[i] for i in ids]))
    kl = np.sum(pa * np.log(pa / pb), axis=1)  # from the saved files, independently of evalkit
    (run_a,), (run_b,) = ([load_run(d) for d in find_runs([f])] for f in real_pair)
    d = compare([run_a], [run_b], get_task).benchmarks["mmlu"].overall.divergence
    assert d.n == len(ids) == 3 * REAL_ROWS
    assert d.kl_mean.value == pytest.approx(kl.mean(), rel=1e-6) and d.kl_mean.ci.low > 0
    assert d.kl_p99.value == pytest.approx(np.percentile(kl, 99), rel=1e-6)
    assert d.agreement.value == pytest.approx(np.mean(pa.argmax(1) == pb.argmax(1)))
    assert 0.5 < d.agreement.value < 0.95 and d.agreement.ci.high < 1


def test_real_pair_gates_exit_on_kl_and_agreement(real_pair, capsys):
    from run_eval import main

    a, b = map(str, real_pair)
    assert main(["compare", a, b, "--max-kl", "1", "--min-agreement", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "Gate (max KL 1 nats): pass" in out and "Gate (min agreement 0.5): pass" in out
    assert "Verdict: pass" in out and "- Power (MMLU): 60 questions" in out
    assert main(["compare", a, b, "--max-kl", "0.001", "--min-agreement", "0.99"]) == 1
    out = capsys.readouterr().out
    assert "Gate (max KL 0.001 nats): FAIL: mmlu (0.0" in out
    assert "Gate (min agreement 0.99): FAIL: mmlu (0." in out
    assert "Verdict: FAIL (max KL, min agreement)" in out
    assert main(["report", a, b, "--no-published"]) == 0
    report = capsys.readouterr().out
    assert "### Letter distributions against full precision" in report
    assert "| model int4/rtn | model fp32 | KL 0.0" in report


def four_looks(run, permute: str = "cyclic"):
    """The run with each question saved as four identical rotation lines (ids as --permute cyclic
    writes them): four looks at one question, no more evidence than one."""
    config = dataclasses.replace(run.result.config, permute=permute)
    lines = [dataclasses.replace(q, id=rotated_id(q.id, k)) for q in run.questions for k in range(ROTATIONS)]
    return saved_run(config, lines)


def flat(figure) -> list[float]:
    """An Estimate or Interval as its numbers."""
    return [x for v in dataclasses.astuple(figure) for x in (v if isinstance(v, tuple) else (v,))]


def test_rotations_of_a_question_are_one_bootstrap_draw():
    """Intervals resample questions, not lines: four identical rotation lines per question give the
    plain run's intervals exactly (the same draws), where lines drawn one by one would narrow them."""
    a, b, _ = pair("mmlu", {"astronomy": 60, "anatomy": 40}, noise=0.8)
    plain = compare_pair(MMLU, a, b, seed=3).overall
    rotated = compare_pair(MMLU, four_looks(a), four_looks(b), seed=3).overall
    assert rotated.divergence.n == 4 * plain.divergence.n
    assert rotated.ci == plain.ci  # accuracy delta
    for got, want in (
        *(
            (getattr(rotated.divergence, f), getattr(plain.divergence, f))
            for f in ("kl_mean", "agreement", "gold_shift")
        ),
        (rotated.calibration.ece_ci, plain.calibration.ece_ci),
        (rotated.calibration.brier_ci, plain.calibration.brier_ci),
    ):  # equal but for the rounding of four-fold sums
        assert flat(got) == pytest.approx(flat(want), rel=1e-12)
    lines_apart = dataclasses.replace  # the same lines under ids that are not rotations: 4x the draws
    apart = [
        saved_run(
            run.result.config, [lines_apart(q, id=q.id.replace(ROTATION_MARK, "-")) for q in run.questions]
        )
        for run in (four_looks(a, "none"), four_looks(b, "none"))
    ]
    narrow = compare_pair(MMLU, *apart, seed=3).overall
    assert narrow.delta == pytest.approx(plain.delta)
    assert narrow.ci.high - narrow.ci.low < 0.7 * (plain.ci.high - plain.ci.low)
    assert narrow.divergence.kl_mean.ci.high - narrow.divergence.kl_mean.ci.low < 0.7 * (
        plain.divergence.kl_mean.ci.high - plain.divergence.kl_mean.ci.low
    )


@pytest.mark.parametrize("q", [0.0, 0.37, 0.95, 0.99, 1.0])
def test_expanded_quantile_is_numpy_quantile_of_the_repeated_sample(q):
    rng = np.random.default_rng(5)
    values = np.append(rng.exponential(size=30), [7.0, 0.0])
    draws = rng.multinomial(32, np.full(32, 1 / 32), size=50)  # (50, 32) integer weights
    want = [np.quantile(np.repeat(values, row), q) for row in draws]
    np.testing.assert_allclose(expanded_quantile(values, draws, q), want, rtol=1e-12)
    values[-2] = np.inf  # an infinite KL drawn at or next to the percentile: inf, never NaN
    got = expanded_quantile(values, draws, q)
    assert not np.isnan(got).any()
    assert np.isinf(got).any() == (q > 0.9)
