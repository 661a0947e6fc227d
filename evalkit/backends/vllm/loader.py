"""`eval` / `sweep --backend vllm`: what the runner loads per precision and what is refused first.

`check_run` refuses what cannot run before anything loads; `prepare_model_dir` dequantizes a GGUF file once
(for every precision of a sweep); `load_for_run(source, engine, precision, model_dir, ...)` gives the
tokenizer and HF config as the HF path reads them (no HF weights) and the started engine, as an
evalkit.models.loading.LoadedModel whose `model` is a VllmModel (the runner scores it with
evalkit.backends.vllm.scorer.VllmScorer).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalkit.backends.vllm.engine import (
    DTYPES,
    QUANTIZED,
    VllmSettings,
    dequantize_gguf,
    load_vllm,
    quant_method,
    require_logprob_token_ids,
)
from evalkit.models.source import ModelSource
from evalkit.store.records import ModelInfo
from evalkit.types import EvalkitError, VllmEngine

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class VllmModel:
    """`LoadedModel.model` under --backend vllm: the HF config (the runner reads its position limit) and
    the started engine, with the settings it was started with; no HF weights are loaded."""

    config: Any  # a transformers PretrainedConfig
    llm: Any  # vllm.LLM
    settings: VllmSettings


def settings_for(engine: VllmEngine, precision: str, trust_remote_code: bool) -> VllmSettings:
    """The engine settings of a run: the --backend vllm flags at `precision`."""
    engine_fields = dataclasses.asdict(engine)
    return VllmSettings(precision=precision, trust_remote_code=trust_remote_code, **engine_fields)


def check_run(
    engine: VllmEngine, trust_remote_code: bool, precisions: Sequence[str], source: ModelSource
) -> None:
    """Before anything loads: vLLM importable with logprob_token_ids, and every precision runnable on the
    model (a GGUF file is dequantized to floats: fp32, bf16 or fp16 only)."""
    require_logprob_token_ids()
    for precision in precisions:
        settings = settings_for(engine, precision, trust_remote_code)
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
                f"{source.location!r}: download it first and pass its directory"
            )


def prepare_model_dir(source: ModelSource, work_dir: str | Path) -> Path:
    """The model directory vLLM loads: the local directory itself, or a GGUF file dequantized once into
    `work_dir` (every precision of a sweep reads it)."""
    if source.kind == "gguf":
        assert source.gguf_file is not None
        LOG.info("dequantizing %s for vLLM into %s", source.gguf_file, work_dir)
        return dequantize_gguf(Path(source.location) / source.gguf_file, Path(work_dir) / "model")
    return Path(source.location)


def load_for_run(
    source: ModelSource,
    engine: VllmEngine,
    precision: str,
    model_dir: str | Path,
    device: str,
    trust_remote_code: bool = False,
    **engine_kwargs: Any,
):
    """An evalkit.models.loading.LoadedModel for --backend vllm: tokenizer and HF config read as the HF path
    reads them (evalkit's own tokenizer for a native Baichuan checkpoint: its remote code never runs), and a
    vLLM engine started on `model_dir` (prepare_model_dir) at `precision`; `engine_kwargs` override
    vllm.LLM's (bench turns the prefix cache off)."""
    import time

    from transformers import AutoConfig, PretrainedConfig

    from evalkit.models.loading import LoadedModel, load_tokenizer
    from evalkit.models.pretrained import from_pretrained
    from evalkit.models.source import native_variant, resolve_source

    local = source if Path(source.location) == Path(model_dir) else resolve_source(str(model_dir))
    native = native_variant(local)
    settings = settings_for(engine, precision, trust_remote_code)
    started = time.perf_counter()
    tokenizer = load_tokenizer(local, trust_remote_code)
    if native is not None:  # vLLM has its own Baichuan classes; the config read without remote code
        hf_config = PretrainedConfig.from_pretrained(local.location)
    else:
        hf_config = from_pretrained(AutoConfig, local, trust_remote_code=trust_remote_code)
    llm = load_vllm(model_dir, settings, **engine_kwargs)
    info = ModelInfo(
        precision=precision,
        quant_backend="pre-quantized" if precision in QUANTIZED else "none",
        quant_method=quant_method(hf_config.to_dict()) or "none",
        source_quantization=_gguf_quantization(source),
        dtype=DTYPES.get(precision, str(llm.llm_engine.model_config.dtype).removeprefix("torch.")),
        device=device,
        source=source.kind,
        weights_format=f"vllm: dequantized from {source.gguf_file}"
        if source.gguf_file
        else "vllm: checkpoint",
        load_seconds=round(time.perf_counter() - started, 2),
        model_class=(getattr(hf_config, "architectures", None) or ["?"])[0],
        trust_remote_code=trust_remote_code,
        implementation=f"vllm {require_logprob_token_ids()}",
    )
    return LoadedModel(VllmModel(hf_config, llm, settings), tokenizer, source, info)


def _gguf_quantization(source) -> str | None:
    if not source.gguf_file:
        return None
    from evalkit.models.source import source_quantization

    found = source_quantization(source)
    return f"gguf {found.method}" if found is not None else None
