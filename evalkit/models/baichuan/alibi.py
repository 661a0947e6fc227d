"""Baichuan-13B's ALiBi as tensors: head slopes and the additive attention bias built from position ids.

Built from `position_ids`, not from row positions, so rows packed after a cached prefix see exactly
the bias of their lone forward; computed in fp32 and rounded once to the forward's dtype, as the
original's `future_mask`.
"""

from __future__ import annotations

import math
from functools import cache

import torch


@cache
def alibi_slopes(n_heads: int) -> tuple[float, ...]:
    """ALiBi head slopes: 2**(-8/n) to the powers 1..n for a power of two n; otherwise those of the
    power of two below, then every other slope of the power of two above (Press et al.)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return tuple(power_of_two(n_heads))
    below = 2 ** math.floor(math.log2(n_heads))
    return tuple(power_of_two(below) + list(alibi_slopes(2 * below)[0::2][: n_heads - below]))


def _additive_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int, device: torch.device
) -> torch.Tensor:
    """An fp32 (batch or 1, 1, q, past+q) additive mask: 0 where a query may attend, -inf elsewhere.

    A 4D mask is taken as given (float: additive; bool: True = attend). A 2D mask (batch, past+q)
    of 1/0 is combined with the causal rule; None is causal only.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            zero = torch.zeros((), device=device)
            return torch.where(attention_mask, zero, torch.tensor(float("-inf"), device=device))
        return attention_mask.to(torch.float32)
    kv_len = past + q_len
    query_index = torch.arange(q_len, device=device)[:, None] + past  # (q, 1)
    allowed = torch.arange(kv_len, device=device)[None, :] <= query_index  # (q, kv)
    allowed = allowed[None, None]  # (1, 1, q, kv)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].to(torch.bool)  # (batch, 1, q, kv)
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
    return mask.masked_fill_(~allowed, float("-inf"))


def alibi_bias(
    n_heads: int,
    position_ids: torch.Tensor,
    past: int,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The additive attention bias (batch, heads, q, past+q) of Baichuan's ALiBi, in `dtype`.

    bias[b, h, i, j] = slope_h * key_position[b, j] + mask[b, i, j], computed in fp32 and rounded
    to `dtype` once, as the original's `future_mask` (fp32, then `.to(dtype)`). Key positions are
    0..past-1 for cached keys, then the current tokens' `position_ids`: a suffix packed after a
    cached prefix with its own position_ids sees exactly the bias of its lone forward.
    """
    batch, q_len = position_ids.shape
    device = position_ids.device
    cached = torch.arange(past, device=device).expand(batch, past)
    key_positions = torch.cat([cached, position_ids], dim=1).to(torch.float32)  # (batch, kv)
    slopes = torch.tensor(alibi_slopes(n_heads), dtype=torch.float32, device=device)  # (heads,)
    bias = slopes[None, :, None, None] * key_positions[:, None, None, :]  # (batch, heads, 1, kv)
    mask = _additive_mask(attention_mask, batch, q_len, past, device)  # (batch or 1, 1, q, kv)
    # -inf -> finfo.min: a fully masked row (a left pad) stays finite under sdpa, as under the
    # original's clamp of the scores at finfo.min
    return (bias + mask).to(dtype).clamp_min_(torch.finfo(dtype).min)  # (batch, heads, q, kv)
