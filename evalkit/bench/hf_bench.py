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
`--backend vllm` (evalkit.bench.vllm: the same definitions, timed on a vLLM engine).

This module owns the timed run (`measure` and `make_row`, shared by both backends) and the HF side;
the settings and records are evalkit.bench.schema, the machine side (timers, bandwidth probe, load)
evalkit.bench.timing, the model side (exact-length generate, bytes per decode step) evalkit.bench.generation,
and tables, plot and files evalkit.bench.report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from evalkit.bench.generation import (
    check_exact,
    generate_exactly,
    generation_kwargs,
    kv_bytes_per_token,
    prompt_ids,
    weight_read_bytes,
)
from evalkit.bench.schema import MIB, BandwidthProbe, BenchReport, BenchRow, BenchSettings, MachineLoad, Stat
from evalkit.bench.timing import LoadMeter, probe_bandwidth, timed
from evalkit.machine import environment, free_memory
from evalkit.models.loading import LoadedModel, check_precision, load_model, resolve_device
from evalkit.models.memory import PeakMemory, measure_peak_memory
from evalkit.models.source import resolve_source
from evalkit.store.interrupt import measuring
from evalkit.types import EvalkitError

log = logging.getLogger(__name__)


def _warm_up(call: Callable[[int], float], settings: BenchSettings, device: str) -> float:
    started = time.perf_counter()
    try:
        for _ in range(settings.warmup):
            call(1)
            call(settings.new_tokens)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        raise EvalkitError(
            f"torch.compile ({settings.compile_backend}) failed on {device}: "
            f"{str(exc).splitlines()[0]}; use --mode eager"
        ) from exc
    return time.perf_counter() - started


def _notes(row: BenchRow, settings: BenchSettings) -> tuple[str, ...]:
    """What a reader must know to trust (or not) the row's figures."""
    notes = []
    if row.decode_tok_s is None:
        notes.append(
            f"no repeat's {row.new_tokens}-token generate outlasted its 1-token one: timer noise "
            f"swamps decode at this length, so decode tok/s is not given; use more --new-tokens"
        )
    elif len(row.decode_tok_s.values) < settings.repeats:
        notes.append(
            f"decode tok/s over {len(row.decode_tok_s.values)} of {settings.repeats} repeats: "
            f"in the others timer noise swamped decode"
        )
    beats_bound = row.achieved_fraction is not None and row.achieved_fraction > 1
    if beats_bound and row.cache_resident:
        notes.append(
            f"decode beats the bandwidth bound: the {row.bytes_per_step / MIB:.2f} MiB read per "
            f"step fit in the last-level cache, so they are not re-read from memory; "
            f"the bound does not apply"
        )
    elif beats_bound:
        notes.append(
            "decode beats the bandwidth bound: caches serve part of each step, or the copy probe "
            "undercounts memory traffic (write-allocate); read the bound as approximate"
        )
    if settings.mode == "compiled" and not row.compiled:
        notes.append(
            "torch.compile did not engage (transformers declined, e.g. a quantizer that cannot "
            "compile): figures are static-cache eager"
        )
    if row.compiled:
        notes.append(f"compilation + warmup took {row.warmup_s:.1f} s (excluded from the figures)")
    if settings.repeats < 3:
        notes.append(
            f"only {settings.repeats} timed repeat(s): medians of fewer than 3 do not resist outliers"
        )
    if row.load.other_cores_busy >= 0.5:
        notes.append(
            f"other processes kept {row.load.other_cores_busy:.1f} cores busy during the timed repeats"
        )
    return tuple(notes)


@dataclass(frozen=True)
class Timing:
    """The timed repeats of one row and the conditions around them (`measure`)."""

    pairs: tuple[tuple[float, float], ...]  # (T_1, T_N) seconds per repeat
    bandwidth: BandwidthProbe  # probed just before and after the repeats; gb_s is the best of both
    peak: PeakMemory  # over the timed repeats
    load: MachineLoad
    warmup_s: float


def measure(call: Callable[[int], float], settings: BenchSettings, device: str) -> Timing:
    """Warm up, then time `settings.repeats` pairs of `call(1)` and `call(N)` (seconds each) between two
    bandwidth probes."""
    warmup_s = _warm_up(call, settings, device)
    before = probe_bandwidth(device, settings.probe_bytes)
    with measure_peak_memory(device) as peak:
        meter = LoadMeter()
        pairs = tuple((call(1), call(settings.new_tokens)) for _ in range(settings.repeats))
        load = meter.stop()
    after = probe_bandwidth(device, settings.probe_bytes)
    bandwidth = dataclasses.replace(
        before, gb_s=max(before.gb_s, after.gb_s), values_gb_s=before.values_gb_s + after.values_gb_s
    )
    return Timing(pairs, bandwidth, peak, load, warmup_s)


