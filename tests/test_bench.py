"""Throughput benchmark on tiny real models: exact token counts, consistent figures, outputs on disk.

No test asserts a timing; they assert how the figures relate (definitions in evalkit/bench/hf_bench.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from evalkit.bench.generation import check_exact, generate_exactly, prompt_ids
from evalkit.bench.hf_bench import bench_loaded
from evalkit.bench.report import format_table, write_outputs
from evalkit.bench.runs import run_bench
from evalkit.bench.schema import BenchSettings
from evalkit.bench.timing import probe_bandwidth
from evalkit.models.loading import LoadedModel, load_model
from evalkit.types import EvalkitError, VllmEngine

SMALL = BenchSettings(
    new_tokens=24, prompt_tokens=7, batch_sizes=(1, 2), repeats=2, warmup=1, threads=1, probe_bytes=8 * 2**20
)
PROBE = {"buffer_bytes": 8 * 2**20, "repeats": 2}


def _favour_eos(loaded: LoadedModel) -> None:
    """Make EOS the greedy choice at every step (a real hook on the real lm_head)."""
    eos = loaded.tokenizer.eos_token_id

    def hook(_module: torch.nn.Module, _inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.clone()
        logits[..., eos] += 1e4
        return logits

    loaded.model.get_output_embeddings().register_forward_hook(hook)


@pytest.fixture(scope="module")
def eos_loving(tiny_spm_model_dir: Path) -> LoadedModel:
    loaded = load_model(str(tiny_spm_model_dir), "fp32", "cpu")
    _favour_eos(loaded)
    return loaded


def test_eos_is_suppressed_and_exactly_n_tokens_are_made(eos_loving: LoadedModel) -> None:
    inputs = prompt_ids(eos_loving.tokenizer, 7, 2)
    eos = eos_loving.tokenizer.eos_token_id
    with torch.inference_mode():
        plain = eos_loving.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=9,
            pad_token_id=eos_loving.tokenizer.pad_token_id,
        )
    assert plain.shape[1] - 7 < 9 and (plain[:, 7:] == eos).any()  # the model, left alone, stops at once
    out = generate_exactly(eos_loving, inputs, 9)
    assert out.shape == (2, 7 + 9)
    assert not (out[:, 7:] == eos).any()
    check_exact(eos_loving, out, 7, 9)


def test_check_exact_rejects_short_output_and_eos(eos_loving: LoadedModel) -> None:
    eos = eos_loving.tokenizer.eos_token_id
    good = torch.full((1, 7 + 4), 5)
    check_exact(eos_loving, good, 7, 4)
    with pytest.raises(EvalkitError, match="made 3 tokens"):
        check_exact(eos_loving, good[:, :-1], 7, 4)
    with_eos = good.clone()
    with_eos[0, 9] = eos
    with pytest.raises(EvalkitError, match="EOS"):
        check_exact(eos_loving, with_eos, 7, 4)


def test_prompt_has_exactly_p_tokens_with_the_tokenizers_bos(eos_loving: LoadedModel) -> None:
    ids = prompt_ids(eos_loving.tokenizer, 37, 3)
    assert ids.shape == (3, 37)
    assert ids[0, 0].item() == eos_loving.tokenizer.bos_token_id
    assert torch.equal(ids[0], ids[2])


def test_bench_figures_are_consistent(eos_loving: LoadedModel) -> None:
    torch.set_num_threads(1)
    config = eos_loving.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    kv_expected = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # K and V, fp32
    embed = eos_loving.model.get_input_embeddings().weight
    for batch in SMALL.batch_sizes:  # EOS favoured: the bench itself raises unless exactly N tokens came out
        row = bench_loaded(eos_loving, batch, SMALL)
        N, P = SMALL.new_tokens, SMALL.prompt_tokens
        assert (row.batch_size, row.mode, row.compiled, row.threads) == (batch, "eager", False, 1)
        for first, total, decode in zip(
            row.ttft_s.values, row.generate_s.values, row.decode_s.values, strict=True
        ):
            assert 0 < first and 0 < total and decode == pytest.approx(total - first)
        assert row.e2e_tok_s.values == pytest.approx(tuple(batch * N / t for t in row.generate_s.values))
        assert row.prefill_tok_s.values == pytest.approx(tuple(batch * P / t for t in row.ttft_s.values))
        # decode tok/s from the repeats whose T_N exceeded T_1; none on a machine busy enough: a note says so
        resolved = tuple(batch * (N - 1) / d for d in row.decode_s.values if d > 0)
        if not resolved:
            assert row.decode_tok_s is None and row.achieved_fraction is None
            assert any("timer noise swamps decode" in note for note in row.notes)
            continue
        assert row.decode_tok_s.values == pytest.approx(resolved)
        assert row.decode_tok_s.min <= row.decode_tok_s.median <= row.decode_tok_s.max
        assert row.kv_bytes_per_token == kv_expected
        # untied: the embedding is read by row only
        assert row.weight_read_bytes == row.weight_bytes - embed.numel() * 4
        assert row.bytes_per_step == int(row.weight_read_bytes + batch * kv_expected * (P + N / 2))
        probe = row.bandwidth  # two probes (before and after the repeats) of 8 MiB, 5 copies each
        assert probe.buffer_bytes == SMALL.probe_bytes and len(probe.values_gb_s) == 10
        assert probe.gb_s == max(probe.values_gb_s) and min(probe.values_gb_s) > 0
        assert row.bound_tok_s == pytest.approx(batch * probe.gb_s * 1e9 / row.bytes_per_step)
        assert row.achieved_fraction == pytest.approx(row.decode_tok_s.median / row.bound_tok_s)
        # a tiny model sits in cache: a fraction above 1 is then possible and must be flagged, never hidden
        flagged = row.cache_resident and any("bound does not apply" in note for note in row.notes)
        assert row.achieved_fraction <= 1 or flagged
        assert row.peak_rss_bytes > row.weight_bytes and row.peak_cuda_bytes is None
        assert row.load.cpu_count >= 1 and math.isfinite(row.load.cpu_percent_system)


def test_unresolved_decode_is_reported_not_raised(eos_loving: LoadedModel, tmp_path: Path) -> None:
    """A repeat whose T_N does not exceed its T_1 (a busy machine, small N) leaves decode empty with a
    note; the table says n/a and the plot and JSON still come out."""
    import dataclasses

    from evalkit.bench.measure import _notes
    from evalkit.bench.schema import BenchReport
    from evalkit.store.records import Environment

    row = bench_loaded(eos_loving, 1, SMALL)
    noisy = dataclasses.replace(row, decode_tok_s=None, achieved_fraction=None)
    noisy = dataclasses.replace(noisy, notes=_notes(noisy, SMALL))
    assert any("timer noise swamps decode" in note and "--new-tokens" in note for note in noisy.notes)
    report = BenchReport(
        "2026-01-01T00:00:00+00:00",
        "eager",
        SMALL,
        Environment(device="cpu", device_name="cpu"),
        (noisy,),
    )
    table = format_table(report)
    assert table.count("n/a") == 2 and "timer noise" in table
    json_path, _, png_path = write_outputs(report, tmp_path)
    assert json.loads(json_path.read_text(encoding="utf-8"))["rows"][0]["decode_tok_s"] is None
    assert png_path.stat().st_size > 0


def test_bandwidth_probe_is_positive_and_outsizes_the_cache() -> None:
    probe = probe_bandwidth("cpu", **PROBE)
    assert probe.buffer_bytes == PROBE["buffer_bytes"] and len(probe.values_gb_s) == 2
    assert all(v > 0 for v in probe.values_gb_s) and probe.gb_s == max(probe.values_gb_s)
    default = probe_bandwidth("cpu", repeats=1)  # sized so that it measures memory, not cache
    assert default.buffer_bytes >= max(256 * 2**20, 4 * (default.llc_bytes or 0)) and default.gb_s > 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"mode": "fast"}, "valid: eager, compiled"),
        ({"new_tokens": 1}, r"new-tokens must be ≥ 2 \(decode"),
        ({"repeats": 0}, "repeats must be ≥ 1, got 0"),
        ({"batch_sizes": (1, 0)}, r"batch sizes must be ≥ 1, got \[1, 0\]"),
        ({"mode": "compiled", "warmup": 0}, "warmup must be ≥ 1 in compiled mode"),
        ({"threads": 0}, "threads must be ≥ 1, got 0"),
    ],
)
def test_settings_reject_bad_input(bad: dict, message: str) -> None:
    with pytest.raises(EvalkitError, match=message):
        BenchSettings(**bad)


def test_missing_model_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(EvalkitError, match="not found"):
        run_bench([str(tmp_path / "nope.gguf")], ["fp32"], SMALL)


def test_run_bench_two_models_writes_table_json_and_plot(
    tiny_spm_model_dir: Path, tiny_bpe_model_dir: Path, tmp_path: Path
) -> None:
    threads_before = torch.get_num_threads()
    settings = BenchSettings(
        new_tokens=24, prompt_tokens=5, batch_sizes=(1,), repeats=2, warmup=1, threads=1, probe_bytes=2**20
    )
    report = run_bench([str(tiny_spm_model_dir), str(tiny_bpe_model_dir)], ["fp32", "bf16"], settings)
    assert torch.get_num_threads() == threads_before  # the caller's setting is restored
    assert [(r.precision, r.dtype) for r in report.rows] == [("fp32", "float32"), ("bf16", "bfloat16")] * 2
    assert report.rows[0].kv_bytes_per_token == 2 * report.rows[1].kv_bytes_per_token  # bf16 halves the cache
    table = format_table(report)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    # both fixture directories are called "model": the rows fall back to the paths to stay apart
    assert [r.model for r in report.rows[::2]] == [str(tiny_spm_model_dir), str(tiny_bpe_model_dir)]
    assert lines[0].split("|")[1].strip() == "Model" and f"× {tiny_spm_model_dir}" in lines[0]
    assert len(lines) == 1 + 4 and all(line.rstrip(" |").endswith(" 1.00") for line in lines[1:3])
    paths = write_outputs(report, tmp_path / "bench")
    assert [p.suffix for p in paths] == [".json", ".md", ".png"]
    assert all(p.parent == tmp_path / "bench" for p in paths)
    saved = json.loads(paths[0].read_text(encoding="utf-8"))
    assert saved["mode"] == "eager" and saved["settings"]["new_tokens"] == 24 and len(saved["rows"]) == 4
    assert saved["rows"][0]["e2e_tok_s"]["values"] == list(report.rows[0].e2e_tok_s.values)
    assert saved["rows"][1]["model_info"]["precision"] == "bf16" and saved["rows"][1]["bandwidth"]["gb_s"] > 0
    assert paths[1].read_text(encoding="utf-8").strip() == table
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compiled_mode_uses_a_static_cache_and_reports_compilation(tiny_bpe_model_dir: Path) -> None:
    # the "eager" dynamo backend traces the real decode graph without inductor's C++ build (seconds, not
    # minutes)
    settings = BenchSettings(
        new_tokens=24,
        prompt_tokens=5,
        repeats=1,
        mode="compiled",
        compile_backend="eager",
        threads=1,
        probe_bytes=2**20,
    )
    loaded = load_model(str(tiny_bpe_model_dir), "fp32", "cpu")
    row = bench_loaded(loaded, 1, settings)
    assert row.mode == "compiled" and row.compiled
    assert any("compilation + warmup" in note for note in row.notes)
    # the whole static cache is read per step
    assert row.bytes_per_step == int(row.weight_read_bytes + row.kv_bytes_per_token * (5 + 24))


def test_a_broken_compiler_fails_clearly(tiny_bpe_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a machine without a C++ toolchain gets: one EvalkitError line, never eager figures labelled
    compiled."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)  # a cached graph would need no compiler
    settings = BenchSettings(
        new_tokens=24, prompt_tokens=5, repeats=1, mode="compiled", threads=1, probe_bytes=2**20
    )
    loaded = load_model(str(tiny_bpe_model_dir), "fp32", "cpu")
    expected = r"torch.compile \(inductor\) failed on cpu: InvalidCxxCompiler.*--mode eager"
    with pytest.raises(EvalkitError, match=expected):
        bench_loaded(loaded, 1, settings)


@pytest.mark.slow
def test_smollm_row_reads_all_tied_weights_from_memory(smollm_gguf: Path) -> None:
    settings = BenchSettings(new_tokens=8, prompt_tokens=8, repeats=1, threads=1)
    row = run_bench([str(smollm_gguf)], ["fp32"], settings).rows[0]
    assert row.model == "SmolLM2-135M-Instruct.Q4_1" and row.new_tokens == 8
    assert row.weight_read_bytes == row.weight_bytes  # tied embeddings: the lm_head reads the whole table
    assert row.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4  # SmolLM2-135M: 30 layers, 3 KV heads of 64, fp32
    assert row.cache_resident is False and row.achieved_fraction > 0  # 0.5 GB of weights stream from DRAM


def test_vllm_settings_refuse_what_only_hf_generate_reads() -> None:
    """BenchSettings itself (not only the CLI) refuses a --backend vllm bench with HF-only settings."""

    with pytest.raises(EvalkitError, match="--mode, --quant-backend are for --backend hf only"):
        BenchSettings(backend="vllm", mode="compiled", quant_backend="rtn")
    with pytest.raises(EvalkitError, match="vllm engine settings are for --backend vllm only"):
        BenchSettings(vllm=VllmEngine())
    assert BenchSettings(backend="vllm", vllm=VllmEngine(enforce_eager=True)).vllm.enforce_eager
