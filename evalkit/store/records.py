"""The records of a finished run: run.json (`RunResult` and what it holds) and a run as read back.

Plain data, as evalkit.types; every record has tolerant `from_dict` readers or defaults so that run.json
files written by earlier versions still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

from evalkit.types import QuestionResult, RunConfig, Scheme, Task


@dataclass(frozen=True)
class Metric:
    """An accuracy over `n` questions (micro) or the mean over `n_subjects` subjects (macro)."""

    accuracy: float  # in [0, 1]
    n: int  # questions behind the figure
    n_subjects: int


# how the engine reused prefixes (evalkit.backends.hf.scorer)
ReuseMode = Literal["packed", "rows", "plain", "isolated"]


@dataclass(frozen=True)
class Fallback:
    """A prefix-reuse mode the scoring engine gave up on, and why (run.json `fallbacks`)."""

    mode: str  # "packed" | "rows": the mode given up
    reason: Literal["unsupported", "error", "disagreement"]  # not offered / raised / scored differently
    detail: str  # what the model lacks, the error, or the disagreement in words
    diff: float | None = None  # "disagreement": the largest |log-prob difference| from plain forwards


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls`: records written by other versions still load."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class ModelInfo:
    """How the model was loaded (`LoadedModel.info`, run.json `model_info`): precision and quantization,
    placement, memory, implementation. Filled by evalkit.models.loading.load_model; every field has a default
    so that run.json files written before a field existed still load (None: not recorded)."""

    # ---- the quantization plan (evalkit.models.quant.plans.QuantPlan.info) ----
    precision: str | None = None  # "fp32" | "bf16" | "fp16" | "int8" | "int4"
    quant_backend: str | None = None  # "none", a --quant-backend, or "pre-quantized"
    quant_bits: int | None = None  # 8 or 4; None at a float precision
    quant_method: str | None = None  # "LLM.int8", "NF4", "rtn-absmax-per-channel", "Q4_1", ... or "none"
    group_size: int | None = None  # None: one scale per output channel (or no quantization)
    compute_dtype: str | None = None  # the dtype matmuls run in, e.g. "float16"
    activation_quantization: str | None = None  # how activations are quantized (LLM.int8), None: they are not
    source_quantization: str | None = None  # the checkpoint's own quantization, e.g. "gguf Q4_1"
    requantized_from: str | None = None  # that quantization, where evalkit quantized its dequantized floats
    # ---- the loaded network ----
    dtype: str | None = None  # the compute dtype as loaded, e.g. "float32"
    device: str | None = None  # the resolved device, e.g. "cpu", "cuda:0"
    device_map: dict[str, int] | None = None  # --device-map: modules per device; None on one device
    source: str | None = None  # "hub" | "local" | "gguf" (evalkit.models.source.ModelSource.kind)
    weights_format: str | None = None  # "transformers", or how a GGUF file's blocks are held
    quantized_layers: int | None = None  # linear layers holding quantized weights
    skipped_layers: list[str] = field(default_factory=list)  # linear layers a quantizing backend left float
    weight_bytes: int | None = None  # real tensor bytes of the weights, quantized storage included
    # ---- the load (evalkit.models.memory.PeakMemory) ----
    peak_rss_bytes: int | None = None  # host peak resident set size while loading
    peak_rss_scope: str | None = None  # "block": reset at the load's start; "process": since it began
    peak_cuda_bytes: int | None = None  # torch.cuda.max_memory_allocated while loading; None off CUDA
    load_seconds: float | None = None
    # ---- the implementation ----
    model_class: str | None = None  # the network's class name, e.g. "LlamaForCausalLM"
    trust_remote_code: bool | None = None  # as passed
    implementation: str | None = None  # evalkit's native port, or the module.class transformers built
    native_evidence: str | None = None  # why a native port was chosen (config.json fields); None: not native
    remote_code_executed: bool | None = None  # whether any class came from the repository's own code
    # NF4 layers the AVX512-BF16 CPU kernel cannot repack, left on bitsandbytes' generic path
    nf4_generic_kernel_layers: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a run.json this version does not know

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ModelInfo:
        """Tolerant: missing keys take the defaults; keys this version does not know are kept in `extra`."""
        known = _known_fields(ModelInfo, data)
        extra = {**data.get("extra", {}), **{k: v for k, v in data.items() if k not in known}}
        return ModelInfo(**{**known, "extra": extra})


@dataclass(frozen=True)
class Timings:
    """run.json `timings`: how long the run took and how much of it was resumed."""

    scoring_seconds: float = 0.0  # tokenization to the last batch, the slowest process's under accelerate
    questions: int = 0  # questions in the finished run
    resumed_questions: int = 0  # taken from an earlier, interrupted run's questions.jsonl
    rescored_questions: int = 0  # resumed ones scored again: their prompt or gold answer had changed
    questions_per_second: float | None = None  # questions scored (not resumed) / scoring_seconds
    load_seconds: float | None = None  # the model's load (shared by every task of a sweep)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Timings:
        """Tolerant: keys missing from older run.json files take the defaults, unknown keys are left out."""
        return Timings(**_known_fields(Timings, data))


@dataclass(frozen=True)
class Environment:
    """What a reader needs to reproduce figures: versions, device, threads, evalkit's commit.

    One record for run.json (`environment`) and the bench report; evalkit.machine.environment() fills it.
    """

    packages: dict[str, str | None] = field(default_factory=dict)  # distribution -> version, None: absent
    python: str | None = None
    platform: str | None = None  # platform.platform()
    device: str | None = None  # as resolved: "cpu", "cuda", "cuda:1"
    device_name: str | None = None  # the GPU's name, or the CPU's model name
    cpu_count: int | None = None  # logical CPUs of the machine
    torch_threads: int | None = None  # torch.get_num_threads() when recorded
    processes: int = 1  # accelerate processes sharing the run
    git_commit: str | None = None  # evalkit's checkout, None outside a git checkout

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Environment:
        """Tolerant, as Timings.from_dict; bench reports before this record kept `torch`/`transformers`
        versions at the top level: they go into `packages`."""
        packages = dict(data.get("packages") or {})
        for name in ("torch", "transformers"):
            if isinstance(data.get(name), str):
                packages.setdefault(name, data[name])
        return Environment(**{**_known_fields(Environment, data), "packages": packages})


@dataclass(frozen=True)
class LongSubject:
    """One subject's prompts longer than the model's context."""

    prompts: int  # how many
    of: int  # of the subject's questions
    longest: int  # tokens of the longest
    first: str  # the first such question's id


@dataclass(frozen=True)
class LongPrompts:
    """Prompts longer than the model's context (run.json `long_prompts`; `{}` in JSON where none was)."""

    context: int  # the model's positions
    policy: str  # the scheme's length policy
    subjects: dict[str, LongSubject]

    @staticmethod
    def from_dict(data: dict[str, Any]) -> LongPrompts | None:
        if not data:
            return None
        subjects = {name: LongSubject(**info) for name, info in data["subjects"].items()}
        return LongPrompts(data["context"], data["policy"], subjects)


