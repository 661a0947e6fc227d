"""Load a causal LM and its tokenizer from a hub id, a local directory or a GGUF file, at a precision.

Loading is the one place that touches the hub: a local path is always preferred, a hub id is tried
only when no such path exists, and a failure says how to point evalkit at a local copy instead.
`trust_remote_code` is passed through only when the user asked for it; a local Baichuan checkpoint
runs natively (evalkit.models, recognised from its config) and its remote code never runs, flag or
not; remote code that raises ends in one EvalkitError naming what failed. The precision/backend
combination is checked (`check_precision`) before anything heavy is loaded; quantization itself
lives in evalkit.models.quantize. Memory is counted from the real tensors and the measured peak of the load.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evalkit.hub import require_hub_model
from evalkit.models.quantize import (
    FLOAT_PRECISIONS,
    LLM_INT8_ACTIVATIONS,
    Prequantized,
    QuantPlan,
    bnb_config,
    fit_nf4_cpu_kernel,
    linear_layer_report,
    plan_quantization,
    quantize_bnb_modules,
    quantize_rtn,
    quantize_torchao,
    quantize_with_model_code,
)
from evalkit.records import ModelInfo
from evalkit.types import EvalkitError, unknown

__all__ = [
    "FLOAT_PRECISIONS",
    "LoadedModel",
    "ModelSource",
    "PeakMemory",
    "check_precision",
    "load_model",
    "measure_peak_memory",
    "resolve_device",
    "resolve_source",
    "weight_bytes",
]


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: `from_pretrained(location, gguf_file=gguf_file)`."""

    kind: str  # "gguf" | "local" | "hub"
    location: str
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        """A short name for reports and run directories."""
        return Path(self.gguf_file or self.location.rstrip("/")).name.removesuffix(".gguf")


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel in eval mode (--backend vllm: backends.vllm.VllmModel)
    tokenizer: Any
    source: ModelSource
    info: ModelInfo = field(default_factory=ModelInfo)  # precision, backend, method, weight bytes, peak


def resolve_source(model: str) -> ModelSource:
    """Classify `--model`: a .gguf file, a local directory, or else a hub id."""
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise EvalkitError(f"GGUF file not found: {path}")
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EvalkitError(
                f"{path} is a directory without config.json; pass a transformers checkpoint "
                f"directory or a .gguf file"
            )
        return ModelSource("local", str(path))
    if model.startswith((".", "/", "~")) or path.exists():
        raise EvalkitError(f"model path not found: {path}")
    return ModelSource("hub", model)


DEVICES = ("auto", "cpu", "cuda", "cuda:N")  # what --device takes


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalkitError(
            f"--device {device} asked for, but torch sees no CUDA device (torch {torch.__version__})"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise unknown("device", device, DEVICES)
    return device


def _require_hub(source: ModelSource) -> None:
    """A hub source: one quick reachability check before transformers' retries (evalkit.hub)."""
    if source.kind == "hub":
        require_hub_model(source.location)


def _hub_hint(source: ModelSource) -> str:
    if source.kind != "hub":
        return ""
    return (
        " (the hub is unreachable from here? download the model and pass its local directory or .gguf file)"
    )


def source_quantization(source: ModelSource) -> Prequantized | None:
    """How the checkpoint is quantized on disk, read from metadata only (GGUF header, config.json)."""
    if source.gguf_file:
        from gguf import GGUFReader, LlamaFileType

        path = Path(source.location) / source.gguf_file
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError) as exc:  # what gguf raises on a truncated or foreign file
            raise EvalkitError(
                f"cannot read the GGUF file {path} ({exc}): it is truncated or not GGUF; "
                "download it again and check its checksum"
            ) from exc
        file_type = reader.fields.get("general.file_type")
        if file_type is None:
            return Prequantized("gguf", "unknown file type")
        code = int(file_type.parts[file_type.data[0]][0])
        return Prequantized("gguf", LlamaFileType(code).name.removeprefix("MOSTLY_"))
    from transformers import PretrainedConfig

    _require_hub(source)
    try:
        config, _ = PretrainedConfig.get_config_dict(source.location)
    except OSError as exc:
        raise EvalkitError(
            f"could not read the config of {source.location!r}{_hub_hint(source)}: {exc}"
        ) from exc
    quant = config.get("quantization_config")
    if not quant:
        return None
    bits = quant.get("bits") or (8 if quant.get("load_in_8bit") else 4 if quant.get("load_in_4bit") else None)
    group = quant.get("group_size")
    return Prequantized(
        "config",
        str(quant.get("quant_method", "unknown")),
        bits,
        group if isinstance(group, int) and group > 0 else None,
    )


def native_variant(source: ModelSource) -> Any:
    """The BaichuanVariant of a local checkpoint evalkit runs natively (evalkit.models), else None."""
    if source.kind != "local":
        return None
    from evalkit.models.baichuan import detect_variant

    return detect_variant(source.location)


