"""The precisions and quantization backends a run may name, torch-free: the CLI declares its flags from
these without importing torch (what each one does is evalkit.models.quant.plans)."""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")  # float precisions (their dtypes: plans)
QUANT_BITS: dict[str, int] = {"int8": 8, "int4": 4}
PRECISIONS: tuple[str, ...] = (*FLOAT_NAMES, *QUANT_BITS)
BACKENDS: tuple[str, ...] = ("none", "bnb", "torchao", "rtn", "model")
QUANT_BACKENDS: tuple[str, ...] = tuple(b for b in BACKENDS if b != "none")  # what --quant-backend takes
DEFAULT_QUANT_BACKEND = "bnb"  # int8/int4 without --quant-backend: LLM.int8 / NF4, on CPU and CUDA alike


@dataclass(frozen=True)
class Prequantized:
    """How the weights on disk are already quantized: a GGUF file type, or a config's quantization_config."""

    kind: str  # "gguf" | "config"
    method: str  # "Q4_1", "gptq", "awq", ...
    bits: int | None = None
    group_size: int | None = None
