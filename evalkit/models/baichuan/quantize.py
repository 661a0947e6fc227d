"""Baichuan's own `quantize(bits)`, re-implemented: Baichuan-13B's QLinear (per-output-channel absmax,
int8 transposed, int4 packed eight codes per int32); Baichuan2's bitsandbytes layers (LLM.int8, or NF4
with double quantization); Baichuan-7B has none (`quantize_refusal`).
"""

from __future__ import annotations

import torch
from torch import nn

from evalkit.models.baichuan.checkpoint import BaichuanVariant
from evalkit.models.quant.libraries import quantize_bnb_modules
from evalkit.types import EvalkitError


class BaichuanQLinear(nn.Module):
    """Baichuan-13B's QLinear: one fp32 absmax scale per output row, weight-only, no bias.

    scale = absmax(row) / (2**(bits-1) - 1), in the weight's dtype, then fp32; codes =
    round(w / scale) in fp32. int8 codes are held transposed (in, out); int4 codes are clipped to
    [-16, 15] and packed eight per int32 (code 8j+k in bits 4k..4k+3). The forward casts codes and
    scale to the input dtype and multiplies, as the original's int8 path and int4 kernel do.
    """

    def __init__(self, weight: torch.Tensor, bits: int) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise EvalkitError(f"Baichuan's quantize takes 4 or 8 bits, not {bits}")
        self.quant_bits, self.out_features, self.in_features = bits, weight.shape[0], weight.shape[1]
        weight = weight.detach()
        scale = (weight.abs().max(dim=-1).values / (2 ** (bits - 1) - 1)).to(torch.float32)
        if bits == 8:
            codes = torch.round(weight.to(torch.float32) / scale[:, None]).to(torch.int8)
            packed = codes.T
        else:
            if self.in_features % 8:
                raise EvalkitError(
                    f"Baichuan's int4 packing needs input widths divisible by 8, not {self.in_features}"
                )
            codes = torch.round(weight.to(torch.float32) / scale[:, None])
            codes = torch.clip(codes, -16, 15).to(torch.int32)
            nibbles = (codes & 0x0F).to(torch.int64).view(self.out_features, -1, 8)  # (out, in/8, 8)
            shifts = torch.arange(0, 32, 4, dtype=torch.int64)  # code 8j+k -> bits 4k..4k+3
            packed = (nibbles << shifts).sum(dim=-1)  # the eight nibbles never overlap
            packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)  # (out, in/8)
        self.register_buffer("weight", packed)
        self.register_buffer("scale", scale)
        self.bias = None

    def codes(self) -> torch.Tensor:
        """The integer codes, (out_features, in_features), int32."""
        if self.quant_bits == 8:
            return self.weight.T.to(torch.int32)
        shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=self.weight.device)
        nibbles = (self.weight[..., None] >> shifts) & 0x0F  # (out, in/8, 8)
        return torch.where(nibbles >= 8, nibbles - 16, nibbles).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_bits == 8:
            return torch.matmul(x, self.weight.to(x.dtype) * self.scale.to(x.dtype))
        weight = self.codes().to(x.dtype) * self.scale.to(x.dtype)[:, None]  # (out, in)
        return torch.matmul(x, weight.T)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.quant_bits}"


QUANTIZED_LAYERS = ("self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj")


def quantize_refusal(variant: BaichuanVariant | None) -> str | None:
    """Why `--quant-backend model` cannot run on this variant, or None where it can."""
    if variant is not None and variant.name != "Baichuan-7B":
        return None
    name = variant.name if variant else "this model"
    return (
        f"--quant-backend model on {name}: its repository code has no quantize method; use "
        f"--quant-backend rtn (per-channel absmax, Baichuan-13B's quantize method), bnb or torchao"
    )


def quantize_baichuan(model: nn.Module, bits: int) -> nn.Module:
    """The checkpoint's own `quantize(bits)`, natively, for a network of evalkit.models.baichuan.model;
    the model is quantized in place."""
    variant = model.baichuan_variant
    refusal = quantize_refusal(variant)
    if refusal:
        raise EvalkitError(refusal)
    if variant.name.startswith("Baichuan2"):  # its quantizer.py: bitsandbytes, "online"
        # LLM.int8 (threshold 6.0, int8 weights) or NF4 with double-quantized block scales,
        # computing in the activations' dtype (the model's), on all linear layers but the head;
        # quantized as they move to CPU here (the original: at its `.cuda()`), then moved on
        return quantize_bnb_modules(model, bits, compute_dtype=model.dtype, double_quant=True, device="cpu")
    for layer in model.model.layers:
        for name in QUANTIZED_LAYERS:
            parent, _, child = name.rpartition(".")
            module = layer.get_submodule(parent)
            setattr(module, child, BaichuanQLinear(getattr(module, child).weight, bits))
    return model
