"""The model under a generation benchmark: fixed-length prompts, a greedy `generate` forced to exactly
N new tokens (eager, or a static cache compiled by transformers), and the bytes one decode step reads.

The timers and the figures' definitions are in evalkit.bench.hf_bench.
"""

from __future__ import annotations

from typing import Any

import torch

from evalkit.models.loading import LoadedModel
from evalkit.types import EvalkitError

# Natural text tiled to exactly P tokens: all rows identical, so no padding enters the timing.
PROMPT_TEXT = "The following are multiple choice questions (with answers) about abstract algebra. "


def prompt_ids(tokenizer: Any, prompt_tokens: int, batch_size: int) -> torch.Tensor:
    """B identical rows of exactly P tokens: the tokenizer's own specials, then PROMPT_TEXT tiled."""
    ids = list(tokenizer(PROMPT_TEXT)["input_ids"])
    body = list(tokenizer(PROMPT_TEXT, add_special_tokens=False)["input_ids"])
    while len(ids) < prompt_tokens:
        ids += body
    return torch.tensor([ids[:prompt_tokens]] * batch_size, dtype=torch.long)


def _eos_ids(loaded: LoadedModel) -> set[int]:
    configured = loaded.model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({loaded.tokenizer.eos_token_id} - {None})


def generation_kwargs(mode: str, max_cache_len: int, device: str, compile_backend: str = "inductor") -> dict:
    """Eager: transformers' default dynamic cache. Compiled: a static cache of fixed length, so that
    one compiled decode graph serves both timed calls, compiled by generate itself (prefill stays eager)."""
    if mode == "eager":
        return {}
    from transformers import CompileConfig

    on_cuda = device.startswith("cuda")
    config = CompileConfig(backend=compile_backend, mode="reduce-overhead" if on_cuda else "default")
    config._compile_all_devices = not on_cuda  # transformers' documented switch to compile on CPU too
    return {"cache_implementation": "static", "max_cache_len": max_cache_len, "compile_config": config}


def generate_exactly(
    loaded: LoadedModel, input_ids: torch.Tensor, new_tokens: int, **kwargs: Any
) -> torch.Tensor:
    """Greedy `generate` that must return exactly `new_tokens` per row: min = max new tokens masks EOS."""
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(_eos_ids(loaded)), 0)
    with torch.inference_mode():
        return loaded.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=1,
            min_new_tokens=new_tokens,
            max_new_tokens=new_tokens,
            pad_token_id=pad,
            use_cache=True,
            **kwargs,
        )


def check_exact(loaded: LoadedModel, output: torch.Tensor, prompt_tokens: int, new_tokens: int) -> None:
    """Outside the timers: a shorter output or an EOS among the new tokens would make tok/s a lie."""
    made = output[:, prompt_tokens:]
    eos = sorted(_eos_ids(loaded))
    if made.shape[1] != new_tokens or (eos and torch.isin(made, torch.tensor(eos, device=made.device)).any()):
        raise EvalkitError(
            f"{loaded.source.label}: generate made {made.shape[1]} tokens (EOS ids {eos}) "
            f"where exactly {new_tokens} were forced; throughput would be wrong"
        )


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in a KV cache: transformers Cache layers, or legacy nested tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if hasattr(obj, "layers"):
        return sum(_tensor_bytes(layer.keys) + _tensor_bytes(layer.values) for layer in obj.layers)
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(item) for item in obj)
    return 0


def kv_bytes_per_token(loaded: LoadedModel, input_ids: torch.Tensor) -> int:
    """Measured from the cache a real forward returns, so GQA, dtypes and remote code all count right."""
    with torch.inference_mode():
        cache = loaded.model(input_ids=input_ids, use_cache=True).past_key_values
    return _tensor_bytes(cache) // input_ids.numel()


def weight_read_bytes(loaded: LoadedModel) -> int:
    """A decode step reads all weights, except an untied input embedding (only B rows of it)."""
    total = loaded.info.weight_bytes  # real tensor bytes, quantized storage included (evalkit.models.memory)
    emb_in, emb_out = loaded.model.get_input_embeddings(), loaded.model.get_output_embeddings()
    if emb_out is not None and emb_in.weight.data_ptr() == emb_out.weight.data_ptr():
        return int(total)
    return int(total - emb_in.weight.numel() * emb_in.weight.element_size())
