"""The scoring engine: fp32 log-softmax over the four letter ids after each token-id prompt.

Speed comes from shared-prefix KV reuse. The prompts of a subject share their header and shots, so
the engine groups prompts by their longest common token prefix (the plan: evalkit.batching), runs
each prefix once (batch 1) and scores every question's remaining tokens against its KV cache:
- `packed` (transformers-native models with sdpa/eager attention): several suffixes in ONE row after
  the prefix, a 4D mask letting each suffix see the prefix and itself, positions continuing from the
  prefix; the prefix cache is never replicated.
- `rows` (other models, e.g. remote code with legacy tuple caches): right-padded rows, the prefix
  cache repeated per row.
Before trusting a model with either, a probe scores two prompts of the first group with it and the
second one also by a plain forward; a model that fails (an error or a disagreement) falls back,
logged once per Scorer: packed -> rows -> plain. Plain batching is right-padded full prompts, sorted
by length: with causal attention real tokens never see pads, so no attention mask is needed and
results equal one forward per prompt.
`isolated` (models that quantize activations per forward, as LLM.int8 does: which columns count as
outliers depends on every token in the forward) scores one whole prompt per forward, as the official
batch-1 scripts do; anything else would make a question's scores depend on its neighbours.
"""
from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

import torch
from tqdm import tqdm
from transformers import Cache

from evalkit.batching import prefix_groups, split_batches
from evalkit.types import EvalkitError

