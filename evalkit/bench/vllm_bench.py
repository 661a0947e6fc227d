"""`bench --backend vllm`: the tokens/s figures of evalkit.bench.hf_bench, timed on a vLLM engine.

Each timed call is one `LLM.generate` of B prompts of exactly P token ids (`TokensPrompt`: vLLM's
tokenizer never runs) with `SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True)`, greedy: exactly
n new tokens per row, checked on every output outside the timer. T_1 (n = 1) and T_N (n = N) pair up per
repeat, and prefill, decode, the bound and the notes follow from them as on the HF side
(evalkit.bench.hf_bench.measure and make_row). The prefix cache is emptied before every call and every output
must report no cached prompt token: a prompt read from the cache would make prefill look free. The
engines this module starts run with the prefix cache off (the B rows are identical, as on the HF side).

Bytes per decode step: the checkpoint's weights at the engine's dtype (an untied input embedding only by
row), plus the KV cache of the P + N/2 positions a step attends to on
average (paged attention reads only the filled blocks), from the model's layers, KV heads and head size.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from evalkit.backends.vllm.engine import require_logprob_token_ids
from evalkit.backends.vllm.loader import check_run, load_for_run, prepare_model_dir
from evalkit.bench.generation import prompt_ids
from evalkit.bench.measure import log_row, make_row, measure, torch_threads
from evalkit.bench.schema import BenchReport, BenchRow, BenchSettings
from evalkit.bench.timing import timed
from evalkit.machine import environment, free_memory
from evalkit.models.source import ModelSource
from evalkit.store.records import ModelInfo
from evalkit.types import EvalkitError, VllmEngine

MODE = "vllm"  # the report's and rows' mode
SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
}
SAFETENSORS_DTYPES |= {"I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
SAFETENSORS_DTYPES |= {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def _tensors(model_dir: Path) -> Iterator[tuple[int, torch.dtype]]:
    """(elements, stored dtype) of every tensor of a checkpoint, read from its headers, no weights."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                view = f.get_slice(name)
                yield math.prod(view.get_shape()), getattr(torch, SAFETENSORS_DTYPES[view.get_dtype()])
    if not any(model_dir.glob("*.safetensors")):
        for path in sorted(model_dir.glob("*.bin")):
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            yield from ((t.numel(), t.dtype) for t in state.values())


def weight_bytes(llm: Any) -> tuple[int, int]:
    """(weight bytes, bytes a decode step reads) of the engine's model: the checkpoint's tensors, 16-bit
    and wider floats at the engine's dtype, quantized storage as stored (vLLM on CPU packs its linear
    weights where `LLM.apply_model` cannot see them); an untied input embedding is read only by row."""
    config = llm.llm_engine.model_config
    element = config.dtype.itemsize
    total = sum(
        n * (element if dtype.is_floating_point and dtype.itemsize >= 2 else dtype.itemsize)
        for n, dtype in _tensors(Path(config.model))
    )
    text = config.hf_text_config
    untied = not getattr(text, "tie_word_embeddings", getattr(config.hf_config, "tie_word_embeddings", True))
    embedding = text.vocab_size * text.hidden_size * element if untied else 0
    return total, total - embedding


def kv_bytes_per_token(llm: Any) -> int:
    """K and V of every layer for one position of one row, in the model's dtype (vLLM's "auto" KV dtype)."""
    config = llm.llm_engine.model_config
    layers, heads = config.get_total_num_hidden_layers(), config.get_total_num_kv_heads()
    return 2 * layers * heads * config.get_head_size() * config.dtype.itemsize


def bench_llm(
    llm: Any, tokenizer: Any, batch_size: int, settings: BenchSettings, *, model: str, info: ModelInfo
) -> BenchRow:
    """Time one started engine (vllm.LLM) at one batch size; `info`: the load's record (precision, dtype)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    device = info.device or "cpu"
    B, P, N = batch_size, settings.prompt_tokens, settings.new_tokens
    ids = prompt_ids(tokenizer, P, 1)[0].tolist()
    prompts = [TokensPrompt(prompt_token_ids=ids) for _ in range(B)]
    params = {
        n: SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0, detokenize=False)
        for n in (1, N)
    }

    def call(n: int) -> float:
        llm.reset_prefix_cache()
        seconds, outputs = timed(lambda: llm.generate(prompts, params[n], use_tqdm=False), device)
        check_exact(outputs, B, n, model)
        return seconds

    timing = measure(call, settings, device)
    total, read = weight_bytes(llm)
    return make_row(
        timing,
        settings,
        batch_size=B,
        weight_read=read,
        kv_per_token=kv_bytes_per_token(llm),
        context=P + N / 2,
        model=model,
        precision=info.precision,
        quant_backend=info.quant_backend,
        mode=MODE,
        compiled=False,
        weight_bytes=total,
        threads=torch.get_num_threads(),
        dtype=info.dtype,
        device=device,
        model_info=dataclasses.replace(info, weight_bytes=total),
    )


def check_exact(outputs: Sequence[Any], rows: int, new_tokens: int, model: str) -> None:
    """Outside the timers: every row got exactly `new_tokens` tokens and computed its whole prompt."""
    made = [len(out.outputs[0].token_ids) for out in outputs]
    cached = sum(out.num_cached_tokens or 0 for out in outputs)
    if len(made) != rows or set(made) != {new_tokens} or cached:
        raise EvalkitError(
            f"{model}: vLLM made {made[:8]} tokens for {len(made)} of {rows} rows, {cached} prompt "
            f"tokens from the prefix cache, where exactly {new_tokens} new tokens on uncached prompts "
            "were forced; throughput would be wrong"
        )


def run_vllm_bench(
    sources: Mapping[str, ModelSource], precisions: Sequence[str], settings: BenchSettings, device: str
) -> BenchReport:
    """Every model (sources: row label -> resolved source) × precision × batch size on one vLLM engine per
    model × precision, prefix cache off; what cannot run is refused before anything loads."""
    engine = settings.vllm or VllmEngine()
    for source in sources.values():
        check_run(engine, settings.trust_remote_code, precisions, source)
    rows = []
    with torch_threads(settings.threads):
        for label, source in sources.items():
            with tempfile.TemporaryDirectory(prefix="evalkit-bench-vllm-") as work:
                model_dir = prepare_model_dir(source, work)
                for precision in precisions:
                    loaded = load_for_run(
                        source,
                        engine,
                        precision,
                        model_dir,
                        device,
                        settings.trust_remote_code,
                        enable_prefix_caching=False,
                    )
                    for batch in settings.batch_sizes:
                        row = bench_llm(
                            loaded.model.llm, loaded.tokenizer, batch, settings, model=label, info=loaded.info
                        )
                        log_row(row)
                        rows.append(row)
                    del loaded
                    free_memory()
    return BenchReport(
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        MODE,
        settings,
        environment(device),
        tuple(rows),
        vllm_version=require_logprob_token_ids(),
    )