def _check_native(
    variant: Any, precision: str, backend: str | None, prequantized: Prequantized | None
) -> None:
    from evalkit.models.baichuan import quantize_refusal

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
        resolve_device(device),
        prequantized,
        trust_remote_code,
        native_quantize=native is not None,
    )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "merges.txt",
)


def check_model_files(source: ModelSource, trust_remote_code: bool) -> None:
    """Before anything loads: a local checkpoint has a tokenizer, and needs no code of its own that
    the user did not allow (evalkit's native ports excepted: their code is ours)."""
    if source.kind != "local":
        return
    path = Path(source.location)
    names = {p.name for p in path.iterdir()}
    if not names.intersection(TOKENIZER_FILES) and not any(n.endswith(".tiktoken") for n in names):
        raise EvalkitError(
            f"no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES)}): copy the "
            "checkpoint's tokenizer files into it"
        )
    if trust_remote_code or native_variant(source) is not None:
        return
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvalkitError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise EvalkitError(
            f"{path} needs its own Python code (model_type {config.get('model_type')!r}, "
            f"config.json auto_map), which transformers does not have and evalkit runs only "
            "with --trust-remote-code: it was not run; pass --trust-remote-code if you trust "
            "that code"
        )


def _side_tensors(obj: object, depth: int) -> Iterator[torch.Tensor]:
    """Tensors hung on an object's attributes: bitsandbytes' CB/SCB and quant_state, Baichuan's QLinear."""
    for value in vars(obj).values():
        if isinstance(value, torch.Tensor):
            yield from _storage_tensors(value, depth)
        elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
            yield from _side_tensors(value, depth - 1)


