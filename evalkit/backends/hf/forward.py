"""What the prefix engine (evalkit.backends.hf.scorer) reads from a transformers model and how it hands it
inputs: the forward's argument names and logits_to_keep form, the attention kinds a packed row can
reproduce, a CUDA token budget, forks of a prefix KV cache, and the inputs of one packed row or of
right-padded rows.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch
from transformers import Cache

CPU_BATCH_TOKENS = 4096  # a CPU forward is compute-bound: larger batches are not faster, only bigger


def default_batch_tokens(model) -> int:
    """CPU: CPU_BATCH_TOKENS. CUDA: a third of the free memory over an estimate of one token's bytes
    (its KV over all layers, a few activations, its logits where a model lacks logits_to_keep)."""
    device = model.get_input_embeddings().weight.device
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    cfg = model.config.get_text_config()
    hidden, layers = cfg.hidden_size, cfg.num_hidden_layers
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    elem = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 2
    intermediate = getattr(cfg, "intermediate_size", 4 * hidden)
    per_token = elem * (2 * layers * kv * (hidden // heads) + 8 * hidden + 3 * intermediate)
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        per_token += 4 * cfg.vocab_size
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(max(free // 3 // per_token, 1024), 131072))


def keep_mode(model) -> str:
    """How to ask the forward for the last-token logits only (no full-vocabulary projection everywhere).

    "2d": per-row positions (transformers versions whose `slice_logits_to_keep` takes them);
    "1d": distinct positions for every row (native models since 4.49); "int": the last K positions
    (remote code that has the argument, and models spread over devices, where a positions tensor could
    sit on the wrong one); "full": all logits (remote code without it).
    """
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return "full"
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1  # last hidden states: device unknown
    if spread or not type(model).__module__.startswith("transformers."):
        return "int"
    from transformers import modeling_utils

    slicer = getattr(modeling_utils, "slice_logits_to_keep", None)
    if slicer is not None and slicer(torch.zeros(2, 3, 1), torch.tensor([[2], [0]])).shape == (2, 1, 1):
        return "2d"
    return "1d"


def keep_logits(keep: str, inputs: dict, positions: torch.Tensor) -> torch.Tensor:
    """Ask the forward in `inputs` for the logits at `positions` (rows x k) only, in the `keep` form
    (keep_mode), and return where each of them lands in the logits it returns (rows x k)."""
    width = inputs["input_ids"].shape[1]
    if keep == "2d":
        inputs["logits_to_keep"] = positions
        return torch.arange(positions.shape[1]).expand_as(positions)
    if keep == "1d":
        inputs["logits_to_keep"], cols = torch.unique(positions, return_inverse=True)
        return cols
    if keep == "int":
        kept = width - int(positions.min())
        inputs["logits_to_keep"] = kept
        return positions - (width - kept)
    return positions


def cache_argument(model) -> str | None:
    """The forward's name for a KV cache: `cache` (transformers >= 5.24, where `past_key_values` is
    deprecated), `past_key_values` (older versions, remote code, and a forward taking **kwargs), or
    None where it takes neither."""
    parameters = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return "past_key_values"
    return None


def returned_cache(out):
    """The KV cache of a forward's output, read under the name its output class declares."""
    fields = getattr(out, "__dataclass_fields__", {})
    return getattr(out, "cache" if "cache" in fields else "past_key_values", None)


def attention_kinds(model) -> dict[str, int | None] | str:
    """The attention kinds of a model's layers ({layer type: sliding window or None}) that a packed
    row can reproduce with a custom 4D mask, or the reason it cannot.

    A 4D mask given to a transformers model is used as it is, in every layer of its kind: the model no
    longer applies sliding windows itself, so the mask must carry them. One kind takes one 4D mask;
    full and sliding layers mixed (`layer_types`) take {layer type: mask}, as those models index it.
    ALiBi models (Bloom, Falcon with alibi, MPT) build their bias from a 2D mask over key indices: a
    packed row would give each suffix's keys another bias than its own forward gives them.
    """
    if not type(model).__module__.startswith(("transformers.", "evalkit.models.")):
        return f"{type(model).__module__} is neither transformers nor evalkit.models code"
    cfg = model.config.get_text_config()
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager"):
        return f"attention {implementation!r} takes no custom 4D mask (needs sdpa or eager)"
    alibi = cfg.model_type in ("bloom", "mpt") or getattr(cfg, "alibi", False) is True
    if alibi and type(model).__module__.startswith("transformers."):
        return "transformers builds its ALiBi bias from a 2D mask over key indices"
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return "its forward takes no position_ids"
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or ["sliding_attention" if window else "full_attention"]
    if not set(types) <= {"full_attention", "sliding_attention"}:
        return f"layer types {sorted(set(types))} (only full and sliding attention can be packed)"
    if "sliding_attention" in types and not isinstance(window, int):
        return f"sliding layers without an integer sliding_window ({window!r})"
    return {kind: window if kind == "sliding_attention" else None for kind in dict.fromkeys(types)}


