"""The library quantization backends: bitsandbytes (through transformers, or swapped in for a model
transformers did not load), torchao, and a model's own `quantize(bits)`. What each does and when it
is allowed is decided in evalkit.models.quant.plans (`plan_quantization`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from evalkit.models.quant.plans import (
    LLM_INT8_THRESHOLD,
    NF4_BLOCK,
    TORCHAO_INT4_GROUPS,
    QuantPlan,
    linear_targets,
)
from evalkit.types import EvalkitError


def bnb_config(plan: QuantPlan) -> Any:
    """The transformers BitsAndBytesConfig of a bnb plan (lm_head is left in float by transformers)."""
    from transformers import BitsAndBytesConfig

    if plan.bits == 8:
        _quiet_int8_cast_notice()
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=LLM_INT8_THRESHOLD)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=plan.compute_dtype,
        bnb_4bit_use_double_quant=False,
    )


BNB_CPU_PACK_ROWS = 32  # bitsandbytes' AVX512-BF16 NF4 kernel repacks weights in blocks of 32 output rows


def fit_nf4_cpu_kernel(model: nn.Module) -> list[str]:
    """Keep NF4 layers whose shape the fast CPU kernel cannot take on bitsandbytes' generic path.

    On a CPU with AVX512-BF16, bitsandbytes (0.48+) repacks each 4-bit weight at its first forward; that
    needs the output features to divide by 32 and the input features by the quantization block (64):
    a 2-layer llama with 48-wide layers and 24-wide k/v projections fails with "N must be divisible by
    block_n" or a reshape error. Those layers keep the generic dequantize-and-matmul path, which takes
    every shape bitsandbytes quantizes; the names of the layers so kept are returned.
    """
    kept = []
    for name, module in model.named_modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        block = getattr(getattr(module.weight, "quant_state", None), "blocksize", NF4_BLOCK)
        if module.out_features % BNB_CPU_PACK_ROWS or module.in_features % block:
            module.support_avx512bf16_for_cpu = False
            kept.append(name)
    return kept


def nf4_cpu_kernel_layers(model: nn.Module) -> list[str]:
    """The NF4 layers bitsandbytes runs on its AVX512-BF16 CPU kernel (a CPU that has it, a shape it
    takes). That kernel casts its input and scales to bf16 whatever the compute dtype asked for: those
    matmuls run in bf16, and a forward's results move like a bf16 model's (0.2 log-prob on SmolLM2 between
    a prompt alone and the same prompt beside padding, where fp32 moves 2e-5)."""
    return [
        name for name, module in model.named_modules() if getattr(module, "support_avx512bf16_for_cpu", False)
    ]


class _DropInt8CastNotice(logging.Filter):
    """LLM.int8 logs this for every layer on every forward whose input is not fp16: thousands of lines
    per run. The cast is its design and is recorded once, as `activation_quantization` in the info."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_notice() -> None:
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastNotice) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropInt8CastNotice())


def quantize_torchao(model: nn.Module, plan: QuantPlan) -> QuantPlan:
    """Quantize in place with torchao; returns the plan with the int4 group size fitted to the model."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    targets = linear_targets(model)
    if plan.bits == 8:
        config: Any = Int8WeightOnlyConfig()
    else:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        widths = {m.in_features for m in targets.values()}
        # the largest group dividing every input width; layers it cannot divide stay float and are reported
        group = next(
            (g for g in TORCHAO_INT4_GROUPS if all(w % g == 0 for w in widths)), TORCHAO_INT4_GROUPS[-1]
        )
        config, plan = PrototypeInt4WeightOnlyConfig(group_size=group), replace(plan, group_size=group)
    quantize_(model, config, filter_fn=lambda module, fqn: fqn in targets)
    return plan


def quantize_bnb_modules(
    model: nn.Module,
    bits: int,
    compute_dtype: torch.dtype | None = None,
    double_quant: bool = False,
    device: str = "cpu",
) -> nn.Module:
    """bitsandbytes layers in place of every nn.Linear but the output head, in place, for a model that
    transformers did not load (evalkit.models): LLM.int8 (outlier threshold 6.0) or NF4 in blocks of
    64, the layers transformers' bnb integration builds; each weight is quantized as it moves to
    `device`. `double_quant` quantizes the NF4 block scales too (Baichuan2's own quantize)."""
    import bitsandbytes as bnb

    for name, linear in linear_targets(model).items():
        bias = linear.bias is not None
        if bits == 8:
            _quiet_int8_cast_notice()
            layer: nn.Module = bnb.nn.Linear8bitLt(
                linear.in_features,
                linear.out_features,
                bias=bias,
                has_fp16_weights=False,
                threshold=LLM_INT8_THRESHOLD,
            )
            layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(
                linear.in_features,
                linear.out_features,
                bias=bias,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type="nf4",
            )
            layer.weight = bnb.nn.Params4bit(
                linear.weight.data,
                requires_grad=False,
                blocksize=NF4_BLOCK,
                compress_statistics=double_quant,
                quant_type="nf4",
            )
        if bias:
            layer.bias = linear.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.to(device))
    return model


def quantize_with_model_code(model: nn.Module, bits: int) -> nn.Module:
    """Call the checkpoint's own `quantize(bits)` (Baichuan's returns the model, quantized in place)."""
    method = getattr(model, "quantize", None)
    if not callable(method):
        raise EvalkitError(
            f"--quant-backend model: {type(model).__name__} has no quantize(bits) method; "
            f"use --quant-backend rtn (per-channel absmax, the method of Baichuan's quantize) "
            f"or bnb"
        )
    result = method(bits)
    return result if isinstance(result, nn.Module) else model