def _storage_tensors(tensor: torch.Tensor, depth: int = 3) -> Iterator[torch.Tensor]:
    """The plain tensors that hold a tensor's bytes: a quantized subclass (torchao) holds inner tensors."""
    if hasattr(type(tensor), "__tensor_flatten__"):
        for name in tensor.__tensor_flatten__()[0]:
            yield from _storage_tensors(getattr(tensor, name), depth)
        return
    yield tensor
    if depth > 0 and hasattr(tensor, "__dict__"):
        yield from _side_tensors(tensor, depth - 1)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model holds, each storage counted once.

    Parameters, buffers, plain tensor attributes, the inner tensors of quantized subclasses and the
    scales hung on bitsandbytes parameters: `get_memory_footprint()` sizes a torchao int8 weight at
    its float dtype and misses tensors that are not parameters or buffers.
    """
    storages: dict[tuple[str, int], int] = {}
    for module in model.modules():
        held = [*module._parameters.values(), *module._buffers.values()]
        tensors = [t for t in held if t is not None]
        for tensor in (*(leaf for t in tensors for leaf in _storage_tensors(t)), *_side_tensors(module, 1)):
            if tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


@dataclass
class PeakMemory:
    """The peak of a `measure_peak_memory` block, filled when the block exits."""

    rss_bytes: int = 0  # peak resident set size of this process
    rss_scope: str = ""  # "block": the peak was reset at entry; "process": the peak since the process started
    cuda_bytes: int | None = None  # torch.cuda.max_memory_allocated over the block, on CUDA devices

    def info(self) -> dict[str, Any]:
        return {
            "peak_rss_bytes": self.rss_bytes,
            "peak_rss_scope": self.rss_scope,
            "peak_cuda_bytes": self.cuda_bytes,
        }


def _reset_rss_peak() -> bool:
    # Linux resets VmHWM (the peak RSS) when "5" is written to clear_refs; elsewhere the peak is process-wide
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_peak() -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource  # macOS: ru_maxrss is in bytes there, kilobytes on Linux

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@contextmanager
def measure_peak_memory(device: str = "cpu") -> Iterator[PeakMemory]:
    """Measure the peak memory of a block: host RSS always, CUDA allocations too on a CUDA device."""
    peak = PeakMemory(rss_scope="block" if _reset_rss_peak() else "process")
    on_cuda = device.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield peak
    finally:
        peak.rss_bytes = _rss_peak()
        if on_cuda:
            peak.cuda_bytes = torch.cuda.max_memory_allocated(device)


def _remote_code_error(loader: Any, source: ModelSource, exc: Exception) -> EvalkitError:
    """One error for a tokenizer or model whose repository code raised under --trust-remote-code."""
    import transformers
    from transformers import PretrainedConfig

    from evalkit.models.baichuan import known_architectures

    what = "tokenizer" if "Tokenizer" in getattr(loader, "__name__", "") else "model"
    line = (str(exc).strip().splitlines() or [""])[0]
    message = (
        f"the {what} of {source.location!r} failed to load with --trust-remote-code (its repository "
        f"code, under transformers {transformers.__version__}): {type(exc).__name__}: {line}"
    )
    try:
        config, _ = PretrainedConfig.get_config_dict(source.location)
    except (OSError, ValueError):
        config = {}
    tokenizer_file = Path(source.location) / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_file.read_text()) if tokenizer_file.is_file() else {}
    known = known_architectures(config, tokenizer_config)
    if known:
        message += (
            f"; {' / '.join(known)} is an architecture evalkit runs natively: pass its local "
            f"checkpoint directory, without --trust-remote-code"
        )
    return EvalkitError(message)


def _from_pretrained(loader: Any, source: ModelSource, **kwargs: Any) -> Any:
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    _require_hub(source)
    try:
        return loader.from_pretrained(source.location, **kwargs)
    except Exception as exc:  # remote code may raise anything: one error naming what failed
        if kwargs.get("trust_remote_code") and not isinstance(exc, OSError):
            raise _remote_code_error(loader, source, exc) from exc
        # ImportError: a quantized checkpoint's kernels; ValueError: a config or checkpoint transformers
        # refuses (unknown model type, code it would have to run without --trust-remote-code)
        if not isinstance(exc, (OSError, ImportError, ValueError)):
            raise
        reason = " ".join(str(exc).split())  # transformers' messages span lines; `error:` is one
        raise EvalkitError(f"could not load {source.location!r}{_hub_hint(source)}: {reason}") from exc


def _load_dense(source: ModelSource, **kwargs: Any) -> Any:
    """A float model to quantize: a GGUF file is dequantized, even where transformers could keep it packed."""
    from transformers import AutoModelForCausalLM, GgufConfig

    if source.gguf_file:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return _from_pretrained(AutoModelForCausalLM, source, **kwargs)


def _load_quantized_on_load(
    source: ModelSource, plan: QuantPlan, placement: str | dict, **kwargs: Any
) -> Any:
    """bitsandbytes and pre-quantized checkpoints: transformers quantizes (or reads) weight by weight."""
    from transformers import AutoModelForCausalLM

    if plan.backend == "bnb":
        kwargs["quantization_config"] = bnb_config(plan)
    if not source.gguf_file:
        return _from_pretrained(AutoModelForCausalLM, source, device_map=placement, **kwargs)
    # transformers refuses quantization_config with gguf_file: dequantize the GGUF once, save it as a
    # safetensors checkpoint in a temporary directory, and let bitsandbytes quantize that
    with tempfile.TemporaryDirectory(prefix="evalkit-gguf-") as staging:
        dense = _load_dense(source, dtype=kwargs["dtype"], trust_remote_code=kwargs["trust_remote_code"])
        dense.save_pretrained(staging)
        del dense
        return _from_pretrained(
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
            return _from_pretrained(AutoModelForCausalLM, source, device_map=device_map, **kwargs), plan
        return _from_pretrained(AutoModelForCausalLM, source, **kwargs).to(target), plan
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


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def load_model(
    model: str,
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
    from transformers import AutoTokenizer

    source = resolve_source(model)
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
        if native is not None:  # never the repository's code, whatever trust_remote_code says
            from evalkit.models.baichuan import load_baichuan
            from evalkit.models.baichuan_tokenizer import load_baichuan_tokenizer

            tokenizer = load_baichuan_tokenizer(source.location)
            network = load_baichuan(source.location, native, plan.compute_dtype)
            network, plan = _quantize_loaded(network, plan, target)
        else:
            tokenizer = _from_pretrained(AutoTokenizer, source, trust_remote_code=trust_remote_code)
            network, plan = _load_network(source, plan, target, trust_remote_code, device_map)
        network.eval()
        load_seconds = time.perf_counter() - started
    quantized, floating = linear_layer_report(network)
    planned = plan.info()
    llm_int8 = any(type(module).__name__ == "Linear8bitLt" for module in network.modules())
    if planned["activation_quantization"] is None and llm_int8:  # built by a model's own quantize()
        planned["activation_quantization"] = LLM_INT8_ACTIVATIONS
    info = ModelInfo(
        **planned,
        dtype=str(plan.compute_dtype).removeprefix("torch."),
        device=target,
        device_map=_placement(network) if device_map else None,
        source=source.kind,
        weights_format=_weights_format(source, network),
        quantized_layers=len(quantized),
        skipped_layers=floating if plan.bits else [],  # linear layers left in float by a quantizing backend
        weight_bytes=weight_bytes(network),
        **peak.info(),
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
        # NF4 layers the AVX512-BF16 CPU kernel cannot repack, kept on bitsandbytes' generic path
        nf4_generic_kernel_layers=(
            fit_nf4_cpu_kernel(network) if (plan.backend, plan.bits) == ("bnb", 4) else []
        ),
    )
    return LoadedModel(network, tokenizer, source, info)