def fork_cache(cache, rows: int):
    """A cache for one batch that leaves the prefix cache intact (updates concatenate into new tensors)."""
    if isinstance(cache, Cache):
        fork = copy.copy(cache)
        fork.layers = [copy.copy(layer) for layer in cache.layers]
        if rows > 1:
            fork.batch_repeat_interleave(rows)
        return fork
    if rows == 1:
        return cache
    # legacy tuples: the batch is the outer factor of dim 0 in every layout seen ((B,H,T,D), Baichuan's
    # (B*H,..))
    return tuple(tuple(t.repeat(rows, *[1] * (t.dim() - 1)) for t in layer) for layer in cache)


def shared_start(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def packed_inputs(
    suffixes: list[list[int]],
    prefix: int,
    cache,
    kinds: dict[str, int | None],
    dtype: torch.dtype,
    cache_name: str,
) -> tuple[dict, torch.Tensor]:
    """The forward's inputs for one row of suffixes after the prefix, and the packed index of each
    suffix's last token (1 x k). Each suffix sees the prefix and its own earlier tokens only, at the
    positions of its own forward, and in sliding layers only the keys within their window (`kinds`:
    {layer type: sliding window or None}, see attention_kinds); `dtype` is the mask's.

    Leading tokens a suffix shares with its lexicographic predecessor in the row are packed once (the row
    is a trie): the four option rotations of a question (--permute cyclic) run its text once. A shared
    token has the same position and the same earlier tokens in every suffix that holds it, so its keys
    and values are those of each suffix's own forward."""
    ids: list[int] = []  # packed tokens
    parent: list[int] = []  # packed index of each token's previous token in its suffix; -1: the first
    steps: list[int] = []  # each token's index within its suffix
    last = [0] * len(suffixes)
    previous: list[int] = []
    previous_at: list[int] = []  # packed index of each token of the previous suffix
    for k in sorted(range(len(suffixes)), key=lambda k: suffixes[k]):
        suffix = suffixes[k]
        shared = shared_start(previous, suffix)
        at = previous_at[:shared]
        for j in range(shared, len(suffix)):
            parent.append(at[j - 1] if j else -1)
            steps.append(j)
            at.append(len(ids))
            ids.append(suffix[j])
        last[k] = at[-1]
        previous, previous_at = suffix, at
    total = len(ids)
    own = torch.zeros(total, total, dtype=torch.bool)  # (total, total): a token sees its suffix's path
    for i in range(total):  # a parent is packed before its children
        if parent[i] >= 0:
            own[i] = own[parent[i]]
        own[i, i] = True
    positions = prefix + torch.tensor(steps)  # (total,) each token's position in its own prompt
    seen = torch.cat([torch.ones(total, prefix, dtype=torch.bool), own], dim=1)  # (total, prefix + total)
    keys = torch.cat([torch.arange(prefix), positions])  # (prefix + total,) position of every key
    masks = {}
    for kind, window in kinds.items():
        allowed = seen if window is None else seen & (positions[:, None] - keys[None, :] < window)
        mask = torch.zeros(total, prefix + total, dtype=dtype)
        masks[kind] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]  # (1, 1, q, k)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": next(iter(masks.values())) if len(masks) == 1 else masks,
        "position_ids": positions[None],
        cache_name: fork_cache(cache, 1),
        "use_cache": True,
    }
    return inputs, torch.tensor(last)[None]


def padded_inputs(suffixes: list[list[int]], cache, cache_name: str | None) -> tuple[dict, torch.Tensor]:
    """The forward's inputs for right-padded rows of suffixes (after their own fork of the prefix
    `cache`; full prompts where it is None), and each row's last-token index (rows x 1). With causal
    attention real tokens never see the pads, so no mask is needed."""
    width = max(map(len, suffixes))
    ids = torch.zeros(len(suffixes), width, dtype=torch.long)  # (rows, width)
    for row, suffix in enumerate(suffixes):
        ids[row, : len(suffix)] = torch.tensor(suffix)
    inputs = {"input_ids": ids}
    if cache is not None:
        inputs.update({cache_name: fork_cache(cache, len(suffixes)), "use_cache": True})
    return inputs, torch.tensor([[len(s) - 1] for s in suffixes])


def to_device(value, device):
    """Tensors (also those in a {layer type: mask} mapping) moved to `device`; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
