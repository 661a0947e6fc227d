"""Precision plans and quantization backends: which combinations run, how each one quantizes, what it records.

`--precision` fp32 | bf16 | fp16 loads float weights (no backend). int8 | int4 need a backend:
  bnb      (default) bitsandbytes through transformers, the same format on CPU and CUDA. int8 is
           LLM.int8: int8 weights with one absmax scale per output row, and activations quantized too
           (per token, through fp16) with input columns holding an |x| above 6.0 kept in fp16.
           int4 is NF4 in blocks of 64 weights, no double quantization.
  torchao  int8 weight-only, one scale per output channel; int4 weight-only (CPU only: torchao's
           prototype opaque-packed kernel, asymmetric groups of 128/64/32 inputs), bf16 compute.
  rtn      ours: per-output-channel absmax round-to-nearest, weight-only, of every nn.Linear but the
           output head. The method of Baichuan's `quantize(bits)` (which produced its published
           int8/int4 rows), usable on any model.
  model    the checkpoint's own `quantize(bits)`, run under trust_remote_code; for architectures
           evalkit runs natively (Baichuan, evalkit.models) its re-implementation, no remote code.
Compute dtype (activations and whatever stays float): fp16 on CUDA, as Baichuan loads before it
quantizes; fp32 on CPU, where fp16 matmuls are several times slower; bf16 for torchao int4; fp16 for
`model` (Baichuan's int4 kernel accepts fp16/bf16 only). Every choice is recorded in the model info.
Pre-quantized inputs: a checkpoint whose config carries `quantization_config` (GPTQ, AWQ, ...) runs as
it comes at its own bit width and is never re-quantized. transformers dequantizes a GGUF file to
float on load (it keeps the blocks packed only where the `kernels` package has a matmul for them;
`weights_format` says which), so GGUF runs as it comes at a float precision; int8/int4 of a GGUF
quantize the dequantized floats a second time: allowed, and labelled `requantized_from`.
This module holds the plan and what every backend shares (which layers are targets, which came out
quantized); the backends live in evalkit.models.quant.libraries (bnb, torchao, model) and
evalkit.models.quant.rtn (rtn).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from evalkit.models.quant.choices import (
    BACKENDS,
    DEFAULT_QUANT_BACKEND,
    FLOAT_NAMES,
    PRECISIONS,
    QUANT_BACKENDS,
    QUANT_BITS,
    Prequantized,
)
from evalkit.types import EvalkitError, unknown

FLOAT_PRECISIONS: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
assert tuple(FLOAT_PRECISIONS) == FLOAT_NAMES
__all__ = ["DEFAULT_QUANT_BACKEND", "PRECISIONS", "QUANT_BACKENDS", "QUANT_BITS", "Prequantized"]
NF4_BLOCK = 64  # bitsandbytes' default 4-bit block size
TORCHAO_INT4_GROUPS = (128, 64, 32)  # the group sizes torchao's CPU int4 kernel accepts, largest first
METHODS: dict[tuple[str, int], str] = {
    ("bnb", 8): "LLM.int8",
    ("bnb", 4): "NF4",
    ("torchao", 8): "int8-weight-only-per-channel",
    ("torchao", 4): "int4-weight-only-asymmetric-groups",
    ("rtn", 8): "rtn-absmax-per-channel",
    ("rtn", 4): "rtn-absmax-per-channel",
    ("model", 8): "model.quantize(8)",
    ("model", 4): "model.quantize(4)",
}
LLM_INT8_THRESHOLD = 6.0  # bitsandbytes' default outlier threshold, kept
LLM_INT8_ACTIVATIONS = (
    f"int8 per token, cast through fp16; input columns holding |x| > "
    f"{LLM_INT8_THRESHOLD} stay fp16 (LLM.int8 mixed decomposition)"
)


@dataclass(frozen=True)
class QuantPlan:
    """Everything decided before a model is loaded: checked up front, recorded in run.json."""

    precision: str
    backend: str  # one of BACKENDS, or "pre-quantized"
    bits: int | None
    method: str
    group_size: int | None  # None: one scale per output channel (or no quantization)
    compute_dtype: torch.dtype
    source_quantization: Prequantized | None = None

    @property
    def compute_dtype_name(self) -> str:
        return str(self.compute_dtype).removeprefix("torch.")

    @property
    def activation_quantization(self) -> str | None:
        """How the plan quantizes activations (LLM.int8), None: it does not."""
        return LLM_INT8_ACTIVATIONS if (self.backend, self.bits) == ("bnb", 8) else None

    @property
    def source_label(self) -> str | None:
        """The checkpoint's own quantization, e.g. "gguf Q4_1"; None: float weights on disk."""
        source = self.source_quantization
        return f"{source.kind} {source.method}" if source else None

    @property
    def requantized_from(self) -> str | None:
        """The checkpoint's quantization, where this plan quantizes its dequantized floats again."""
        return self.source_label if self.backend not in ("none", "pre-quantized") else None