LOG = logging.getLogger(__name__)
CPU_BATCH_TOKENS = 4096  # a CPU forward is compute-bound: larger batches are not faster, only bigger
AUTO_MIN_SHARE = 0.3  # engine="auto" reuses prefixes when they save this fraction of all tokens
# suffix tokens per packed row: on CPU (compute-bound) 256 balances GEMM efficiency against the
# attention a row spends across its neighbours' tokens; accelerators want larger matrices (untested guess)
PACK_TOKENS = {"cpu": 256, "other": 1024}
# The probe's bound on a log-prob's difference from a lone forward (1e-3 for other dtypes: fp32
# rounding moves it ~1e-5). A 16-bit letter logit of magnitude 16-32 is rounded to steps of 2^-6
# (fp16) or 2^-3 (bf16), and another order of the same arithmetic moves it by a step or two: on
# SmolLM2 bf16 (CMMLU) the prefix forms differed by 0.16-0.19, where a 0.1 bound threw them out.
PROBE_TOLERANCE = {torch.float16: 0.1, torch.bfloat16: 0.5}
Scores = tuple[float, float, float, float]


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
    per_token = elem * (2 * layers * kv * (hidden // heads) + 8 * hidden + 3 * getattr(cfg, "intermediate_size", 4 * hidden))
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        per_token += 4 * cfg.vocab_size
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(max(free // 3 // per_token, 1024), 131072))


def _keep_mode(model) -> str:
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


def _fork(cache, rows: int):
    """A cache for one batch that leaves the prefix cache intact (updates concatenate into new tensors)."""
    if isinstance(cache, Cache):
        fork = copy.copy(cache)
        fork.layers = [copy.copy(layer) for layer in cache.layers]
        if rows > 1:
            fork.batch_repeat_interleave(rows)
        return fork
    if rows == 1:
        return cache
    # legacy tuples: the batch is the outer factor of dim 0 in every layout seen ((B,H,T,D), Baichuan's (B*H,..))
    return tuple(tuple(t.repeat(rows, *[1] * (t.dim() - 1)) for t in layer) for layer in cache)


class Scorer:
    """Scores token-id prompts: the fp32 log-softmax over the four letter ids after each prompt's last token.

    `batch_tokens` bounds each forward: rows x padded length, the reused prefix counted in every row
    (packed rows: prefix + their suffixes). Results do not depend on it beyond float rounding (~1e-5).
    `isolated`: one prompt per forward, no prefix reuse (see the module docstring).
    """

    def __init__(self, model, letter_ids: Sequence[int], *, batch_tokens: int | None = None,
                 engine: Literal["auto", "prefix", "plain"] = "auto", progress: bool = True, isolated: bool = False):
        if engine not in ("auto", "prefix", "plain"):
            raise EvalkitError(f"unknown engine {engine!r}; valid: auto, prefix, plain")
        if len(letter_ids) != 4 or len(set(letter_ids)) != 4:
            raise EvalkitError(f"need four distinct letter ids, got {list(letter_ids)}")
        if batch_tokens is not None and batch_tokens < 1:
            raise EvalkitError(f"--batch-tokens must be positive, got {batch_tokens}")
        embeddings = model.get_input_embeddings().weight
        self.model, self.device, self.engine, self.progress = model, embeddings.device, engine, progress
        self.dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        self.letter_ids = torch.tensor(list(letter_ids), device=self.device)
        self.batch_tokens = batch_tokens or default_batch_tokens(model)
        self.engine_used = ""  # "prefix" | "plain" | "isolated" once score() has run
        self._keep = _keep_mode(model)
        native = type(model).__module__.startswith("transformers.")
        packable = native and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")
        self._candidates = ["packed", "rows"] if packable else ["rows"]
        self._mode: str | None = None  # the verified reuse mode, settled by the first probe
        self.isolated = isolated
        if isolated and engine == "prefix":
            LOG.warning("this model quantizes activations per forward: --engine prefix would make scores depend on "
                        "the other tokens in a forward; scoring one prompt per forward instead")

    def score(self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
              ) -> Iterator[tuple[int, Scores]]:
        """Yield (index, log-probs) one question at a time, in the order of `score_batches`."""
        for batch in self.score_batches(token_ids, only):
            yield from batch

    def score_batches(self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
                      ) -> Iterator[list[tuple[int, Scores]]]:
        """Yield each batch's [(index, log-probs)] as soon as it is done (the runner writes one batch at
        a time). `only` limits what is computed and yielded; the plan (groups, batches) always comes
        from all of `token_ids`, so a resumed run is bit-identical."""
        seqs = [list(s) for s in token_ids]
        todo = set(range(len(seqs))) if only is None else set(only)
        if any(not 0 <= i < len(seqs) for i in todo):
            raise EvalkitError(f"indices to score out of range 0..{len(seqs) - 1}: {sorted(todo)[:5]}...")
        if empty := [i for i, s in enumerate(seqs) if not s]:
            raise EvalkitError(f"prompts {empty[:5]} have no tokens")
        if not todo:
            return
        groups = prefix_groups(seqs) if self.engine != "plain" and not self.isolated else []
        if self.engine == "auto" and sum((len(m) - 1) * p for p, m in groups) < AUTO_MIN_SHARE * sum(map(len, seqs)):
            groups = []
        cache, cached = None, None  # one group's prefix cache at a time: its batches are consecutive
        if groups and self._mode is None:
            self._mode, cache = self._probe(seqs, groups[0])
            cached = seqs[groups[0][1][0]][: groups[0][0]]
        groups = groups if self._mode != "plain" else []
        self.engine_used = "prefix" if groups else "isolated" if self.isolated else "plain"
        plan = [(p, b) for p, m in groups for b in self._batches(seqs, p, m, self._mode)]
        grouped = {i for _, members in groups for i in members}
        plan += [(0, b) for b in self._batches(seqs, 0, [i for i in range(len(seqs)) if i not in grouped], "plain")]
        with tqdm(total=len(todo), disable=not self.progress, desc="scoring", unit="q") as bar:
            for prefix, batch in plan:
                if todo.isdisjoint(batch):
                    continue
                if prefix and cached != seqs[batch[0]][:prefix]:
                    cached = seqs[batch[0]][:prefix]
                    cache = self._prefix_cache(cached)
                results = self._batch(seqs, batch, prefix, cache, self._mode if prefix else "plain")
                yield [(i, scores) for i, scores in zip(batch, results) if i in todo]
                bar.update(len(todo.intersection(batch)))

    def _batches(self, seqs: list[list[int]], prefix: int, members: list[int], mode: str | None) -> list[list[int]]:
        """Split a group (or, prefix 0, the plainly scored rest) into forwards within the token budget,
        longest first (an out-of-memory error shows at once; similar lengths pad little)."""
        order = sorted(members, key=lambda i: (-len(seqs[i]), i))
        if self.isolated:
            return [[i] for i in order]
        if mode != "packed":  # rows x padded length, the prefix counted in each row
            return split_batches([(i, len(seqs[i])) for i in order], self.batch_tokens, packed=False)
        cap = min(PACK_TOKENS["cpu" if self.device.type == "cpu" else "other"], self.batch_tokens - prefix)
        return split_batches([(i, len(seqs[i]) - prefix) for i in order], cap, packed=True)

    def _probe(self, seqs: list[list[int]], group: tuple[int, list[int]]) -> tuple[str, object]:
        """The first reuse mode that this model runs and that agrees with a plain forward, with the
        group's prefix cache. Scored together, a group's longest and shortest prompts show padding,
        packing and length effects in the shortest (second) one, checked against its own forward."""
        prefix, members = group
        batch = sorted(members, key=lambda i: (-len(seqs[i]), i))[:: len(members) - 1]
        expected = self._batch(seqs, batch[-1:], 0, None, "plain")[0]
        tolerance = PROBE_TOLERANCE.get(self.dtype, 1e-3)
        for mode in self._candidates:
            try:
                cache = self._prefix_cache(seqs[batch[0]][:prefix])
                got = self._batch(seqs, batch, prefix, cache, mode)[-1]
            except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as err:
                LOG.warning("prefix reuse (%s) fails on %s: %s", mode, type(self.model).__name__, err)
                continue
            diff = max(abs(a - b) for a, b in zip(got, expected))
            if diff <= tolerance:
                return mode, cache
            LOG.warning("prefix reuse (%s) disagrees with a plain forward on %s by %.3g log-prob",
                        mode, type(self.model).__name__, diff)
        LOG.warning("%s cannot reuse a prefix KV cache: scoring with plain batches", type(self.model).__name__)
        return "plain", None

    @torch.inference_mode()
    def _prefix_cache(self, tokens: list[int]):
        out = self._forward({"input_ids": torch.tensor([tokens]), "use_cache": True,
                             **({"logits_to_keep": 1} if self._keep != "full" else {})})
        if out.past_key_values is None:
            raise RuntimeError("the model returned no KV cache")
        return out.past_key_values

    @torch.inference_mode()
    def _batch(self, seqs: list[list[int]], batch: list[int], prefix: int, cache, mode: str) -> list[Scores]:
        """One forward: log-softmax over the letters after the last token of each prompt in `batch`."""
        letters = self._letters(seqs, batch, prefix, cache, mode)
        finite = torch.isfinite(letters).all(dim=-1)
        if not finite.all():
            bad = [batch[k] for k in torch.nonzero(~finite).flatten().tolist()]
            if len(batch) > 1 or prefix:  # a NaN spreads through a shared row or prefix: blame who fails alone
                bad = [i for i in bad if not torch.isfinite(self._letters(seqs, [i], 0, None, "plain")).all()] or bad
            raise EvalkitError(f"non-finite logits (nan/inf) over the letter tokens for prompt index(es) {bad}")
        return [tuple(row) for row in torch.log_softmax(letters, dim=-1).tolist()]

    def _letters(self, seqs: list[list[int]], batch: list[int], prefix: int, cache, mode: str) -> torch.Tensor:
        """fp32 letter logits (len(batch) x 4) of one forward in `mode` (plain, rows or packed)."""
        suffixes = [seqs[i][prefix:] for i in batch]
        if mode == "packed":
            inputs, positions = self._packed(suffixes, prefix, cache)
        else:
            width = max(map(len, suffixes))
            ids = torch.zeros(len(suffixes), width, dtype=torch.long)  # right padding: no mask needed
            for row, suffix in enumerate(suffixes):
                ids[row, : len(suffix)] = torch.tensor(suffix)
            inputs = {"input_ids": ids}
            if mode == "rows":
                inputs.update(past_key_values=_fork(cache, len(suffixes)), use_cache=True)
            positions = torch.tensor([[len(s) - 1] for s in suffixes])
        return self._letter_logits(inputs, positions).reshape(-1, 4)

    def _packed(self, suffixes: list[list[int]], prefix: int, cache) -> tuple[dict, torch.Tensor]:
        """One row of suffixes after the prefix; each sees the prefix and its own earlier tokens only."""
        lengths = torch.tensor([len(s) for s in suffixes])
        total = int(lengths.sum())
        segment = torch.repeat_interleave(torch.arange(len(suffixes)), lengths)
        ends = torch.cumsum(lengths, 0)
        step = torch.arange(total)
        allowed = (segment[:, None] == segment[None, :]) & (step[:, None] >= step[None, :])
        mask = torch.zeros(total, prefix + total, dtype=self.dtype)
        mask[:, prefix:].masked_fill_(~allowed, torch.finfo(self.dtype).min)
        inputs = {"input_ids": torch.tensor([[t for s in suffixes for t in s]]), "attention_mask": mask[None, None],
                  "position_ids": (prefix + step - (ends - lengths)[segment])[None],
                  "past_key_values": _fork(cache, 1), "use_cache": True}
        return inputs, (ends - 1)[None]

    def _letter_logits(self, inputs: dict, positions: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the four letters at `positions` (rows x k) of this forward."""
        width = inputs["input_ids"].shape[1]
        cols = torch.arange(positions.shape[1]).expand_as(positions)
        if self._keep == "2d":
            inputs["logits_to_keep"] = positions
        elif self._keep == "1d":
            inputs["logits_to_keep"], cols = torch.unique(positions, return_inverse=True)
        elif self._keep == "int":
            keep = width - int(positions.min())
            inputs["logits_to_keep"], cols = keep, positions - (width - keep)
        else:
            cols = positions
        logits = self._forward(inputs).logits[..., self.letter_ids]
        return logits.gather(1, cols.to(logits.device)[..., None].expand(-1, -1, 4)).float()

    def _forward(self, inputs: dict):
        """The model's own forward on its device; out-of-memory becomes an error naming --batch-tokens."""
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        try:
            return self.model(**inputs)
        except RuntimeError as err:
            if isinstance(err, torch.cuda.OutOfMemoryError) or "not enough memory" in str(err):
                raise EvalkitError(f"out of memory with --batch-tokens {self.batch_tokens}: "
                                   f"lower --batch-tokens ({err})") from err
            raise