def make_row(
    timing: Timing,
    settings: BenchSettings,
    *,
    batch_size: int,
    weight_read: int,
    kv_per_token: int,
    context: float,
    **conditions: Any,
) -> BenchRow:
    """The row of one `measure`: figures and bound as the module docstring defines them, the bytes per
    step from `weight_read` + B x `kv_per_token` x `context` (the mean positions a step attends to), and
    the notes. `conditions` are the BenchRow fields that say what ran (model, precision, mode, ...)."""
    B, P, N = batch_size, settings.prompt_tokens, settings.new_tokens
    pairs, bandwidth, peak = timing.pairs, timing.bandwidth, timing.peak
    step_bytes = int(weight_read + B * kv_per_token * context)
    bound = B * bandwidth.gb_s * 1e9 / step_bytes
    resolved = [B * (N - 1) / (total - first) for first, total in pairs if total > first]
    decode_tok_s = Stat.of(resolved) if resolved else None
    row = BenchRow(
        batch_size=B,
        prompt_tokens=P,
        new_tokens=N,
        generate_s=Stat.of([t for _, t in pairs]),
        ttft_s=Stat.of([f for f, _ in pairs]),
        decode_s=Stat.of([t - f for f, t in pairs]),
        e2e_tok_s=Stat.of([B * N / t for _, t in pairs]),
        prefill_tok_s=Stat.of([B * P / f for f, _ in pairs]),
        decode_tok_s=decode_tok_s,
        weight_read_bytes=weight_read,
        kv_bytes_per_token=kv_per_token,
        bandwidth=bandwidth,
        bytes_per_step=step_bytes,
        bound_tok_s=bound,
        achieved_fraction=decode_tok_s.median / bound if decode_tok_s else None,
        cache_resident=None if bandwidth.llc_bytes is None else step_bytes <= bandwidth.llc_bytes,
        peak_rss_bytes=peak.rss_bytes,
        peak_rss_scope=peak.rss_scope,
        peak_cuda_bytes=peak.cuda_bytes,
        load=timing.load,
        warmup_s=timing.warmup_s,
        **conditions,
    )
    return dataclasses.replace(row, notes=_notes(row, settings))


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


def log_row(row: BenchRow) -> None:
    decode = f"{row.decode_tok_s.median:.2f}" if row.decode_tok_s else "n/a"
    log.info(
        "%s %s batch %d (%s): %.2f tok/s end-to-end, %s decode",
        row.model,
        row.precision_label,
        row.batch_size,
        row.mode,
        row.e2e_tok_s.median,
        decode,
    )


def model_labels(models: list[str]) -> dict[str, str]:
    """Each model's row label; resolving fails on a wrong path now, not after the first model's timings."""
    labels = {model: resolve_source(model).label for model in models}
    if len(set(labels.values())) < len(models):  # labels must tell rows apart
        labels = {model: model for model in models}
    if len(labels) < len(models):
        raise EvalkitError(f"a model is listed twice in {models}")
    return labels


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to `threads` (None: left alone) for the block, restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _bench_variant(model: str, precision: str, settings: BenchSettings, device: str) -> list[BenchRow]:
    """Load one model × precision, time every batch size on it, then free it before the next."""
    loaded = load_model(model, precision, device, settings.trust_remote_code, settings.quant_backend)
    rows = [bench_loaded(loaded, batch, settings) for batch in settings.batch_sizes]
    for row in rows:
        log_row(row)
    del loaded
    free_memory()
    return rows


def run_bench(models: list[str], precisions: list[str], settings: BenchSettings | None = None) -> BenchReport:
    """Benchmark every model × precision × batch size on one device in one mode (modes never mix);
    `settings.backend == "vllm"` times them on vLLM (evalkit.bench.vllm_bench)."""
    settings = settings or BenchSettings()
    if not models or not precisions:
        raise EvalkitError(f"bench needs at least one model and one precision, got {models} and {precisions}")
    labels = model_labels(models)
    planned = len(models) * len(precisions)
    if settings.backend == "vllm":
        from evalkit.bench.vllm_bench import run_vllm_bench

        with measuring(None, planned):  # a Ctrl-C: one line, nothing written
            return run_vllm_bench(labels, precisions, settings)
    device = resolve_device(settings.device)
    for model in models:  # an impossible precision/backend fails now too
        for precision in precisions:
            check_precision(precision, settings.quant_backend, device, model, settings.trust_remote_code)
    variants: list[list[BenchRow]] = []  # rows per model x precision, followed for a Ctrl-C's line
    with torch_threads(settings.threads), measuring(variants, planned):
        for model in models:
            for precision in precisions:
                measured = _bench_variant(model, precision, settings, device)
                variants.append([dataclasses.replace(row, model=labels[model]) for row in measured])
    rows = [row for variant in variants for row in variant]
    return BenchReport(
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings.mode,
        dataclasses.asdict(settings),
        environment(device),
        tuple(rows),
    )
