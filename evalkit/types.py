"""The core records of evalkit: tasks, subjects, questions, prompts, the run's configuration and each
question's result (a finished run's records are in evalkit.store.records).

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
from typing import Literal

LETTERS: tuple[str, str, str, str] = ("A", "B", "C", "D")

LetterRule = Literal["in_context", "standalone"]
BosPolicy = Literal["tokenizer_default", "never"]
ShotOrder = Literal["file", "shuffled_per_question"]
LengthPolicy = Literal["none", "drop_last", "drop_longest", "left_truncate"]
Aggregation = Literal["micro", "macro", "points"]  # points: each subject weighted by n x Subject.points
ShotSource = Literal["split", "file", "derived", "none"]  # Scheme.shot_source
DataFormat = Literal["csv", "jsonl", "json"]  # Task.format: how a subject's file is read
RowFilter = Literal["all", "single4"]  # Task.keep: single4 = four options, one gold letter A-D
EngineChoice = Literal["auto", "prefix", "plain"]  # --engine: prefix reuse, full prompts, or chosen per run
DistributedExecutor = Literal["ray", "mp"]  # vLLM's executors: across nodes (Ray) or one node
Permute = Literal["none", "cyclic"]  # --permute: the options as given, or all four cyclic rotations


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
    language: str = ""  # picks Scheme.languages' templates (AGIEval: "en" / "zh")
    points: float = 1.0  # points per question (GAOKAO-Bench `score`): the `points` aggregation's weight


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` is None on unlabeled splits (C-Eval test)."""

    id: str  # stable: "<task>/<subject>/<split>/<row index>", e.g. "ceval/accountant/val/17"
    subject: str
    text: str
    choices: tuple[str, str, str, str]
    answer: str | None
    passage: str | None = None  # AGIEval's passage; Scheme.passage_template renders it
    options: tuple[str, ...] | None = None  # the option list as given (a shot may have 3, or 1 combined)
    label: str | None = None  # the gold as upstream prints it (`['C']` for a list label); None: answer


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
    # ---- issue 24 (AGIEval, Gaokao, declared tasks); every default reproduces the schemes above ----
    shots: int = 5  # the shot count when --shots is not given
    subject_shots: dict[str, int] = field(default_factory=dict)  # per-subject caps (AGIEval official 1/3/5)
    shot_source: ShotSource = "split"  # the task's shot split, a shot file, a derived split, or none
    shot_file: str = ""  # "file": CSV of "sample k" rows, cells Python literals (under <data-dir>/<task>/)
    shot_columns: dict[str, str] = field(default_factory=dict)  # subject -> its column in the shot file
    blank_passage: tuple[str, ...] = ()  # subjects whose file shots lose their passage
    split_key: str = ""  # "derived": sha256 template of a row's rank, {benchmark} {subset} {row}
    pool_size: int = 5  # "derived": rows per subject moved to the shot pool
    options_joiner: str = "\n"  # `{options}`: the option list joined by this
    passage_template: str = ""  # `{passage}` when the question has a non-empty passage, else ""
    header_by_subject: dict[str, str] = field(default_factory=dict)  # a subject's whole header, verbatim
    languages: dict[str, dict[str, str]] = field(default_factory=dict)  # language -> template overrides
    default_exclude: tuple[str, ...] = ()  # subjects left out unless --subjects names them
    also: tuple[Aggregation, ...] = ()  # aggregations reported beside the main one ("Average (micro)")

    def __hash__(self) -> int:  # subject_names is a dict; the name identifies a scheme
        return hash(self.name)

    @staticmethod
    def from_dict(data: dict) -> Scheme:
        """A scheme read back from JSON (run.json): its tuple fields came back as lists."""
        tuples = {f.name for f in dataclasses.fields(Scheme) if isinstance(f.default, tuple)}
        return Scheme(**{k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()})

    def shots_for(self, subject: str, requested: int) -> int:
        """Shots for one subject: the request, capped by the scheme's per-subject count."""
        return min(requested, self.subject_shots.get(subject, requested))


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
    # ---- issue 24: JSON/JSONL layouts (AGIEval, Gaokao, declared tasks); defaults: the CSV layouts ----
    format: DataFormat = "csv"
    fields: dict[str, str] = field(default_factory=dict)  # role (question, options, answer, passage) -> key
    items_key: str = ""  # "json": the key of the item list ("example" in GAOKAO-Bench)
    keep: RowFilter = "all"  # rows scored; the others are skipped (their row index stays in the ids)
    points_field: str = ""  # the per-item points key, checked against Subject.points
    requires_data_dir: bool = False  # no hub copy carries these bytes
    declaration_hash: str = ""  # sha256 prefix of the --task-file it came from ("" for built-in tasks)
    # the four options are separate fields (not embedded in the question text, not carrying their own
    # "(A)" prefixes): only then can --permute rotate them (evalkit.questions.permute)
    options_separate: bool = True

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
    # the four letters' summed probability under the full vocabulary at the answer position; None where the
    # backend cannot give it, and in records from before it existed
    letter_mass: float | None = None

    def to_json(self) -> str:
        """One JSON line; `letter_mass` is left out while None, so that lines written before it existed
        (and by backends without it) keep their bytes when a run resumes or merges its shards."""
        row = dataclasses.asdict(self)
        if row["letter_mass"] is None:
            del row["letter_mass"]
        return json.dumps(row, ensure_ascii=False)

    @staticmethod
    def from_dict(row: dict) -> QuestionResult:
        return QuestionResult(**{**row, "logprobs": tuple(row["logprobs"])})


