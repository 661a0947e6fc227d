"""Load a causal LM and its tokenizer from a hub id, a local directory or a GGUF file, at a precision.

Loading is the one place that touches the hub: a local path is always preferred (evalkit.models.source
classifies `--model` and checks its files), and a failure says how to point evalkit at a local copy
(evalkit.models.pretrained).
`trust_remote_code` is passed through only when the user asked for it; a local Baichuan checkpoint
runs natively (evalkit.models, recognised from its config) and its remote code never runs, flag or
not; remote code that raises ends in one EvalkitError naming what failed. The precision/backend
combination is checked (`check_precision`) before anything heavy is loaded; quantization itself
lives in evalkit.models.quant.plans, memory accounting (real tensor bytes, load peak) in
evalkit.models.memory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from evalkit.machine import DEVICE_MAPS, resolve_device
from evalkit.models.memory import measure_peak_memory, weight_bytes
from evalkit.models.pretrained import from_pretrained
from evalkit.models.quant.libraries import (
    bnb_config,
    fit_nf4_cpu_kernel,
    nf4_cpu_kernel_layers,
    quantize_bnb_modules,
    quantize_torchao,
    quantize_with_model_code,
)
from evalkit.models.quant.plans import (
    LLM_INT8_ACTIVATIONS,
    Prequantized,
    QuantPlan,
    linear_layer_report,
    plan_quantization,
)
from evalkit.models.quant.rtn import quantize_rtn
from evalkit.models.source import (
    ModelSource,
    check_model_files,
    native_variant,
    resolve_source,
    source_quantization,
)
from evalkit.store.records import ModelInfo
from evalkit.types import EvalkitError, unknown

__all__ = ["LoadedModel", "check_precision", "load_model"]


class ModelHandle(Protocol):
    """What the runner reads of any backend's model: its transformers config (the context length)."""

    config: Any  # a transformers PretrainedConfig


@dataclass
class LoadedModel:
    """A model ready to score: the backend's handle on it, the tokenizer every prompt is encoded with, where
    it came from and how it was loaded."""

    model: ModelHandle  # a transformers PreTrainedModel in eval mode, or a backend's own (VllmModel)
    tokenizer: Any  # a transformers tokenizer (evalkit's own for the native Baichuan ports)
    source: ModelSource
    info: ModelInfo = field(default_factory=ModelInfo)  # precision, backend, method, weight bytes, peak


def _check_native(
    variant: Any, precision: str, backend: str | None, prequantized: Prequantized | None
) -> None:
    from evalkit.models.baichuan.quantize import quantize_refusal

    where = f"{variant.name} runs natively in evalkit (its remote code is never run)"
    if prequantized is not None:
        raise EvalkitError(
            f"{where}, from float weights only; this checkpoint is pre-quantized ({prequantized.method})"
        )
    if precision in ("int8", "int4") and backend == "model" and quantize_refusal(variant):
        raise EvalkitError(quantize_refusal(variant))


def check_precision(
    precision: str,
    backend: str | None,
    device: str,
    source: ModelSource | str,
    trust_remote_code: bool = False,
) -> QuantPlan:
    """Refuse a precision/backend/device/source combination that cannot run, before any model is loaded."""
    if isinstance(source, str):
        source = resolve_source(source)
    check_model_files(source, trust_remote_code)
    prequantized, native = source_quantization(source), native_variant(source)
    if native is not None:
        _check_native(native, precision, backend, prequantized)
    return plan_quantization(
        precision,
        backend,
        device,  # resolved by the caller (evalkit.machine.resolve_device)
        prequantized,
        trust_remote_code,
        native_quantize=native is not None,
    )


def _load_dense(source: ModelSource, **kwargs: Any) -> Any:
    """A float model to quantize: a GGUF file is dequantized, even where transformers could keep it packed."""
    from transformers import AutoModelForCausalLM, GgufConfig

    if source.gguf_file:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return from_pretrained(AutoModelForCausalLM, source, **kwargs)


