"""Baichuan-7B, Baichuan-13B, Baichuan2-7B and Baichuan2-13B, native: their hub code is never run.

The hub's remote code is broken under transformers 5 (tokenizer, stream-generator import, NaN RoPE
buffers, a 13B attention that takes one cached token at a time). The four variants are one network
with two switches, read from the checkpoint (`detect_variant`):
  positions  RoPE (Baichuan-7B, Baichuan2-7B): exactly Llama, the fused `W_pack` split into q/k/v
             at load time. ALiBi (the 13Bs): Llama's blocks with `W_pack` kept fused and the
             rotary embedding replaced by an additive bias `slope_h * key_position` (see
             `alibi_bias`), built from `position_ids`, so packed rows after a cached prefix are exact.
  head       Linear, or Baichuan2's NormHead: lm_head rows L2-normalised once, in the model dtype
             (the original normalises in place at its first eval forward, after the dtype cast).
Numerics follow the original forwards: the ALiBi bias is computed in fp32 and rounded to the
forward's dtype (its `future_mask`), added to scores in that dtype, clamped at finfo.min, and the
softmax runs in that dtype (eager; sdpa is accepted but rounds differently in bf16). Baichuan-7B is
Llama's eager path exactly (softmax in fp32); Baichuan2-7B rotates q/k in fp32 and uses sdpa, as
its code does. Cached keys sit at positions 0..past-1 (a cache built by plain forwards).
Works on transformers 5.17 to 5.24+: the KV cache's name (`cache` from 5.24, `past_key_values`
before) is read from the installed classes (`CACHE_ARGUMENT`, `_OUTPUT_CACHE`, `_LAYER_CACHE`), and
the forwards take either name on either version (5.24's own deprecation shim, or `_renamed`).
`quantize(bits)` is the checkpoint's own method, re-implemented: Baichuan-13B's QLinear (per-output
-channel absmax, int8 transposed, int4 packed eight codes per int32); Baichuan2's bitsandbytes layers
(LLM.int8, or NF4 with double quantization); Baichuan-7B has none.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    eager_attention_forward,
    rotate_half,
)
from transformers.utils.deprecation import deprecate_kwarg

from evalkit.types import EvalkitError

__all__ = [
    "CACHE_ARGUMENT",
    "NATIVE_ARCHITECTURES",
    "BaichuanAlibiForCausalLM",
    "BaichuanQLinear",
    "BaichuanRopeForCausalLM",
    "BaichuanVariant",
    "alibi_bias",
    "alibi_slopes",
    "class_names",
    "detect_variant",
    "known_architectures",
    "load_baichuan",
    "quantize_refusal",
    "read_state_dict",
]

BAICHUAN2_VOCAB = 125696  # Baichuan2's real vocabulary (Baichuan-7B/13B: 64000)


# ----------------------------------------------------------------------------------------------------
# The installed transformers' name for the KV cache (5.24 renamed past_key_values to cache)


def _cache_name(function: Callable) -> str:
    """`cache` where a forward of the installed transformers takes it, else `past_key_values`
    (inspect.signature sees through the deprecation decorator to the real parameters)."""
    return "cache" if "cache" in inspect.signature(function).parameters else "past_key_values"


CACHE_ARGUMENT = _cache_name(LlamaModel.forward)  # what LlamaForCausalLM passes to LlamaModel
_LAYER_CACHE = _cache_name(LlamaDecoderLayer.forward)  # what a decoder layer takes and hands self_attn
_OUTPUT_CACHE = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _renamed(old: str, new: str) -> Callable[[Callable], Callable]:
    """A forward that also takes `old=` for its `new=` argument, silently (signature unchanged).

    Both given: the one that is not None; both not None is an error.
    """

    def decorate(forward: Callable) -> Callable:
        @functools.wraps(forward)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                value = kwargs.pop(old)
                if value is not None and kwargs.get(new) is not None:
                    raise TypeError(f"{forward.__qualname__}: pass one of `{new}` and `{old}`, not both")
                if value is not None or new not in kwargs:
                    kwargs[new] = value
            return forward(*args, **kwargs)

        return wrapped

    return decorate


def _the_cache(cache: Any, past_key_values: Any) -> Any:
    """The one KV cache an attention was given, under either name."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise TypeError("an attention was given two KV caches (`cache` and `past_key_values`)")
    return cache if cache is not None else past_key_values