def token_ids_hash(token_ids: Sequence[int]) -> str:
    """A short fingerprint of a prompt as the model saw it (after BOS and truncation), to check prompts
    across runs."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode("ascii")).hexdigest()[:16]


@dataclass(frozen=True)
class VllmEngine:
    """How the in-process vLLM engine is started (--backend vllm; evalkit.backends.vllm.engine.VllmSettings
    adds the precision): where it runs, never what it computes, so none of it is in the config hash."""

    tensor_parallel_size: int = 1  # GPUs sharing each layer
    pipeline_parallel_size: int = 1  # stages splitting the layers
    gpu_memory_utilization: float = 0.9  # share of each GPU's memory vLLM may take
    max_model_len: int | None = None  # tokens per request; None: the model's own limit
    enforce_eager: bool = False  # no CUDA graphs / torch.compile
    distributed_executor_backend: DistributedExecutor | None = None  # None: vLLM's choice
    kv_cache_memory_bytes: int | None = None  # KV cache bytes (CPU: not VLLM_CPU_KVCACHE_SPACE); no flag


# --backend server: a GPU server (vLLM, continuous batching) keeps dozens of requests busy at once; 32 in
# flight per server fills a 7B-13B model's batch without queueing most of a subject in its scheduler.
DEFAULT_CONCURRENCY = 32
DEFAULT_MAX_RETRIES = 4  # each request is tried at most 1 + max_retries times (backoff 0.5, 1, 2, 4 s)
DEFAULT_TIMEOUT_S = 120.0  # one request: a long prompt queued behind a full batch on a busy server


@dataclass(frozen=True)
class ServerSettings:
    """How evalkit reaches a served model (--backend server): never hashed, no score depends on it.

    `api_key_env` is the NAME of an environment variable; the key itself is read when a request is
    built and is never stored here, so config.json and run.json cannot leak it.
    """

    base_urls: tuple[str, ...] = ()  # one per server of the same model, e.g. "http://node1:8000"
    model: str | None = None  # the served model name; None: the only one the server's /v1/models lists
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight per server (default sized for a GPU server)
    max_retries: int = DEFAULT_MAX_RETRIES  # retries of a refused/reset/timed-out/429/5xx request
    timeout_s: float = DEFAULT_TIMEOUT_S  # per request, whole: connect, send and the answer to its last byte
    api_key_env: str | None = None  # the variable holding the bearer token, e.g. "VLLM_API_KEY"
    verify_tls: bool = True  # False: accept any certificate (recorded in run.json)
    backoff_s: float = 0.5  # the first retry's wait; doubled each retry, with up to 50% random jitter


# Fields of RunConfig that do not change any score, so they are left out of the config hash (the vLLM
# engine's scale settings among them: how it is spread over GPUs, not what it computes).
NON_RESULT_FIELDS = frozenset(
    {"batch_tokens", "output_dir", "device", "engine", "progress", "vllm", "server"}
)
# Result fields left out of the hash while they hold their default, so that the runs made before the field
# existed keep their hash (and resume); any other value is hashed (a resume never mixes backends).
HASHED_UNLESS_DEFAULT = frozenset({"backend", "max_length", "task_file_hash", "permute"})


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
    max_length: int | None = None  # the length policy's token limit; None: the scheme's (2048)
    task_file_hash: str | None = None  # sha256 prefix of the --task-file declaring this task; None: built in
    batch_tokens: int | None = None  # None: sized for the device
    engine: EngineChoice = "auto"
    output_dir: str = "results"
    progress: bool = True
    backend: str = "hf"  # the scoring engine: a name in evalkit.backends.PLUGINS
    permute: Permute = "none"  # "cyclic": every question under its four option rotations (own configuration)
    vllm: VllmEngine = field(default_factory=VllmEngine)  # --backend vllm: how its engine is started
    server: ServerSettings = field(default_factory=ServerSettings)  # --backend server: which servers, how

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
class SubjectData:
    """One subject's questions to score and the rows its few-shot examples come from."""

    subject: Subject
    questions: tuple[Question, ...]  # the evaluated split (after --limit: its first N rows in file order)
    shots: tuple[Question, ...]  # the shot split (dev), every row in file order
    files: tuple[tuple[str, str], ...] = ()  # (path under the data dir, sha256 prefix) of each file read


@dataclass(frozen=True)
class Prompt:
    """The full prompt text of one question (ending with the answer cue) and how many shots it holds."""

    question: Question
    text: str
    shots_used: int


def config_from_fields(fields: dict) -> RunConfig:
    """A RunConfig from config.json's fields: today's nested `vllm` record, or the flat engine fields that
    config.json held before it (read into the nested record, so old run directories load and resume)."""
    fields = dict(fields)
    engine_names = {f.name for f in dataclasses.fields(VllmEngine)}
    flat = {name: fields.pop(name) for name in list(fields) if name in engine_names}
    nested = fields.pop("vllm", None) or {}
    if isinstance(nested, dict):
        nested = VllmEngine(**{**flat, **nested})
    server = fields.pop("server", None) or {}
    if isinstance(server, dict):
        server = ServerSettings(**{**server, "base_urls": tuple(server.get("base_urls", ()))})
    subjects = fields.get("subjects")
    if subjects is not None:
        fields["subjects"] = tuple(subjects)
    return RunConfig(**fields, vllm=nested, server=server)
