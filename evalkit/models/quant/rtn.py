"""evalkit's own round-to-nearest int8/int4 (`--quant-backend rtn`): per-output-channel absmax,
weight-only, of every nn.Linear but the output head; the method of Baichuan's `quantize(bits)`,
usable on any model.
"""

from __future__ import annotations

import torch
from torch import nn

from evalkit.models.quant.plans import linear_targets


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 codes in [-8, 7] two per byte along the last dim: low nibble = even column, as q + 8."""
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    biased = (q.to(torch.int16) + 8).to(torch.uint8)
    return biased[..., 0::2] | (biased[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of pack_int4: int8 codes, the last dim cut back to `width`."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).flatten(-2)[..., :width]


class RTNLinear(nn.Module):
    """A weight-only int8/int4 linear layer: int codes + one fp32 scale per output channel, dequantized per
    call.

    scale = absmax(row) / (2**(bits-1) - 1), computed in the weight's own dtype and then cast to fp32,
    and codes = round(w / scale) (half to even) in fp32: exactly Baichuan's QLinear. Its int4 codes fall
    in [-7, 7] (Baichuan clamps to [-16, 15], which never binds). An all-zero row gets scale 1 instead of
    Baichuan's 0 (whose 0/0 would make NaN codes). int4 codes are stored packed, two per byte.
    """

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"RTNLinear supports 4 or 8 bits, not {bits}")
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        weight = linear.weight.detach()
        qmax = 2 ** (bits - 1) - 1
        scale = (weight.abs().amax(dim=1) / qmax).to(torch.float32)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        codes = torch.round(weight.to(torch.float32) / scale[:, None]).clamp_(-qmax, qmax).to(torch.int8)
        self.register_buffer("qweight", pack_int4(codes) if bits == 4 else codes)
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def codes(self) -> torch.Tensor:
        """The int8 codes, shape (out_features, in_features)."""
        return unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        # codes and scale cast to the activation dtype before the product, as Baichuan's forward does
        return self.codes().to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def quantize_rtn(model: nn.Module, bits: int) -> nn.Module:
    """Replace every nn.Linear but the output head by an RTNLinear, in place."""
    for name, linear in linear_targets(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, RTNLinear(linear, bits))
    return model