def _load_quantized_on_load(
    source: ModelSource, plan: QuantPlan, placement: str | dict, **kwargs: Any
) -> Any:
    """bitsandbytes and pre-quantized checkpoints: transformers quantizes (or reads) weight by weight."""
    from transformers import AutoModelForCausalLM

    if plan.backend == "bnb":
        kwargs["quantization_config"] = bnb_config(plan)
    if not source.gguf_file:
        return from_pretrained(AutoModelForCausalLM, source, device_map=placement, **kwargs)
    # transformers refuses quantization_config with gguf_file: dequantize the GGUF once, save it as a
    # safetensors checkpoint in a temporary directory, and let bitsandbytes quantize that
    with tempfile.TemporaryDirectory(prefix="evalkit-gguf-") as staging:
        dense = _load_dense(source, dtype=kwargs["dtype"], trust_remote_code=kwargs["trust_remote_code"])
        dense.save_pretrained(staging)
        del dense
        return from_pretrained(
            AutoModelForCausalLM, ModelSource("local", staging), device_map=placement, **kwargs
        )


def _load_network(
    source: ModelSource, plan: QuantPlan, target: str, trust_remote_code: bool, device_map: str | None = None
) -> tuple[Any, QuantPlan]:
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": plan.compute_dtype, "trust_remote_code": trust_remote_code}
    if plan.backend in ("bnb", "pre-quantized"):
        return _load_quantized_on_load(source, plan, device_map or {"": target}, **kwargs), plan
    if plan.backend == "none":  # as it comes: transformers keeps a GGUF packed where it has kernels for it
        if device_map:  # accelerate places the layers over the visible GPUs (and CPU) as they load
            return from_pretrained(AutoModelForCausalLM, source, device_map=device_map, **kwargs), plan
        return from_pretrained(AutoModelForCausalLM, source, **kwargs).to(target), plan
    return _quantize_loaded(_load_dense(source, **kwargs), plan, target)


def _quantize_loaded(network: Any, plan: QuantPlan, target: str) -> tuple[Any, QuantPlan]:
    """The backends that quantize a loaded float model (torchao, rtn, model; bnb for evalkit.models,
    which transformers did not load), then on to `target`."""
    if plan.backend == "bnb":
        quantize_bnb_modules(network, plan.bits, plan.compute_dtype, device=target)
    elif plan.backend == "torchao":  # quantized where it runs: its CPU int4 layout is CPU-only
        network = network.to(target)
        plan = quantize_torchao(network, plan)
    elif plan.backend == "rtn":  # on CPU before moving, as Baichuan advises, so the device holds only codes
        quantize_rtn(network, plan.bits)
    elif plan.backend == "model":
        network = quantize_with_model_code(network, plan.bits)
    return network.to(target), plan


def _placement(network: Any) -> dict[str, int]:
    """Modules per device of a dispatched model (the summary of its hf_device_map)."""
    counts: dict[str, int] = {}
    for device in getattr(network, "hf_device_map", {}).values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return counts


def _weights_format(source: ModelSource, network: Any) -> str:
    if not source.gguf_file:
        return "transformers"
    # Read from the modules, not the quantizer's flags: transformers' legacy GGUF path dequantizes
    # while leaving `dequantize` False; packed weights live in its Gguf* modules.
    packed = any(type(module).__name__.startswith("Gguf") for module in network.modules())
    return f"gguf {source.gguf_file} ({'packed GGUF blocks' if packed else 'dequantized on load'})"


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """The tokenizer every prompt of a run is encoded with, whatever backend scores it: evalkit's own for a
    native Baichuan checkpoint (its remote code never runs), else transformers' AutoTokenizer."""
    if native_variant(source) is not None:
        from evalkit.models.baichuan.tokenizer import load_baichuan_tokenizer

        return load_baichuan_tokenizer(source.location)
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, source, trust_remote_code=trust_remote_code)


