"""Baichuan-7B, Baichuan-13B, Baichuan2-7B and Baichuan2-13B, native: their hub code is never run.

The hub's remote code is broken under transformers 5 (tokenizer, stream-generator import, NaN RoPE
buffers, a 13B attention that takes one cached token at a time). The four variants are one network
with two switches, read from the checkpoint (`detect_variant`, evalkit.models.baichuan.checkpoint):
  positions  RoPE (Baichuan-7B, Baichuan2-7B): exactly Llama, the fused `W_pack` split into q/k/v
             at load time. ALiBi (the 13Bs): Llama's blocks with `W_pack` kept fused and the
             rotary embedding replaced by an additive bias `slope_h * key_position` (see
             `alibi_bias`, evalkit.models.baichuan.alibi), built from `position_ids`, so packed
             rows after a cached prefix are exact.
  head       Linear, or Baichuan2's NormHead: lm_head rows L2-normalised once, in the model dtype
             (the original normalises in place at its first eval forward, after the dtype cast).
Numerics follow the original forwards: the ALiBi bias is computed in fp32 and rounded to the
forward's dtype (its `future_mask`), added to scores in that dtype, clamped at finfo.min, and the
softmax runs in that dtype (eager; sdpa is accepted but rounds differently in bf16). Baichuan-7B is
Llama's eager path exactly (softmax in fp32); Baichuan2-7B rotates q/k in fp32 and uses sdpa, as
its code does. Cached keys sit at positions 0..past-1 (a cache built by plain forwards).
Works on transformers 5.17 to 5.24+: the KV cache's name is read from the installed classes
(evalkit.models.cache_names). `quantize(bits)` is the checkpoint's own method, re-implemented in
evalkit.models.baichuan.quantize.
"""

from __future__ import annotations

import json
import math
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

from evalkit.models.baichuan.alibi import alibi_bias
from evalkit.models.baichuan.checkpoint import (
    BaichuanVariant,
    convert_state_dict,
    llama_config,
    read_state_dict,
)
from evalkit.models.baichuan.quantize import quantize_baichuan
from evalkit.models.cache_names import (
    CACHE_ARGUMENT,
    LAYER_CACHE,
    OUTPUT_CACHE,
    model_cache_keyword,
    renamed_kwarg,
    the_cache,
)
from evalkit.types import EvalkitError

__all__ = ["BaichuanAlibiForCausalLM", "BaichuanRopeForCausalLM", "load_baichuan"]


# ----------------------------------------------------------------------------------------------------
# ALiBi attention


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
        cache = the_cache(cache, past_key_values)  # the decoder layer's name: see LAYER_CACHE
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

    @model_cache_keyword
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
                **{LAYER_CACHE: cache},
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), **{OUTPUT_CACHE: cache})


class _BaichuanMixin:
    """What the two network classes share: the variant they were built for and its quantize(bits)."""

    baichuan_variant: BaichuanVariant | None = None

    if CACHE_ARGUMENT == "past_key_values":  # transformers < 5.24: take 5.24's `cache=` as well (the
        # stock forward would leave it in **kwargs, unused); the signature stays LlamaForCausalLM's
        forward = renamed_kwarg("cache", "past_key_values")(LlamaForCausalLM.forward)

    def quantize(self, bits: int) -> nn.Module:
        """The checkpoint's own `quantize(bits)`, natively (evalkit.models.baichuan.quantize)."""
        return quantize_baichuan(self, bits)


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
        cache = the_cache(cache, past_key_values)  # the decoder layer's name: see LAYER_CACHE
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
    state = convert_state_dict(read_state_dict(directory), variant, llama.hidden_size, dtype)
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
