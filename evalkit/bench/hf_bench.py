"""Generation throughput: end-to-end, prefill and decode tokens/s against the memory-bandwidth bound.

Definitions, per model × precision × batch size, B rows of P prompt tokens, N new tokens:
- generate time T_N: one `generate` call (greedy, EOS suppressed: exactly N tokens per row), timed
  between device synchronisations; model load and tokenization are outside every timer.
- time to first token T_1: the same call with N = 1, i.e. prefill + first token + generate's own
  set-up. A separate call (not a streamer hook) keeps the T_N call exactly what Baichuan timed.
- end-to-end tok/s = B·N / T_N (Baichuan's figure at B = 1); prefill tok/s = B·P / T_1;
  decode tok/s = B·(N−1) / (T_N − T_1): the set-up cost cancels in the difference. A repeat whose
  T_N is not above its T_1 (timer noise on a busy machine, N small) gives no decode figure; when no
  repeat gives one, decode and its bound fraction are left empty and a note says to raise N.
- bound: a decode step reads every weight (an untied input embedding only by row) and the KV
  cache; bound tok/s = B · bandwidth / bytes per step, bandwidth from a large copy on the device
  just before and just after the row's repeats (the best of both: a shared machine's bandwidth
  moves, and a probe minutes away from the repeats once gave a bound decode beat by 23 %).
Each repeat pairs one T_1 and one T_N call; figures are medians over repeats with min/max.
`compiled` mode (static KV cache + torch.compile through transformers) is a separate report, and so is
`--backend vllm` (evalkit.bench.vllm_bench: the same definitions, timed on a vLLM engine).

The timed run (`measure` and `make_row`, shared by every backend) is evalkit.bench.measure; this module is
the HF side;
the settings and records are evalkit.bench.schema, the machine side (timers, bandwidth probe, load)
evalkit.bench.timing, the model side (exact-length generate, bytes per decode step) evalkit.bench.generation,
and tables, plot and files evalkit.bench.report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

from evalkit.bench.generation import (
    check_exact,
    generate_exactly,
    generation_kwargs,
    kv_bytes_per_token,
    prompt_ids,
    weight_read_bytes,
)
from evalkit.bench.measure import log_row, make_row, measure, torch_threads
from evalkit.bench.schema import BenchReport, BenchRow, BenchSettings
from evalkit.bench.timing import timed
from evalkit.machine import environment, free_memory
from evalkit.models.loading import LoadedModel, check_precision, load_model
from evalkit.models.source import ModelSource
from evalkit.store.interrupt import measuring


def bench_loaded(loaded: LoadedModel, batch_size: int, settings: BenchSettings) -> BenchRow:
    """Time one loaded model at one batch size (definitions in the module docstring)."""
    device, (B, P, N) = str(loaded.model.device), (batch_size, settings.prompt_tokens, settings.new_tokens)
    inputs = prompt_ids(loaded.tokenizer, P, B).to(device)
    extra = generation_kwargs(settings.mode, P + N, device, settings.compile_backend)

    def call(n: int) -> float:
        seconds, output = timed(lambda: generate_exactly(loaded, inputs, n, **extra), device)
        check_exact(loaded, output, P, n)
        return seconds

    timing = measure(call, settings, device)
    # a dynamic cache holds P..P+N−1 positions over the decode (mean P + N/2); attention over a static
    # cache reads all P + N slots at every step
    context = P + N if settings.mode == "compiled" else P + N / 2
    return make_row(
        timing,
        settings,
        batch_size=B,
        weight_read=weight_read_bytes(loaded),
        kv_per_token=kv_bytes_per_token(loaded, inputs),
        context=context,
        model=loaded.source.label,
        precision=loaded.info.precision,
        quant_backend=loaded.info.quant_backend,
        mode=settings.mode,
        compiled=settings.mode == "compiled" and hasattr(loaded.model, "_compiled_call"),
        weight_bytes=loaded.info.weight_bytes,
        threads=torch.get_num_threads(),
        dtype=loaded.info.dtype,
        device=device,
        model_info=loaded.info,
    )


def _bench_variant(
    source: ModelSource, precision: str, settings: BenchSettings, device: str
) -> list[BenchRow]:
    """Load one model × precision, time every batch size on it, then free it before the next."""
    loaded = load_model(source, precision, device, settings.trust_remote_code, settings.quant_backend)
    rows = [bench_loaded(loaded, batch, settings) for batch in settings.batch_sizes]
    for row in rows:
        log_row(row)
    del loaded
    free_memory()
    return rows


def run_hf_bench(
    sources: dict[str, ModelSource], precisions: Sequence[str], settings: BenchSettings, device: str
) -> BenchReport:
    """Every model (sources: row label -> resolved source) × precision × batch size on transformers'
    generate, in one mode; an impossible precision/backend fails before the first model loads."""
    for source in sources.values():
        for precision in precisions:
            check_precision(precision, settings.quant_backend, device, source, settings.trust_remote_code)
    variants: list[list[BenchRow]] = []  # rows per model x precision, followed for a Ctrl-C's line
    with torch_threads(settings.threads), measuring(variants, len(sources) * len(precisions)):
        for label, source in sources.items():
            for precision in precisions:
                measured = _bench_variant(source, precision, settings, device)
                variants.append([dataclasses.replace(row, model=label) for row in measured])
    rows = [row for variant in variants for row in variant]
    return BenchReport(
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings.mode,
        settings,
        environment(device),
        tuple(rows),
    )
