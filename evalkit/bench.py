"""Generation throughput: end-to-end, prefill and decode tokens/s against the memory-bandwidth bound.

Definitions (PROTOCOL §4), per model × precision × batch size, B rows of P prompt tokens, N new tokens:
- generate time T_N: one `generate` call (greedy, EOS suppressed: exactly N tokens per row), timed
  between device synchronisations; model load and tokenization are outside every timer.
- time to first token T_1: the same call with N = 1, i.e. prefill + first token + generate's own
  set-up. A separate call (not a streamer hook) keeps the T_N call exactly what Baichuan timed.
- end-to-end tok/s = B·N / T_N (Baichuan's figure at B = 1); prefill tok/s = B·P / T_1;
  decode tok/s = B·(N−1) / (T_N − T_1): the set-up cost cancels in the difference.
- bound: a decode step reads every weight (an untied input embedding only by row) and the KV
  cache; bound tok/s = B · bandwidth / bytes per step, bandwidth from a large copy on the device
  just before and just after the row's repeats (the best of both: a shared machine's bandwidth
  moves, and a probe minutes away from the repeats once gave a bound decode beat by 23 %).
Each repeat pairs one T_1 and one T_N call; figures are medians over repeats with min/max.
`compiled` mode (static KV cache + torch.compile through transformers) is a separate report.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import torch

from evalkit.model import (
    LoadedModel,
    check_precision,
    load_model,
    measure_peak_memory,
    resolve_device,
    resolve_source,
)
from evalkit.types import EvalkitError

log = logging.getLogger(__name__)
MODES = ("eager", "compiled")
# Natural text tiled to exactly P tokens: all rows identical, so no padding enters the timing.
PROMPT_TEXT = "The following are multiple choice questions (with answers) about abstract algebra. "
PROBE_BYTES = 256 * 2**20
MIB = 2**20


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
            raise EvalkitError(f"unknown bench mode {self.mode!r}; valid: {', '.join(MODES)}")
        compiled = self.mode == "compiled"
        least = {"new_tokens": (2, " (decode tok/s is (N − 1) / (T_N − T_1))"), "prompt_tokens": (1, ""),
                 "repeats": (1, ""), "threads": (1, ""),
                 "warmup": (int(compiled), " in compiled mode (compilation happens in the first generate)")}
        for name, (low, why) in least.items():
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise EvalkitError(f"bench {name.replace('_', '-')} must be ≥ {low}{why}, got {getattr(self, name)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise EvalkitError(f"bench batch sizes must be ≥ 1, got {list(self.batch_sizes)}")


@dataclass(frozen=True)
class BandwidthProbe:
    """Device memory bandwidth from a copy larger than the last-level cache, (read + write) / time."""

    device: str
    buffer_bytes: int
    gb_s: float  # the best repeat: the bound must not be lower than what the memory can do
    values_gb_s: tuple[float, ...]
    threads: int
    llc_bytes: int | None  # last-level cache (CPU L3 / GPU L2), None where unknown


@dataclass(frozen=True)
class MachineLoad:
    """How busy the machine was during the timed repeats (a shared machine perturbs figures)."""

    loadavg_1m_start: float
    loadavg_1m_end: float
    cpu_percent_system: float  # all CPUs, 0-100
    cpu_percent_process: float  # this process, 100 = one core
    other_cores_busy: float  # cores kept busy by other processes
    cpu_count: int


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
    decode_tok_s: Stat
    weight_bytes: int
    weight_read_bytes: int  # read per decode step: weights less an untied input embedding
    kv_bytes_per_token: int  # per row and position, measured from a real cache
    bandwidth: BandwidthProbe  # probed just before and after the repeats; gb_s is the best of both
    bytes_per_step: int  # weights + mean KV read per decode step, all rows
    bound_tok_s: float
    achieved_fraction: float  # decode tok/s ÷ bound, not clamped
    cache_resident: bool | None  # bytes per step fit in the last-level cache: no DRAM bound
    peak_rss_bytes: int  # host process peak over the timed repeats (scope "block": reset at their start)
    peak_rss_scope: str
    peak_cuda_bytes: int | None  # torch.cuda.max_memory_allocated over the timed repeats
    threads: int
    load: MachineLoad
    warmup_s: float  # includes compilation in compiled mode
    device: str
    dtype: str
    model_info: dict = field(default_factory=dict)  # load_model's record: backend, method, source, load peak
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BenchReport:
    """One run in one mode (eager and compiled figures never share a report)."""

    created: str  # UTC, ISO 8601
    mode: str
    settings: dict
    environment: dict
    rows: tuple[BenchRow, ...]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def last_level_cache_bytes(device: str) -> int | None:
    """GPU L2 or the largest CPU cache listed by Linux sysfs; None elsewhere."""
    if device.startswith("cuda"):
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", entry.read_text().strip())
        if match:
            sizes.append(int(match[1]) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match[2]])
    return max(sizes, default=None)


def probe_bandwidth(device: str, buffer_bytes: int | None = None, repeats: int = 5) -> BandwidthProbe:
    """Copy a float32 buffer ≥ 4× the last-level cache so the figure is DRAM/HBM, not cache, speed."""
    llc = last_level_cache_bytes(device)
    size = buffer_bytes or max(PROBE_BYTES, 4 * (llc or 0))
    src = torch.ones(size // 4, dtype=torch.float32, device=device)  # ones: pages touched before timing
    dst = torch.empty_like(src)
    dst.copy_(src)
    values = [2 * size / _timed(lambda: dst.copy_(src), device)[0] / 1e9 for _ in range(repeats)]
    return BandwidthProbe(device, size, max(values), tuple(values), torch.get_num_threads(), llc)


def prompt_ids(tokenizer: Any, prompt_tokens: int, batch_size: int) -> torch.Tensor:
    """B identical rows of exactly P tokens: the tokenizer's own specials, then PROMPT_TEXT tiled."""
    ids = list(tokenizer(PROMPT_TEXT)["input_ids"])
    body = list(tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"])
    while len(ids) < prompt_tokens:
        ids += body
    return torch.tensor([ids[:prompt_tokens]] * batch_size, dtype=torch.long)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    configured = loaded.model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({loaded.tokenizer.eos_token_id} - {None})


def generation_kwargs(mode: str, max_cache_len: int, device: str, compile_backend: str = "inductor") -> dict:
    """Eager: transformers' default dynamic cache. Compiled: a static cache of fixed length, so that
    one compiled decode graph serves both timed calls, compiled by generate itself (prefill stays eager)."""
    if mode == "eager":
        return {}
    from transformers import CompileConfig

    on_cuda = device.startswith("cuda")
    config = CompileConfig(backend=compile_backend, mode="reduce-overhead" if on_cuda else "default")
    config._compile_all_devices = not on_cuda  # transformers' documented switch to compile on CPU too
    return {"cache_implementation": "static", "max_cache_len": max_cache_len, "compile_config": config}


def generate_exactly(loaded: LoadedModel, input_ids: torch.Tensor, new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """Greedy `generate` that must return exactly `new_tokens` per row: min = max new tokens masks EOS."""
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(_eos_ids(loaded)), 0)
    with torch.inference_mode():
        return loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     do_sample=False, num_beams=1, min_new_tokens=new_tokens,
                                     max_new_tokens=new_tokens, pad_token_id=pad, use_cache=True, **kwargs)