if CACHE_ARGUMENT == "cache":  # transformers >= 5.24: its own shim (a FutureWarning from 5.40)
    _model_cache_keyword = deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
else:  # older: LlamaForCausalLM hands past_key_values= to the model
    _model_cache_keyword = _renamed("past_key_values", "cache")


# ----------------------------------------------------------------------------------------------------
# Recognising a checkpoint


@dataclass(frozen=True)
class BaichuanVariant:
    """Which Baichuan network a checkpoint holds, and the evidence the decision was read from."""

    name: str  # "Baichuan-7B" | "Baichuan-13B" | "Baichuan2-7B" | "Baichuan2-13B"
    positions: str  # "rope" | "alibi"
    norm_head: bool  # Baichuan2's L2-normalised lm_head rows
    evidence: str  # e.g. "config architectures BaichuanForCausalLM; modeling_baichuan.py (read, not run)"

    @property
    def label(self) -> str:
        parts = ["RoPE" if self.positions == "rope" else "ALiBi", "W_pack"]
        if self.norm_head:
            parts.append("NormHead")
        return f"{self.name} ({', '.join(parts)})"

    @property
    def implementation(self) -> str:
        return f"evalkit.models.baichuan: {self.label}"


NATIVE_ARCHITECTURES = {
    "BaiChuanForCausalLM": "Baichuan-7B",  # class names in config.json / auto_map
    "BaichuanForCausalLM": "Baichuan-13B / Baichuan2",
}


def known_architectures(config: dict, tokenizer_config: dict) -> list[str]:
    """The Baichuan families a config.json / tokenizer_config.json name (for error messages)."""
    names = class_names(config)
    tokenizer = tokenizer_config.get("tokenizer_class")
    auto = (tokenizer_config.get("auto_map") or {}).get("AutoTokenizer") or [None]
    for name in (tokenizer, auto[0] if isinstance(auto, list) else auto):
        if isinstance(name, str):
            names.append(name.rpartition(".")[2].replace("Tokenizer", "ForCausalLM"))
    return sorted({NATIVE_ARCHITECTURES[name] for name in names if name in NATIVE_ARCHITECTURES})


def class_names(config: dict) -> list[str]:
    """The model class names a config.json declares: `architectures` and auto_map's causal-LM class."""
    names = list(config.get("architectures") or [])
    auto = (config.get("auto_map") or {}).get("AutoModelForCausalLM")
    if isinstance(auto, str):
        names.append(auto.rpartition(".")[2])
    return names


def _modeling_source(directory: Path, config: dict) -> tuple[str, str] | None:
    """The text of the remote modeling file (read as text, never imported), with its name."""
    auto = (config.get("auto_map") or {}).get("AutoModelForCausalLM")
    module = auto.rpartition(".")[0] if isinstance(auto, str) and "--" not in auto else "modeling_baichuan"
    path = directory / f"{module}.py"
    return (path.read_text(errors="replace"), path.name) if path.is_file() else None


