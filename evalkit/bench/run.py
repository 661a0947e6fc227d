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
`compiled` mode (static KV cache + torch.compile through transformers) is a separate report.

This module owns the settings, the records and the timed run; the machine side (timers, bandwidth
probe, load) is evalkit.bench.machine, the model side (exact-length generate, bytes per decode step)
evalkit.bench.model, and tables, plot and files evalkit.bench.report.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from evalkit.bench.machine import BandwidthProbe, LoadMeter, MachineLoad, probe_bandwidth, timed
from evalkit.bench.model import (
    check_exact,
    generate_exactly,
    generation_kwargs,
    kv_bytes_per_token,
    prompt_ids,
    weight_read_bytes,
)
from evalkit.machine import environment, free_memory
from evalkit.models.loading import (
    LoadedModel,
    check_precision,
    load_model,
    measure_peak_memory,
    resolve_device,
    resolve_source,
)
from evalkit.records import Environment, ModelInfo
from evalkit.types import EvalkitError, unknown

log = logging.getLogger(__name__)
MODES = ("eager", "compiled")
MIB = 2**20


@dataclass(frozen=True)
class DeviceDefaults:
    """The precision and generation length `bench` uses when none is given, by device kind."""

    precision: str
    new_tokens: int


# CUDA: Baichuan's published setting; CPU: a precision it runs fast and a length that ends in minutes
DEVICE_DEFAULTS = {"cuda": DeviceDefaults("fp16", 2048), "cpu": DeviceDefaults("fp32", 256)}


def device_defaults(device: str) -> DeviceDefaults:
    """The defaults for a resolved device ("cpu", "cuda", "cuda:N")."""
    return DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class Stat:
    """One figure over the timed repeats."""

    median: float
    min: float
    max: float
    values: tuple[float, ...]

    @staticmethod
    def of(values: list[float]) -> Stat:
        return Stat(statistics.median(values), min(values), max(values), tuple(values))

    @property
    def spread_pct(self) -> float:
        """(max − min) / median in percent: how far apart the repeats landed."""
        return 100.0 * (self.max - self.min) / self.median


@dataclass(frozen=True)
class BenchSettings:
    """Every setting of a benchmark run and its default, in one place (the CLI reads them from here)."""

    new_tokens: int = 2048  # Baichuan's generation length
    prompt_tokens: int = 32
    batch_sizes: tuple[int, ...] = (1,)
    repeats: int = 5
    warmup: int = 1
    mode: str = "eager"
    device: str = "auto"
    quant_backend: str | None = None  # None: load_model's default backend for int8/int4
    trust_remote_code: bool = False
    threads: int | None = None  # None: leave torch's setting alone
    compile_backend: str = "inductor"
    probe_bytes: int | None = None  # bandwidth probe buffer; None: max(256 MiB, 4 × last-level cache)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise unknown("bench mode", self.mode, MODES)
        compiled = self.mode == "compiled"
        least = {
            "new_tokens": (2, " (decode tok/s is (N − 1) / (T_N − T_1))"),
            "prompt_tokens": (1, ""),
            "repeats": (1, ""),
            "threads": (1, ""),
            "warmup": (int(compiled), " in compiled mode (compilation happens in the first generate)"),
        }
        for name, (low, why) in least.items():
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise EvalkitError(
                    f"bench {name.replace('_', '-')} must be ≥ {low}{why}, got {getattr(self, name)}"
                )
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise EvalkitError(f"bench batch sizes must be ≥ 1, got {list(self.batch_sizes)}")


@dataclass(frozen=True)
class BenchRow:
    """One model × precision × batch size: every repeat's figures, the bound and the conditions."""

    model: str
    precision: str
    quant_backend: str | None  # the backend that ran ("none" for float precisions)
    mode: str
    compiled: bool  # torch.compile really engaged (False in eager mode)
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    generate_s: Stat  # T_N
    ttft_s: Stat  # T_1
    decode_s: Stat  # T_N − T_1
    e2e_tok_s: Stat
    prefill_tok_s: Stat
    decode_tok_s: Stat | None  # None: no repeat's T_N exceeded its T_1 (timer noise swamped decode)
    weight_bytes: int
    weight_read_bytes: int  # read per decode step: weights less an untied input embedding
    kv_bytes_per_token: int  # per row and position, measured from a real cache
    bandwidth: BandwidthProbe  # probed just before and after the repeats; gb_s is the best of both
    bytes_per_step: int  # weights + mean KV read per decode step, all rows
    bound_tok_s: float
    achieved_fraction: float | None  # decode tok/s ÷ bound, not clamped; None without a decode figure
    cache_resident: bool | None  # bytes per step fit in the last-level cache: no DRAM bound
    peak_rss_bytes: int  # host process peak over the timed repeats (scope "block": reset at their start)
    peak_rss_scope: str
    peak_cuda_bytes: int | None  # torch.cuda.max_memory_allocated over the timed repeats
    threads: int
    load: MachineLoad
    warmup_s: float  # includes compilation in compiled mode
    device: str
    dtype: str
    model_info: ModelInfo = field(default_factory=ModelInfo)  # load_model's record: backend, method, peak
    notes: tuple[str, ...] = ()

    @property
    def precision_label(self) -> str:
        """The precision, with the quantization backend where one ran ("int4 (rtn)")."""
        backend = self.quant_backend not in (None, "none")
        return self.precision + (f" ({self.quant_backend})" if backend else "")