def check_exact(loaded: LoadedModel, output: torch.Tensor, prompt_tokens: int, new_tokens: int) -> None:
    """Outside the timers: a shorter output or an EOS among the new tokens would make tok/s a lie."""
    made = output[:, prompt_tokens:]
    eos = sorted(_eos_ids(loaded))
    if made.shape[1] != new_tokens or (eos and torch.isin(made, torch.tensor(eos, device=made.device)).any()):
        raise EvalkitError(f"{loaded.source.label}: generate made {made.shape[1]} tokens (EOS ids {eos}) where "
                           f"exactly {new_tokens} were forced; throughput would be wrong")


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a KV cache: transformers Cache layers, or legacy nested tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "layers"):
        return sum(_tensor_bytes(layer.keys) + _tensor_bytes(layer.values) for layer in obj.layers)
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(item) for item in obj)
    return 0


def kv_bytes_per_token(loaded: LoadedModel, input_ids: torch.Tensor) -> int:
    """Measured from the cache a real forward returns, so GQA, dtypes and remote code all count right."""
    with torch.inference_mode():
        cache = loaded.model(input_ids=input_ids, use_cache=True).past_key_values
    return _tensor_bytes(cache) // input_ids.numel()


def weight_read_bytes(loaded: LoadedModel) -> int:
    """A decode step reads all weights, except an untied input embedding (only B rows of it)."""
    total = loaded.info["weight_bytes"]  # real tensor bytes, quantized storage included (evalkit.model)
    emb_in, emb_out = loaded.model.get_input_embeddings(), loaded.model.get_output_embeddings()
    if emb_out is not None and emb_in.weight.data_ptr() == emb_out.weight.data_ptr():
        return int(total)
    return int(total - emb_in.weight.numel() * emb_in.weight.element_size())