def detect_variant(directory: str | Path) -> BaichuanVariant | None:
    """The Baichuan variant of a checkpoint directory, or None when it is not a Baichuan checkpoint.

    `BaiChuanForCausalLM` is Baichuan-7B. `BaichuanForCausalLM` is Baichuan-13B, Baichuan2-7B or
    Baichuan2-13B: positions and head are read from the remote modeling file's text when present
    (a rotary embedding class vs the ALiBi slope helper; a `NormHead` class), else from the config
    (Baichuan2-7B's config has `max_position_embeddings`, the 13B configs only `model_max_length`;
    Baichuan2 configs have the 125696 vocabulary, `z_loss_weight` or `tokenizer_class`).
    """
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    names = class_names(config)
    if "BaiChuanForCausalLM" in names:
        return BaichuanVariant("Baichuan-7B", "rope", False, "config names BaiChuanForCausalLM")
    if "BaichuanForCausalLM" not in names:
        return None
    evidence = ["config names BaichuanForCausalLM"]
    positions = norm_head = None
    source = _modeling_source(directory, config)
    if source is not None:
        text, name = source
        rope, alibi = "RotaryEmbedding" in text, "_get_interleave" in text or "alibi" in text.lower()
        if rope != alibi:
            positions = "rope" if rope else "alibi"
        norm_head = "class NormHead" in text
        evidence.append(f"{name} read as text (not run)")
    if positions is None:
        positions = "rope" if "max_position_embeddings" in config else "alibi"
        evidence.append("positions from config (max_position_embeddings: RoPE)")
    if norm_head is None:
        norm_head = (
            config.get("vocab_size") == BAICHUAN2_VOCAB
            or "z_loss_weight" in config
            or "tokenizer_class" in config
        )
        evidence.append("head from config")
    family = "Baichuan2" if norm_head else "Baichuan"
    size = "7B" if positions == "rope" else "13B"
    return BaichuanVariant(f"{family}-{size}", positions, norm_head, "; ".join(evidence))


# ----------------------------------------------------------------------------------------------------
# ALiBi


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