def _error(precision: str, backend: str | None, why: str) -> EvalkitError:
    return EvalkitError(f"--precision {precision} with --quant-backend {backend or '(default)'}: {why}")


def _require(module: str, precision: str, backend: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise _error(precision, backend, f"{module} is not installed; install it with `pip install {module}`")


def plan_quantization(
    precision: str,
    backend: str | None,
    device: str,
    prequantized: Prequantized | None,
    trust_remote_code: bool,
    native_quantize: bool = False,
) -> QuantPlan:
    """Decide backend, method and compute dtype, or refuse a combination that cannot run (see module doc).

    `native_quantize`: the model is one of evalkit's native ports, whose `quantize(bits)` is ours, so
    `--quant-backend model` needs no `--trust-remote-code`.
    """
    if precision not in PRECISIONS:
        raise unknown("precision", precision, PRECISIONS)
    if backend is not None and backend not in BACKENDS:
        raise unknown("quant backend", backend, BACKENDS)
    on_cuda = device.startswith("cuda")
    if prequantized and prequantized.kind == "config":
        return _plan_prequantized(precision, backend, prequantized)
    if precision in FLOAT_PRECISIONS:
        if backend not in (None, "none"):
            raise _error(
                precision,
                backend,
                f"{precision} is a float precision and {backend} would ignore "
                f"it; a quant backend applies to {' and '.join(QUANT_BITS)} only",
            )
        return QuantPlan(precision, "none", None, "none", None, FLOAT_PRECISIONS[precision], prequantized)
    bits, backend = QUANT_BITS[precision], backend or DEFAULT_QUANT_BACKEND
    compute = torch.float16 if on_cuda else torch.float32
    group = None
    if backend == "none":
        raise _error(
            precision,
            backend,
            f"{precision} needs a quantization backend; valid: {', '.join(QUANT_BACKENDS)}",
        )
    if backend == "bnb":
        _require("bitsandbytes", precision, backend)
        group = NF4_BLOCK if bits == 4 else None
    elif backend == "torchao":
        if bits == 4 and on_cuda:
            raise _error(
                precision,
                backend,
                "torchao int4 is wired for CPU only (its prototype "
                "opaque-packed kernel); on CUDA use --quant-backend bnb (NF4) or rtn",
            )
        _require("torchao", precision, backend)
        if bits == 4:
            compute = torch.bfloat16  # the group size is fitted to the model's shapes on load
    elif backend == "model":
        if not (trust_remote_code or native_quantize):
            raise _error(
                precision,
                backend,
                "calling the model's own quantize(bits) runs its repository "
                "code; pass --trust-remote-code, or use --quant-backend rtn (the same per-channel "
                "absmax method)",
            )
        compute = torch.float16
    return QuantPlan(precision, backend, bits, METHODS[backend, bits], group, compute, prequantized)


def _plan_prequantized(precision: str, backend: str | None, source: Prequantized) -> QuantPlan:
    wanted = f"int{source.bits}" if source.bits in (4, 8) else None
    if backend not in (None, "none"):
        raise _error(
            precision,
            backend,
            f"the checkpoint is already quantized ({source.method}); it is "
            f"evaluated as it comes, never re-quantized: drop --quant-backend",
        )
    if wanted and precision != wanted:
        raise _error(
            precision,
            backend,
            f"the checkpoint is already quantized ({source.method}, "
            f"{source.bits}-bit); pass --precision {wanted} to evaluate it as it comes",
        )
    bits = QUANT_BITS.get(precision) or source.bits
    return QuantPlan(
        precision, "pre-quantized", bits, source.method, source.group_size, torch.float16, source
    )


def output_head_name(model: nn.Module) -> str | None:
    """The module name of the output embeddings (lm_head): every backend leaves it in float."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return next((name for name, module in model.named_modules() if module is head), None)


def linear_targets(model: nn.Module) -> dict[str, nn.Linear]:
    head = output_head_name(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != head}


def _is_plain_float(tensor: torch.Tensor) -> bool:
    return type(tensor) in (torch.Tensor, nn.Parameter) and tensor.is_floating_point()


def linear_layer_report(model: nn.Module) -> tuple[list[str], list[str]]:
    """(quantized, float) layer names, read from the loaded model: nothing is assumed from the backend.

    Quantized: a module holding a `qweight` tensor (ours, GPTQ, AWQ) or a `weight` that is an integer
    tensor or a tensor subclass (bitsandbytes, torchao, Baichuan's QLinear). Float: an nn.Linear whose
    weight is a plain float tensor (lm_head; layers a backend could not quantize).
    """
    quantized, floating = [], []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(getattr(module, "qweight", None), torch.Tensor) or (
            isinstance(weight, torch.Tensor) and not _is_plain_float(weight)
        ):
            quantized.append(name)
        elif isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
            floating.append(name)
    return quantized, floating