class _LoadMeter:
    """psutil counters around the timed repeats."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.load_start = psutil.getloadavg()[0]
        psutil.cpu_percent(interval=None)
        self.process.cpu_percent(interval=None)

    def stop(self) -> MachineLoad:
        system, mine = psutil.cpu_percent(interval=None), self.process.cpu_percent(interval=None)
        cpus = psutil.cpu_count()
        others = max(0.0, system / 100 * cpus - mine / 100)
        return MachineLoad(self.load_start, psutil.getloadavg()[0], system, mine, round(others, 2), cpus)


def _warm_up(call: Callable[[int], float], settings: BenchSettings, device: str) -> float:
    started = time.perf_counter()
    try:
        for _ in range(settings.warmup):
            call(1)
            call(settings.new_tokens)
    except torch._dynamo.exc.BackendCompilerFailed as exc:
        raise EvalkitError(f"torch.compile ({settings.compile_backend}) failed on {device}: "
                           f"{str(exc).splitlines()[0]}; use --mode eager") from exc
    return time.perf_counter() - started


def _notes(row: BenchRow, settings: BenchSettings) -> tuple[str, ...]:
    """What a reader must know to trust (or not) the row's figures."""
    notes = []
    if row.achieved_fraction > 1 and row.cache_resident:
        notes.append(f"decode beats the bandwidth bound: the {row.bytes_per_step / MIB:.2f} MiB read per step fit "
                     f"in the last-level cache, so they are not re-read from memory; the bound does not apply")
    elif row.achieved_fraction > 1:
        notes.append("decode beats the bandwidth bound: caches serve part of each step, or the copy probe "
                     "undercounts memory traffic (write-allocate); read the bound as approximate")
    if settings.mode == "compiled" and not row.compiled:
        notes.append("torch.compile did not engage (transformers declined, e.g. a quantizer that cannot compile): "
                     "figures are static-cache eager")
    if row.compiled:
        notes.append(f"compilation + warmup took {row.warmup_s:.1f} s (excluded from the figures)")
    if settings.repeats < 3:
        notes.append(f"only {settings.repeats} timed repeat(s): PROTOCOL §4 asks for at least 3")
    if row.load.other_cores_busy >= 0.5:
        notes.append(f"other processes kept {row.load.other_cores_busy:.1f} cores busy during the timed repeats")
    return tuple(notes)