class BaichuanAlibiAttention(nn.Module):
    """Self-attention with the fused W_pack projection and an additive ALiBi bias (no rotary)."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.hidden_size, self.num_heads = config.hidden_size, config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.W_pack = nn.Linear(self.hidden_size, 3 * self.hidden_size, bias=False)
        self.o_proj = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        cache = _the_cache(cache, past_key_values)  # the decoder layer's name: see _LAYER_CACHE
        batch, q_len, _ = hidden_states.shape
        proj = self.W_pack(hidden_states).view(batch, q_len, 3, self.num_heads, self.head_dim)
        query, key, value = proj.permute(2, 0, 3, 1, 4)  # each (batch, heads, q, head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)  # (batch, heads, kv, head_dim)
        if self.config._attn_implementation == "sdpa":
            out = nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, scale=1.0 / math.sqrt(self.head_dim)
            )
        else:  # the original's order of operations, every step in the forward's dtype
            scores = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(self.head_dim)  # (b, h, q, kv)
            if attention_mask is not None:
                scores = scores + attention_mask
                scores = torch.max(scores, torch.tensor(torch.finfo(scores.dtype).min, device=scores.device))
            out = torch.matmul(nn.functional.softmax(scores, dim=-1), value)  # (b, h, q, head_dim)
        out = out.transpose(1, 2).reshape(batch, q_len, self.hidden_size)
        return self.o_proj(out), None


class BaichuanAlibiDecoderLayer(LlamaDecoderLayer):
    """Llama's block (RMSNorm, SwiGLU MLP, residuals) around the ALiBi attention."""

    def __init__(self, config: LlamaConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.self_attn = BaichuanAlibiAttention(config, layer_idx)


class BaichuanAlibiModel(LlamaModel):
    def __init__(self, config: LlamaConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.padding_idx, self.vocab_size = config.pad_token_id, config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        layers = [BaichuanAlibiDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @_model_cache_keyword
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        batch, q_len = inputs_embeds.shape[:2]
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(q_len, device=inputs_embeds.device)[None] + past
        position_ids = position_ids.expand(batch, q_len)
        bias = alibi_bias(
            self.config.num_attention_heads, position_ids, past, attention_mask, inputs_embeds.dtype
        )  # (batch, heads, q, past+q)
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=bias,
                position_ids=position_ids,
                use_cache=use_cache,
                **{_LAYER_CACHE: cache},
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), **{_OUTPUT_CACHE: cache})


# ----------------------------------------------------------------------------------------------------
# The checkpoint's own quantize(bits), re-implemented


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


class _BaichuanMixin:
    """What the two network classes share: the variant they were built for and its quantize(bits)."""

    baichuan_variant: BaichuanVariant | None = None

    if CACHE_ARGUMENT == "past_key_values":  # transformers < 5.24: take 5.24's `cache=` as well (the
        # stock forward would leave it in **kwargs, unused); the signature stays LlamaForCausalLM's
        forward = _renamed("cache", "past_key_values")(LlamaForCausalLM.forward)

    def quantize(self, bits: int) -> nn.Module:
        """The checkpoint's own `quantize(bits)`, natively; the model is quantized in place."""
        variant = self.baichuan_variant
        refusal = quantize_refusal(variant)
        if refusal:
            raise EvalkitError(refusal)
        if variant.name.startswith("Baichuan2"):  # its quantizer.py: bitsandbytes, "online"
            # LLM.int8 (threshold 6.0, int8 weights) or NF4 with double-quantized block scales,
            # computing in the activations' dtype (the model's), on all linear layers but the head;
            # quantized as they move to CPU here (the original: at its `.cuda()`), then moved on
            from evalkit.models.quantize import quantize_bnb_modules

            return quantize_bnb_modules(self, bits, compute_dtype=self.dtype, double_quant=True, device="cpu")
        for layer in self.model.layers:
            for name in QUANTIZED_LAYERS:
                parent, _, child = name.rpartition(".")
                module = layer.get_submodule(parent)
                setattr(module, child, BaichuanQLinear(getattr(module, child).weight, bits))
        return self


# ----------------------------------------------------------------------------------------------------
# RoPE in fp32 (Baichuan2-7B)


class Fp32RotaryEmbedding(LlamaRotaryEmbedding):
    """Llama's cos/sin, left in fp32 (Llama casts them to the activations' dtype)."""

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(torch.empty(0, dtype=torch.float32, device=x.device), position_ids)


class Fp32RopeAttention(LlamaAttention):
    """Llama's attention with the rotation computed in fp32 and cast back, as Baichuan2-7B's
    `apply_rotary_pos_emb` does (`q.float() * cos + rotate_half(q.float()) * sin`, fp32 cos/sin);
    Baichuan-7B rotates in the activations' dtype, as Llama."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache = _the_cache(cache, past_key_values)  # the decoder layer's name: see _LAYER_CACHE
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (b, heads, q, head_dim)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = (t.unsqueeze(1) for t in position_embeddings)  # fp32 (b, 1, q, head_dim)
        query = (query.float() * cos + rotate_half(query.float()) * sin).to(value.dtype)
        key = (key.float() * cos + rotate_half(key.float()) * sin).to(value.dtype)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        implementation = self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        out, weights = attention(
            self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs
        )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


class BaichuanRopeForCausalLM(_BaichuanMixin, LlamaForCausalLM):
    """Baichuan-7B and Baichuan2-7B: Llama with `W_pack` split into q/k/v at load time;
    `config.baichuan_rope_fp32` (Baichuan2-7B) rotates in fp32."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        if getattr(config, "baichuan_rope_fp32", False):
            for i, layer in enumerate(self.model.layers):
                layer.self_attn = Fp32RopeAttention(config, i)


class BaichuanAlibiForCausalLM(_BaichuanMixin, LlamaForCausalLM):
    """Baichuan-13B and Baichuan2-13B: Llama's blocks with the ALiBi attention (W_pack kept fused)."""

    def __init__(self, config: LlamaConfig) -> None:
        LlamaPreTrainedModel.__init__(self, config)
        self.model = BaichuanAlibiModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


# ----------------------------------------------------------------------------------------------------
# Loading


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin, tensors only (`weights_only`: no pickled code runs); memory-mapped
    where the file is in torch's zip format (every checkpoint since torch 1.6)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors: safetensors (single or sharded) first, else pytorch_model*.bin read
    with `weights_only=True` (no pickle code runs)."""
    directory = Path(directory)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        files = (
            sorted(set(json.loads(index.read_text())["weight_map"].values()))
            if index.is_file()
            else [single]
            if (directory / single).is_file()
            else []
        )
        if not files:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in files:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                state.update(load_file(directory / name))
            else:
                state.update(_load_bin(directory / name))
        return state
    raise EvalkitError(
        f"no weights in {directory}: expected model.safetensors or pytorch_model.bin "
        f"(optionally sharded, with its index.json)"
    )


def llama_config(config: dict, variant: BaichuanVariant, attn_implementation: str) -> LlamaConfig:
    """The LlamaConfig of a Baichuan config.json (all heads are key/value heads; RoPE base 10000)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if hidden % heads:
        raise EvalkitError(f"{variant.name}: hidden_size {hidden} is not divisible by {heads} heads")
    out = LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act=config.get("hidden_act", "silu"),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        max_position_embeddings=config.get("max_position_embeddings") or config.get("model_max_length", 4096),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 0),
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        use_cache=True,
    )
    out._attn_implementation = attn_implementation
    return out