@dataclass(frozen=True)
class BenchReport:
    """One run in one mode (eager and compiled figures never share a report)."""

    created: str  # UTC, ISO 8601
    mode: str
    settings: dict
    environment: Environment
    rows: tuple[BenchRow, ...]


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


def bench_loaded(loaded: LoadedModel, batch_size: int, settings: BenchSettings) -> BenchRow:
    """Time one loaded model at one batch size (definitions in the module docstring)."""
    device, (B, P, N) = str(loaded.model.device), (batch_size, settings.prompt_tokens, settings.new_tokens)
    inputs = prompt_ids(loaded.tokenizer, P, B).to(device)
    extra = generation_kwargs(settings.mode, P + N, device, settings.compile_backend)

    def call(n: int) -> float:
        seconds, output = timed(lambda: generate_exactly(loaded, inputs, n, **extra), device)
        check_exact(loaded, output, P, n)
        return seconds

    warmup_s = _warm_up(call, settings, device)
    before = probe_bandwidth(device, settings.probe_bytes)
    with measure_peak_memory(device) as peak:
        meter = LoadMeter()
        pairs = [(call(1), call(N)) for _ in range(settings.repeats)]
        load = meter.stop()
    after = probe_bandwidth(device, settings.probe_bytes)
    bandwidth = dataclasses.replace(
        before, gb_s=max(before.gb_s, after.gb_s), values_gb_s=before.values_gb_s + after.values_gb_s
    )
    kv = kv_bytes_per_token(loaded, inputs)
    # a dynamic cache holds P..P+N−1 positions over the decode (mean P + N/2); attention over a static
    # cache reads all P + N slots at every step
    context = P + N if settings.mode == "compiled" else P + N / 2
    read = weight_read_bytes(loaded)
    step_bytes = int(read + B * kv * context)
    bound = B * bandwidth.gb_s * 1e9 / step_bytes
    resolved = [B * (N - 1) / (total - first) for first, total in pairs if total > first]
    decode_tok_s = Stat.of(resolved) if resolved else None
    row = BenchRow(
        model=loaded.source.label,
        precision=loaded.info.precision,
        quant_backend=loaded.info.quant_backend,
        mode=settings.mode,
        compiled=settings.mode == "compiled" and hasattr(loaded.model, "_compiled_call"),
        batch_size=B,
        prompt_tokens=P,
        new_tokens=N,
        generate_s=Stat.of([t for _, t in pairs]),
        ttft_s=Stat.of([f for f, _ in pairs]),
        decode_s=Stat.of([t - f for f, t in pairs]),
        e2e_tok_s=Stat.of([B * N / t for _, t in pairs]),
        prefill_tok_s=Stat.of([B * P / f for f, _ in pairs]),
        decode_tok_s=decode_tok_s,
        weight_bytes=loaded.info.weight_bytes,
        weight_read_bytes=read,
        kv_bytes_per_token=kv,
        bandwidth=bandwidth,
        bytes_per_step=step_bytes,
        bound_tok_s=bound,
        achieved_fraction=decode_tok_s.median / bound if decode_tok_s else None,
        cache_resident=None if bandwidth.llc_bytes is None else step_bytes <= bandwidth.llc_bytes,
        peak_rss_bytes=peak.rss_bytes,
        peak_rss_scope=peak.rss_scope,
        peak_cuda_bytes=peak.cuda_bytes,
        threads=torch.get_num_threads(),
        load=load,
        warmup_s=warmup_s,
        device=device,
        dtype=loaded.info.dtype,
        model_info=loaded.info,
    )
    return dataclasses.replace(row, notes=_notes(row, settings))


def _bench_variant(model: str, precision: str, settings: BenchSettings, device: str) -> list[BenchRow]:
    """Load one model × precision, time every batch size on it, then free it before the next."""
    loaded = load_model(model, precision, device, settings.trust_remote_code, settings.quant_backend)
    rows = [bench_loaded(loaded, batch, settings) for batch in settings.batch_sizes]
    for row in rows:
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
    del loaded
    free_memory()
    return rows


def run_bench(
    models: list[str], precisions: list[str], settings: BenchSettings = BenchSettings()
) -> BenchReport:
    """Benchmark every model × precision × batch size on one device in one mode (modes never mix)."""
    if not models or not precisions:
        raise EvalkitError(f"bench needs at least one model and one precision, got {models} and {precisions}")
    # resolving fails on a wrong path now, not after the first model's timings; labels must tell rows apart
    labels = {model: resolve_source(model).label for model in models}
    if len(set(labels.values())) < len(models):
        labels = {model: model for model in models}
    if len(labels) < len(models):
        raise EvalkitError(f"a model is listed twice in {models}")
    device = resolve_device(settings.device)
    for model in models:  # an impossible precision/backend fails now too
        for precision in precisions:
            check_precision(precision, settings.quant_backend, device, model, settings.trust_remote_code)
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        rows = [
            dataclasses.replace(row, model=labels[model])
            for model in models
            for precision in precisions
            for row in _bench_variant(model, precision, settings, device)
        ]
    finally:
        torch.set_num_threads(previous)
    return BenchReport(
        datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings.mode,
        dataclasses.asdict(settings),
        environment(device),
        tuple(rows),
    )