def bench_loaded(loaded: LoadedModel, batch_size: int, settings: BenchSettings) -> BenchRow:
    """Time one loaded model at one batch size (definitions in the module docstring)."""
    device, (B, P, N) = str(loaded.model.device), (batch_size, settings.prompt_tokens, settings.new_tokens)
    inputs = prompt_ids(loaded.tokenizer, P, B).to(device)
    extra = generation_kwargs(settings.mode, P + N, device, settings.compile_backend)

    def call(n: int) -> float:
        seconds, output = _timed(lambda: generate_exactly(loaded, inputs, n, **extra), device)
        check_exact(loaded, output, P, n)
        return seconds

    warmup_s = _warm_up(call, settings, device)
    before = probe_bandwidth(device, settings.probe_bytes)
    with measure_peak_memory(device) as peak:
        meter = _LoadMeter()
        pairs = [(call(1), call(N)) for _ in range(settings.repeats)]
        load = meter.stop()
    after = probe_bandwidth(device, settings.probe_bytes)
    bandwidth = dataclasses.replace(before, gb_s=max(before.gb_s, after.gb_s),
                                    values_gb_s=before.values_gb_s + after.values_gb_s)
    if any(total <= first for first, total in pairs):
        raise EvalkitError(f"{loaded.source.label}: a {N}-token generate was not slower than a 1-token one "
                           f"({pairs}); timer noise swamps decode, use more --new-tokens")
    kv = kv_bytes_per_token(loaded, inputs)
    # a dynamic cache holds P..P+N−1 positions over the decode (mean P + N/2); attention over a static
    # cache reads all P + N slots at every step
    context = P + N if settings.mode == "compiled" else P + N / 2
    read = weight_read_bytes(loaded)
    step_bytes = int(read + B * kv * context)
    bound = B * bandwidth.gb_s * 1e9 / step_bytes
    decode_tok_s = Stat.of([B * (N - 1) / (total - first) for first, total in pairs])
    row = BenchRow(
        model=loaded.source.label, precision=loaded.info["precision"], quant_backend=loaded.info.get("quant_backend"),
        mode=settings.mode, compiled=settings.mode == "compiled" and hasattr(loaded.model, "_compiled_call"),
        batch_size=B, prompt_tokens=P, new_tokens=N, generate_s=Stat.of([t for _, t in pairs]),
        ttft_s=Stat.of([f for f, _ in pairs]), decode_s=Stat.of([t - f for f, t in pairs]),
        e2e_tok_s=Stat.of([B * N / t for _, t in pairs]), prefill_tok_s=Stat.of([B * P / f for f, _ in pairs]),
        decode_tok_s=decode_tok_s, weight_bytes=loaded.info["weight_bytes"],
        weight_read_bytes=read, kv_bytes_per_token=kv, bandwidth=bandwidth, bytes_per_step=step_bytes,
        bound_tok_s=bound, achieved_fraction=decode_tok_s.median / bound,
        cache_resident=None if bandwidth.llc_bytes is None else step_bytes <= bandwidth.llc_bytes,
        peak_rss_bytes=peak.rss_bytes, peak_rss_scope=peak.rss_scope, peak_cuda_bytes=peak.cuda_bytes,
        threads=torch.get_num_threads(), load=load, warmup_s=warmup_s, device=device, dtype=loaded.info["dtype"],
        model_info=dict(loaded.info))
    return dataclasses.replace(row, notes=_notes(row, settings))


def _environment(device: str) -> dict:
    import platform

    import transformers

    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.exists() else []
    cpu = names[0] if names else platform.processor() or platform.machine()
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": device, "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else cpu,
            "cpu_count": os.cpu_count()}


def _bench_variant(model: str, precision: str, settings: BenchSettings, device: str) -> list[BenchRow]:
    """Load one model × precision, time every batch size on it, then free it before the next."""
    loaded = load_model(model, precision, device, settings.trust_remote_code, settings.quant_backend)
    rows = [bench_loaded(loaded, batch, settings) for batch in settings.batch_sizes]
    for row in rows:
        log.info("%s %s batch %d (%s): %.2f tok/s end-to-end, %.2f decode", row.model, _precision_label(row),
                 row.batch_size, row.mode, row.e2e_tok_s.median, row.decode_tok_s.median)
    del loaded
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


def run_bench(models: list[str], precisions: list[str], settings: BenchSettings = BenchSettings()) -> BenchReport:
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
        rows = [dataclasses.replace(row, model=labels[model]) for model in models for precision in precisions
                for row in _bench_variant(model, precision, settings, device)]
    finally:
        torch.set_num_threads(previous)
    return BenchReport(datetime.now(timezone.utc).isoformat(timespec="seconds"), settings.mode,
                       dataclasses.asdict(settings), _environment(device), tuple(rows))


def _precision_label(row: BenchRow) -> str:
    return row.precision + (f" ({row.quant_backend})" if row.quant_backend not in (None, "none") else "")


HEADERS = ("Model", "Precision", "Batch", "tokens/s", "spread %", "TTFT ms", "prefill tok/s", "decode tok/s",
           "GB/s", "bound tok/s", "achieved", "peak MiB", "weights MiB", "threads", "others busy")


