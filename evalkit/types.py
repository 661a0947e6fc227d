"""The core records of evalkit: the whole contract between data, prompts, scoring, results and reports.

Everything here is plain data (frozen dataclasses and literals) so that every other module, and
the tests, can build and compare records without torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

LETTERS: tuple[str, str, str, str] = ("A", "B", "C", "D")

LetterRule = Literal["in_context", "standalone"]
BosPolicy = Literal["tokenizer_default", "never"]
ShotOrder = Literal["file", "shuffled_per_question"]
LengthPolicy = Literal["none", "drop_last", "drop_longest", "left_truncate"]
Aggregation = Literal["micro", "macro"]
EngineChoice = Literal["auto", "prefix", "plain"]  # --engine: prefix reuse, full prompts, or chosen per run
Backend = Literal["hf", "vllm"]  # --backend: evalkit.scoring.Scorer, or evalkit.backends.vllm.VllmScorer


class EvalkitError(Exception):
    """A problem with the user's input or environment: printed as one line `error: ...`, exit 2."""


MAX_LISTED = 20  # options an "unknown" message lists (67 subjects would drown the line)


def unknown(kind: str, name: object, valid: Iterable[object]) -> EvalkitError:
    """The one "unknown X" error: `unknown <kind> 'name'; did you mean a or b? (valid: a, b, ...)`.

    The closest names (difflib, case-insensitive) come first; at most MAX_LISTED options are listed,
    in the caller's order, the rest counted. The caller raises it.
    """
    options = [str(option) for option in valid]
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=3)
    hint = f"; did you mean {' or '.join(by_lower[c] for c in close)}?" if close else ""
    listed = ", ".join(options[:MAX_LISTED])
    if len(options) > MAX_LISTED:
        listed += f", ... ({len(options) - MAX_LISTED} more)"
    return EvalkitError(f"unknown {kind} {name!r}{hint} (valid: {listed})")