class BackendRecord(TypedDict, total=False):
    """run.json `backend`: the scoring backend's own `describe()` (evalkit.backends.base.backend_record);
    `{}` in runs written before it was recorded. Only `backend` is common to all; the rest is the engine's."""

    backend: str  # the registered name: "hf", "vllm", ...
    vllm_version: str  # vLLM: the engine's version, its settings, logprobs mode, context, prefix cache
    settings: dict[str, Any] | None
    logprobs_mode: str
    max_model_len: int | None
    prefix_cache: dict[str, Any]


@dataclass(frozen=True)
class RunResult:
    """run.json: written last; its presence means the run finished."""

    config: RunConfig
    config_hash: str
    scheme: Scheme
    letter_ids: tuple[int, int, int, int]
    letter_strings: tuple[str, str, str, str]
    bos: bool  # whether prompts began with a BOS token
    environment: Environment  # package versions, device, git commit, threads
    subjects: dict[str, Metric]
    groups: dict[str, Metric]  # categories and extra groups
    overall: Metric | None  # None where no answers are known (C-Eval test)
    timings: Timings
    engine: str  # "prefix" or "plain": how questions were scored
    model_info: ModelInfo = field(default_factory=ModelInfo)  # precision, backend, weight bytes, ...
    limited: bool = False  # --limit was used: a smoke run, flagged in reports
    reuse_mode: str | None = None  # ReuseMode(s) joined by "+"; None in runs written before it was recorded
    fallbacks: tuple[Fallback, ...] = ()  # every reuse mode the engine's probe gave up, with its reason
    long_prompts: LongPrompts | None = None  # prompts longer than the model's context; None: none was
    backend: BackendRecord = field(default_factory=BackendRecord)  # {}: not recorded


class SavedRun(NamedTuple):
    """A finished run: run.json's record and every question result (as read back, or as just written)."""

    result: RunResult
    questions: list[QuestionResult]


class ReportRun(NamedTuple):
    """One saved run to report; with `questions` the table gains a bootstrap 95% CI of the Average."""

    result: RunResult
    task: Task
    path: Path | None = None  # the run directory: where a C-Eval test submission file lies
    questions: Sequence[QuestionResult] | None = None
    reference: str | None = None  # the published model to set beside it; None: matched on the model label