def _table_row(r: BenchRow) -> list:
    peak = r.peak_cuda_bytes if r.peak_cuda_bytes is not None else r.peak_rss_bytes
    return [r.model, _precision_label(r), r.batch_size, f"{r.e2e_tok_s.median:.2f}", f"{r.e2e_tok_s.spread_pct:.1f}",
            f"{1000 * r.ttft_s.median:.1f}", f"{r.prefill_tok_s.median:.1f}", f"{r.decode_tok_s.median:.2f}",
            f"{r.bandwidth.gb_s:.1f}", f"{r.bound_tok_s:.2f}", f"{r.achieved_fraction:.2f}", f"{peak / MIB:.1f}",
            f"{r.weight_bytes / MIB:.1f}", r.threads, f"{r.load.other_cores_busy:.1f}"]


def format_table(report: BenchReport) -> str:
    """Baichuan's "| Model | tokens/s |" table with our other columns, the ratio to the first model and notes."""
    from tabulate import tabulate

    s, env = report.settings, report.environment
    models = list(dict.fromkeys(row.model for row in report.rows))
    first: dict[tuple, float] = {}
    table = []
    for r in report.rows:  # the ratio compares models at the same precision and batch size
        base = first.setdefault((r.precision, r.quant_backend, r.batch_size), r.e2e_tok_s.median)
        table.append(_table_row(r) + ([f"{r.e2e_tok_s.median / base:.2f}"] if len(models) > 1 else []))
    headers = list(HEADERS) + ([f"× {models[0]}"] if len(models) > 1 else [])
    on_cuda = env["device"].startswith("cuda")
    title = (f"Throughput ({report.mode}) on {env['device_name']}: {s['new_tokens']} new tokens after "
             f"{s['prompt_tokens']} prompt tokens, greedy, EOS suppressed; median of {s['repeats']} repeats "
             f"(spread = (max − min)/median). GB/s: best copy probe just before and after the row's repeats; "
             f"bound = GB/s ÷ bytes read per decode step; achieved = decode ÷ bound. "
             f"Peak: {'CUDA max allocated' if on_cuda else 'process peak RSS'} over the timed repeats.")
    notes = [f"- {r.model} {_precision_label(r)} batch {r.batch_size}: {note}" for r in report.rows for note in r.notes]
    body = tabulate(table, headers, tablefmt="github", disable_numparse=True,
                    colalign=("left", "left") + ("right",) * (len(headers) - 2))
    return "\n\n".join([title, body] + (["\n".join(notes)] if notes else []))


def plot_throughput(report: BenchReport, path: Path) -> Path:
    """Bars of end-to-end and decode tok/s per precision, one bar per model × batch, whiskers min..max."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    precisions = list(dict.fromkeys(_precision_label(r) for r in report.rows))
    series = list(dict.fromkeys((r.model, r.batch_size) for r in report.rows))
    figure = Figure(figsize=(5 + 1.5 * len(precisions), 4.5), layout="constrained")
    width = 0.8 / len(series)
    for ax, attr, label in zip(figure.subplots(1, 2), ("e2e_tok_s", "decode_tok_s"), ("end-to-end", "decode")):
        for k, (model, batch) in enumerate(series):
            rows = {_precision_label(r): getattr(r, attr) for r in report.rows
                    if (r.model, r.batch_size) == (model, batch)}
            xs = [i + k * width for i, p in enumerate(precisions) if p in rows]
            stats = [rows[p] for p in precisions if p in rows]
            ax.bar(xs, [s.median for s in stats], width, label=f"{model} b{batch}",
                   yerr=[[s.median - s.min for s in stats], [s.max - s.median for s in stats]], capsize=3)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(precisions))], precisions)
        ax.set_title(f"{label} tokens/s ({report.mode})")
        ax.set_ylabel("tokens/s")
    figure.axes[0].legend(fontsize="small")
    FigureCanvasAgg(figure).print_png(str(path))
    return path


def write_outputs(report: BenchReport, out_dir: str | Path) -> list[Path]:
    """JSON (every repeat's figures), the markdown table and the PNG plot, named by time and mode."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_{report.created.replace(':', '').replace('+0000', 'Z')}_{report.mode}"
    json_path, table_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    table_path.write_text(format_table(report) + "\n", encoding="utf-8")
    return [json_path, table_path, plot_throughput(report, out / f"{stem}.png")]