@dataclass(frozen=True)
class Subject:
    """One subject of a benchmark; `categories` lists every reporting group it belongs to."""

    name: str  # file/config name, e.g. "high_school_physics"
    name_en: str  # e.g. "High School Physics"
    name_zh: str  # e.g. "高中物理" ("" where the benchmark has none)
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` is None on unlabeled splits (C-Eval test)."""

    id: str  # stable: "<task>/<subject>/<split>/<row index>", e.g. "ceval/accountant/val/17"
    subject: str
    text: str
    choices: tuple[str, str, str, str]
    answer: str | None


@dataclass(frozen=True)
class Scheme:
    """A named, data-only description of prompt bytes, answer tokens, shots and aggregation.

    Templates are `str.format` strings. Fields: `{subject_spaced}` (" abstract algebra": each
    underscore-separated word with a leading space), `{subject_en}`, `{subject_zh}`,
    `{question}`, `{A}`..`{D}`, `{letter}`.
    A prompt is `header + header_joiner + shot_joiner.join(shots) + query_joiner + query` where a
    shot is `example.format(...) + shot_answer.format(letter=gold)` and the query is
    `example.format(...)` (which ends with the answer cue); `header_joiner` is left out when no
    shot is used (Baichuan's C-Eval script: header + "\n" + query at 0 shots).
    """

    name: str
    header: str
    example: str
    shot_answer: str  # appended to a shot's example, e.g. " {letter}\n\n"
    answer_cue: str  # the end of `example` after which the letter is scored, e.g. "Answer:"
    letter_rule: LetterRule
    aggregation: Aggregation
    header_joiner: str = ""
    shot_joiner: str = ""
    query_joiner: str = ""
    bos: BosPolicy = "tokenizer_default"
    shot_order: ShotOrder = "file"
    length_policy: LengthPolicy = "none"
    max_tokens: int = 2048
    strip_text: bool = False  # strip the question (not the choices) before formatting, as lm-eval does
    subject_names: dict[str, str] = field(default_factory=dict)  # overrides subject_zh per subject
    source: str = ""  # where these bytes come from (repository, path, commit)

    def __hash__(self) -> int:  # subject_names is a dict; the name identifies a scheme
        return hash(self.name)


@dataclass(frozen=True)
class Task:
    """A benchmark: its subjects, splits, reporting groups and schemes (mostly data from tasks/)."""

    name: str  # "mmlu", "ceval", "cmmlu"
    title: str  # "MMLU", "C-Eval", "CMMLU"
    subjects: tuple[Subject, ...]
    eval_split: str  # the split scored by default
    shot_split: str  # the split few-shot examples come from
    splits: tuple[str, ...]  # local split names available
    local_path: str  # e.g. "{split}/{subject}_{split}.csv" relative to <data-dir>/<task>/
    csv_header: tuple[str, ...] | None  # expected header row, None when files have none
    hub_id: str  # datasets hub id, one config per subject
    hub_splits: dict[str, str]  # local split name -> hub split name
    categories: tuple[str, ...]  # column order of the report table (before "Average")
    extra_groups: tuple[str, ...] = ()  # groups reported besides categories, e.g. "Avg(Hard)"
    labeled_splits: tuple[str, ...] = ()  # splits whose rows carry answers
    split_headers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # header per split where it
    # differs from csv_header (C-Eval dev adds "explanation", C-Eval test has no "answer")
    id_column: str | None = None  # header of the row-id column, checked to equal the row index
    schemes: dict[str, Scheme] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)

    def subject(self, name: str) -> Subject:
        for subject in self.subjects:
            if subject.name == name:
                return subject
        raise unknown(f"{self.name} subject", name, [s.name for s in self.subjects])

    def group_subjects(self, group: str) -> tuple[str, ...]:
        """Subjects in a category or extra group (a subject may be in several groups)."""
        return tuple(s.name for s in self.subjects if group in s.categories)


@dataclass(frozen=True)
class QuestionResult:
    """One scored question: one line of questions.jsonl."""

    id: str
    subject: str
    gold: str | None
    pred: str
    logprobs: tuple[float, float, float, float]  # log-softmax over the four letter ids, fp32
    correct: bool | None  # None where gold is unknown
    shots_used: int
    prompt_tokens: int
    prompt_hash: str | None = None  # token_ids_hash of the ids scored; None in records from before it existed

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

    @staticmethod
    def from_dict(row: dict) -> QuestionResult:
        return QuestionResult(**{**row, "logprobs": tuple(row["logprobs"])})


def token_ids_hash(token_ids: Sequence[int]) -> str:
    """A short fingerprint of a prompt as the model saw it (after BOS and truncation), to check prompts
    across runs."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode("ascii")).hexdigest()[:16]


# Fields of RunConfig that do not change any score, so they are left out of the config hash (the vLLM
# engine's scale settings among them: how it is spread over GPUs, not what it computes).
NON_RESULT_FIELDS = frozenset(
    {
        "batch_tokens",
        "output_dir",
        "device",
        "engine",
        "progress",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "gpu_memory_utilization",
        "max_model_len",
        "enforce_eager",
        "distributed_executor_backend",
    }
)
# Result fields left out of the hash while they hold their default, so that the runs made before the field
# existed keep their hash (and resume); any other value is hashed (a resume never mixes backends).
HASHED_UNLESS_DEFAULT = frozenset({"backend"})


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run of one task, with every default of evalkit in one place."""

    model: str
    task: str
    data_dir: str | None = None  # None: load from the hub through `datasets`
    split: str | None = None  # None: the task's eval split
    subjects: tuple[str, ...] | None = None  # None: all
    scheme: str = "official"
    letter_rule: LetterRule | None = None  # None: the scheme's rule
    shots: int = 5
    limit: int | None = None  # questions per subject, for smoke runs
    precision: str = "fp32"
    quant_backend: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    seed: int = 1234  # shot shuffles of schemes that shuffle
    batch_tokens: int | None = None  # None: sized for the device
    engine: EngineChoice = "auto"
    output_dir: str = "results"
    progress: bool = True
    backend: Backend = "hf"  # the scoring engine (evalkit.backends)
    # ---- --backend vllm: how the engine is started (evalkit.backends.vllm.VllmSettings) ----
    tensor_parallel_size: int = 1  # GPUs sharing each layer
    pipeline_parallel_size: int = 1  # stages splitting the layers
    gpu_memory_utilization: float = 0.9  # share of each GPU's memory vLLM may take
    max_model_len: int | None = None  # tokens per request; None: the model's own limit
    enforce_eager: bool = False  # no CUDA graphs / torch.compile
    distributed_executor_backend: str | None = None  # "ray": across nodes; None: vLLM's choice

    def result_fields(self) -> dict:
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in HASHED_UNLESS_DEFAULT}
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in NON_RESULT_FIELDS and not (k in defaults and v == defaults[k])
        }

    def config_hash(self) -> str:
        """Identifies runs whose scores must be identical; resume matches on it."""
        blob = json.dumps(self.result_fields(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Metric:
    """An accuracy over `n` questions (micro) or the mean over `n_subjects` subjects (macro)."""

    accuracy: float  # in [0, 1]
    n: int  # questions behind the figure
    n_subjects: int


ReuseMode = Literal["packed", "rows", "plain", "isolated"]  # how the engine reused prefixes (evalkit.scoring)


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
    placement, memory, implementation. Filled by evalkit.model.load_model; every field has a default so
    that run.json files written before a field existed still load (None: not recorded)."""

    # ---- the quantization plan (evalkit.quantize.QuantPlan.info) ----
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
    source: str | None = None  # "hub" | "local" | "gguf" (evalkit.model.ModelSource.kind)
    weights_format: str | None = None  # "transformers", or how a GGUF file's blocks are held
    quantized_layers: int | None = None  # linear layers holding quantized weights
    skipped_layers: list[str] = field(default_factory=list)  # linear layers a quantizing backend left float
    weight_bytes: int | None = None  # real tensor bytes of the weights, quantized storage included
    # ---- the load (evalkit.model.PeakMemory.info) ----
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
    # prompts longer than the model's context: {"context": positions, "policy": the scheme's length policy,
    # "subjects": {subject: {"prompts": n, "of": questions, "longest": tokens}}}; {} where none was
    long_prompts: dict = field(default_factory=dict)
    # the scoring backend (evalkit.backends.base.backend_record): {"backend": "hf"}, or vLLM's version,
    # settings and prefix-cache statistics; {} in runs written before it was recorded
    backend: dict = field(default_factory=dict)
