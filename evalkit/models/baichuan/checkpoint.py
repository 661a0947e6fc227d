"""Recognising a Baichuan checkpoint and reading its weights, without running any of its code.

The variant (Baichuan-7B / 13B, Baichuan2-7B / 13B) is read from config.json and from the remote
modeling file read as text, never imported; the weights from safetensors or from pytorch_model*.bin
with `weights_only=True` (no pickled code runs), then renamed for evalkit.models.baichuan.model's network
(`W_pack` split into q/k/v for RoPE, NormHead rows normalised).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig

from evalkit.types import EvalkitError

BAICHUAN2_VOCAB = 125696  # Baichuan2's real vocabulary (Baichuan-7B/13B: 64000)


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
# Weights


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


def convert_state_dict(
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