def _convert(
    state: dict[str, torch.Tensor], variant: BaichuanVariant, hidden: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors -> our module names, in `dtype`: W_pack split for RoPE, rotary buffers
    dropped (recomputed), NormHead rows normalised after the cast (in the model dtype)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        tensor = tensor.to(dtype)
        if variant.positions == "rope" and name.endswith("self_attn.W_pack.weight"):
            stem = name.removesuffix("W_pack.weight")
            if tensor.shape[0] != 3 * hidden:
                raise EvalkitError(
                    f"{name} has shape {tuple(tensor.shape)}, expected ({3 * hidden}, {hidden})"
                )
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0), strict=True):
                out[f"{stem}{proj}.weight"] = part.contiguous()
            continue
        if name == "lm_head.weight" and variant.norm_head:
            tensor = nn.functional.normalize(tensor)  # in the model dtype, as the original's in-place step
        out[name] = tensor
    return out


def load_baichuan(
    directory: str | Path,
    variant: BaichuanVariant,
    dtype: torch.dtype,
    attn_implementation: str | None = None,
) -> nn.Module:
    """Build the variant's network on the meta device and assign the checkpoint's tensors to it.

    Attention as the original computes it unless `attn_implementation` says otherwise: eager (the
    7B and 13B code multiply and softmax explicitly), sdpa for Baichuan2-7B (its code calls
    `scaled_dot_product_attention`).
    """
    if attn_implementation is None:
        attn_implementation = "sdpa" if variant.name == "Baichuan2-7B" else "eager"
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if config.get("quantization_config"):
        raise EvalkitError(
            f"{directory} is a pre-quantized Baichuan checkpoint "
            f"({config['quantization_config'].get('quant_method', 'bitsandbytes')}); "
            f"evalkit runs Baichuan natively from float weights only"
        )
    llama = llama_config(config, variant, attn_implementation)
    llama.baichuan_rope_fp32 = variant.name == "Baichuan2-7B"
    cls = BaichuanRopeForCausalLM if variant.positions == "rope" else BaichuanAlibiForCausalLM
    with torch.device("meta"):
        network = cls(llama)
    state = _convert(read_state_dict(directory), variant, llama.hidden_size, dtype)
    expected = set(network.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise EvalkitError(
            f"{variant.name} weights in {directory} do not fit the network: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    network.load_state_dict(state, strict=True, assign=True)
    if variant.positions == "rope":  # non-persistent buffers: computed here, never read from the checkpoint
        rotary = Fp32RotaryEmbedding if llama.baichuan_rope_fp32 else LlamaRotaryEmbedding
        network.model.rotary_emb = rotary(config=llama)
    left = [name for name, t in (*network.named_parameters(), *network.named_buffers()) if t.is_meta]
    if left:
        raise EvalkitError(f"{variant.name}: tensors left uninitialised after loading: {left[:5]}")
    network.baichuan_variant = variant
    network.config.dtype = dtype
    network.name_or_path = str(directory)
    return network.eval()
