"""The records of a generation benchmark: its settings, one row per model x precision x batch size, the
report, and the machine figures they carry. No torch here: reports are read and tabled without it.

The figures' definitions are in evalkit.bench.hf_bench.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field

from evalkit.store.records import Environment, ModelInfo
from evalkit.types import EvalkitError, RunConfig, VllmEngine, unknown


def owner_flags() -> tuple[str, ...]:
    """The BenchSettings fields that only one backend reads (the registry's own_bench_flags)."""
    from evalkit.backends import PLUGINS

    return tuple(dict.fromkeys(name for p in PLUGINS.values() for name in p.own_bench_flags))


MODES = ("eager", "compiled")  # HF generate; a --backend vllm report's mode is "vllm"
MIB = 2**20


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
class DeviceDefaults:
    """The precision and generation length `bench` uses when none is given, by device kind."""

    precision: str
    new_tokens: int


# CUDA: Baichuan's published setting; CPU: a precision it runs fast and a length that ends in minutes
DEVICE_DEFAULTS = {"cuda": DeviceDefaults("fp16", 2048), "cpu": DeviceDefaults("fp32", 256)}


def device_defaults(device: str) -> DeviceDefaults:
    """The defaults for a resolved device ("cpu", "cuda", "cuda:N")."""
    return DEVICE_DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]


def fitted_defaults(device: str) -> DeviceDefaults:
    """The precision and length a bench takes where not given, for --device as typed ("auto" resolved)."""
    from evalkit.machine import resolve_device

    return device_defaults(resolve_device(device))


OUTPUT_DIR = f"{RunConfig.output_dir}/bench"  # bench --output-dir: beside the evaluation runs


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
    backend: str = "hf"  # a registered backend (evalkit.backends): its `bench` times the rows
    vllm: VllmEngine | None = None  # --backend vllm's engine flags; the precision is set per variant

    def __post_init__(self) -> None:
        from evalkit.backends import PLUGINS, plugin, refuse_foreign_flags

        if self.mode not in MODES:
            raise unknown("bench mode", self.mode, MODES)
        owner = plugin(self.backend)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        changed = {n: getattr(self, n) for n in owner_flags() if getattr(self, n) != defaults[n]}
        refuse_foreign_flags(changed, self.backend, bench=True)
        if self.vllm is not None and (owner.flag_group is None or owner.flag_group.field != "vllm"):
            owners = [p.name for p in PLUGINS.values() if p.flag_group and p.flag_group.field == "vllm"]
            raise EvalkitError(
                f"bench vllm engine settings are for --backend {' or '.join(owners)} only; this bench is "
                f"--backend {self.backend}"
            )
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
    mode: str  # "eager" | "compiled" (HF generate) or "vllm"
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
    """One run in one mode (eager, compiled and vLLM figures never share a report)."""

    created: str  # UTC, ISO 8601
    mode: str  # "eager" | "compiled" | "vllm"
    settings: BenchSettings  # what was asked (--backend vllm: the engine settings under `vllm`)
    environment: Environment
    rows: tuple[BenchRow, ...]
    vllm_version: str | None = None  # --backend vllm: the vLLM that generated