def load_model(
    model: str | ModelSource,
    precision: str = "fp32",
    device: str = "auto",
    trust_remote_code: bool = False,
    quant_backend: str | None = None,
    device_map: str | None = None,
) -> LoadedModel:
    """Load model and tokenizer once at a precision; the caller runs every task on the result.

    `device_map` ("auto", ...) spreads one model over the visible GPUs (transformers + accelerate)
    instead of putting it whole on `device`; backends that quantize after loading cannot take it.
    """

    source = model if isinstance(model, ModelSource) else resolve_source(model)
    target = resolve_device(device)
    plan = check_precision(precision, quant_backend, target, source, trust_remote_code)
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise unknown("device map", device_map, DEVICE_MAPS)
        if plan.backend not in ("none", "bnb", "pre-quantized"):
            raise EvalkitError(
                f"--device-map works with float precisions, bnb and pre-quantized "
                f"checkpoints, not with --quant-backend {plan.backend} (it quantizes after "
                f"loading, on one device)"
            )
    native = native_variant(source)
    if native is not None and device_map is not None:
        raise EvalkitError(
            f"--device-map: {native.name} runs natively in evalkit, on one device; drop --device-map"
        )
    with measure_peak_memory(target) as peak:
        started = time.perf_counter()
        tokenizer = load_tokenizer(source, trust_remote_code)
        if native is not None:  # never the repository's code, whatever trust_remote_code says
            from evalkit.models.baichuan.model import load_baichuan

            network = load_baichuan(source.location, native, plan.compute_dtype)
            network, plan = _quantize_loaded(network, plan, target)
        else:
            network, plan = _load_network(source, plan, target, trust_remote_code, device_map)
        network.eval()
        load_seconds = time.perf_counter() - started
    nf4 = (plan.backend, plan.bits) == ("bnb", 4)
    # NF4 layers the AVX512-BF16 CPU kernel cannot repack, kept on bitsandbytes' generic path
    nf4_generic = fit_nf4_cpu_kernel(network) if nf4 else []
    compute_dtype = plan.compute_dtype_name
    if nf4 and target == "cpu" and nf4_cpu_kernel_layers(network):
        compute_dtype = "bfloat16"  # that kernel computes in bf16, whatever bnb_4bit_compute_dtype says
    quantized, floating = linear_layer_report(network)
    llm_int8 = any(type(module).__name__ == "Linear8bitLt" for module in network.modules())
    activations = plan.activation_quantization or (LLM_INT8_ACTIVATIONS if llm_int8 else None)
    info = ModelInfo(
        precision=plan.precision,
        quant_backend=plan.backend,
        quant_bits=plan.bits,
        quant_method=plan.method,
        group_size=plan.group_size,
        compute_dtype=compute_dtype,
        activation_quantization=activations,  # LLM.int8 built by a model's own quantize() too
        source_quantization=plan.source_label,
        requantized_from=plan.requantized_from,
        dtype=str(plan.compute_dtype).removeprefix("torch."),
        device=target,
        device_map=_placement(network) if device_map else None,
        source=source.kind,
        weights_format=_weights_format(source, network),
        quantized_layers=len(quantized),
        skipped_layers=floating if plan.bits else [],  # linear layers left in float by a quantizing backend
        weight_bytes=weight_bytes(network),
        peak_rss_bytes=peak.rss_bytes,
        peak_rss_scope=peak.rss_scope,
        peak_cuda_bytes=peak.cuda_bytes,
        load_seconds=round(load_seconds, 2),
        model_class=type(network).__name__,
        trust_remote_code=trust_remote_code,
        # evalkit's own port (evalkit.models), or the module.class transformers built
        implementation=(
            native.implementation if native else f"{type(network).__module__}.{type(network).__name__}"
        ),
        native_evidence=native.evidence if native else None,
        remote_code_executed=any(
            type(obj).__module__.startswith("transformers_modules") for obj in (network, tokenizer)
        ),
        nf4_generic_kernel_layers=nf4_generic,
    )
    return LoadedModel(network, tokenizer, source, info)
