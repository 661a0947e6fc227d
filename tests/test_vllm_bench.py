"""`bench --backend vllm` (evalkit.bench.vllm_bench) on a real vLLM engine: rows, exactly N new tokens, what
is recorded. No test asserts a timing or a speed order; they assert how the figures relate.

Runs where vLLM is importable (.ci/vllm); skips, saying so, everywhere else. Reuses the tiny llama and
its module-scoped engine of tests/test_vllm_backend.py (started once more for this module).
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawn
vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (.ci/vllm builds its environment)")

from test_vllm_backend import SETTINGS, tiny  # noqa: E402, F401 (the engine fixture)
from transformers import AutoTokenizer  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402

from evalkit.bench.schema import BenchSettings  # noqa: E402
from evalkit.bench.vllm_bench import bench_llm, check_exact  # noqa: E402
from evalkit.store.records import ModelInfo  # noqa: E402
from evalkit.types import EvalkitError  # noqa: E402

SMALL = BenchSettings(
    new_tokens=6,
    prompt_tokens=16,
    batch_sizes=(1, 3),
    repeats=2,
    warmup=1,
    threads=1,
    probe_bytes=8 * 2**20,
    backend="vllm",
    vllm=SETTINGS,
)


def test_a_row_times_exactly_n_tokens_and_relates_its_figures(tiny):  # noqa: F811 (the imported fixture)
    tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
    info = ModelInfo(precision="fp32", quant_backend="none", dtype="float32")
    row = bench_llm(tiny.llm, tokenizer, 3, SMALL, model="tiny", info=info)
    B, P, N = 3, SMALL.prompt_tokens, SMALL.new_tokens
    assert (row.mode, row.batch_size, row.prompt_tokens, row.new_tokens) == ("vllm", B, P, N)
    assert not row.compiled and row.model == "tiny" and row.precision == "fp32"
    assert len(row.generate_s.values) == len(row.ttft_s.values) == SMALL.repeats
    for tok_s, seconds in zip(row.e2e_tok_s.values, row.generate_s.values, strict=True):
        assert tok_s == pytest.approx(B * N / seconds)
    for tok_s, seconds in zip(row.prefill_tok_s.values, row.ttft_s.values, strict=True):
        assert tok_s == pytest.approx(B * P / seconds)
    pairs = list(zip(row.ttft_s.values, row.generate_s.values, strict=True))
    resolved = [B * (N - 1) / (t - f) for f, t in pairs if t > f]  # the noise guard: n/a where T_N <= T_1
    assert (row.decode_tok_s is None) == (not resolved)
    if resolved:
        assert list(row.decode_tok_s.values) == pytest.approx(resolved)
    # the checkpoint's weights as HF counts them (untied: the input embedding is not read per step)
    hf_bytes = sum(p.numel() * p.element_size() for p in tiny.hf.parameters())
    embedding = tiny.hf.get_input_embeddings().weight
    assert row.weight_bytes == row.model_info.weight_bytes == hf_bytes
    assert row.weight_read_bytes == hf_bytes - embedding.numel() * embedding.element_size()
    assert row.kv_bytes_per_token == 2 * 2 * 1 * 64 * 4  # K and V x 2 layers x 1 KV head x 64 x fp32
    assert row.bytes_per_step == int(row.weight_read_bytes + B * row.kv_bytes_per_token * (P + N / 2))


def test_a_short_output_or_a_cached_prompt_is_refused(tiny):  # noqa: F811 (the imported fixture)
    """The exactness check outside the timers: fewer tokens than forced, or prefill read from the cache."""
    prompt = [TokensPrompt(prompt_token_ids=list(range(5, 305)))]  # longer than a KV block: cacheable
    greedy = {"temperature": 0.0, "detokenize": False, "ignore_eos": True}
    tiny.llm.reset_prefix_cache()
    fresh = tiny.llm.generate(prompt, SamplingParams(max_tokens=3, min_tokens=3, **greedy), use_tqdm=False)
    check_exact(fresh, 1, 3, "tiny")
    with pytest.raises(EvalkitError, match="exactly 4 new tokens"):
        check_exact(fresh, 1, 4, "tiny")
    with pytest.raises(EvalkitError, match="for 1 of 2 rows"):
        check_exact(fresh, 2, 3, "tiny")
    again = tiny.llm.generate(prompt, SamplingParams(max_tokens=3, min_tokens=3, **greedy), use_tqdm=False)
    assert again[0].num_cached_tokens > 0
    with pytest.raises(EvalkitError, match="prompt tokens from the prefix cache"):
        check_exact(again, 1, 3, "tiny")


def test_bench_backend_vllm_on_the_command_line_records_vllm(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811 (the imported fixture)
    """`run_eval bench --backend vllm` end to end (its own engine, prefix cache off): one row per batch
    size, the vLLM version and engine settings in the JSON, the table printed."""
    import run_eval

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: vLLM's CPU default takes several
    argv = ["bench", "--backend", "vllm", "--model", str(tiny.model_dir), "--precision", "fp32"]
    argv += ["--new-tokens", "4", "--prompt-tokens", "8", "--batch-sizes", "1,2", "--repeats", "1"]
    argv += ["--warmup", "0", "--threads", "1", "--enforce-eager", "--max-model-len", "256"]
    assert run_eval.main([*argv, "--output-dir", str(tmp_path)]) == 0
    assert f"Throughput (vllm {vllm.__version__})" in capsys.readouterr().out
    [path] = tmp_path.glob("bench_*_vllm.json")
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["mode"] == "vllm" and report["vllm_version"] == vllm.__version__
    settings = report["settings"]
    assert settings["backend"] == "vllm" and settings["mode"] == "eager"
    assert settings["vllm"]["enforce_eager"] and settings["vllm"]["max_model_len"] == 256
    assert [(r["batch_size"], r["new_tokens"], r["mode"]) for r in report["rows"]] == [
        (1, 4, "vllm"),
        (2, 4, "vllm"),
    ]
    assert all(r["model_info"]["implementation"] == f"vllm {vllm.__version__}" for r in report["rows"])
