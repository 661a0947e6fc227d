"""The scoring engine: fp32 log-softmax over the four letter ids after each token-id prompt, and the
letters' full-vocabulary log-mass there (one logsumexp over the vocabulary at the answer position only).

Speed comes from shared-prefix KV reuse. The prompts of a subject share their header and shots, so
the engine groups prompts by their longest common token prefix (the plan: evalkit.backends.hf.batching), runs
each prefix once (batch 1) and scores every question's remaining tokens against its KV cache:
- `packed` (transformers or evalkit.models code, sdpa/eager attention, no mask-built ALiBi): several
  suffixes in ONE row after the prefix, each under a 4D mask as in its own forward
  (hf_model.packed_inputs); the prefix cache is never replicated.
- `rows` (other models, e.g. remote code with legacy tuple caches, Bloom/Falcon ALiBi): right-padded
  rows, the prefix cache repeated per row.
Before trusting a model with either, a probe scores the longest and shortest prompts of the first
group with it (and, for a model with a sliding window they do not exceed, a prompt longer than the
window) and compares each with its own plain forward; a mode that raises or disagrees is given up
(logged once per Scorer, kept in `Scorer.fallbacks`): packed -> rows -> plain. Plain batching is
right-padded full prompts, sorted by length: with causal attention real tokens never see pads, so
no attention mask is needed and results equal one forward per prompt.
`isolated` (models that quantize activations per forward, as LLM.int8 does: which columns count as
outliers depends on every token in the forward) scores one whole prompt per forward, as the official
batch-1 scripts do; anything else would make a question's scores depend on its neighbours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Sequence
from typing import get_args

import torch
from tqdm import tqdm
from transformers import DynamicCache

from evalkit.backends.base import LetterScores, NonFiniteLogits, OneByOne
from evalkit.backends.hf import forward as hf_model
from evalkit.backends.hf.batching import Batch, Group, prefix_groups, split_batches
from evalkit.backends.hf.probe import PROBE_TOLERANCE, largest_difference, probe_prompts
from evalkit.store.records import Fallback, ReuseMode
from evalkit.types import EngineChoice, EvalkitError, unknown

LOG = logging.getLogger(__name__)
AUTO_MIN_SHARE = 0.3  # engine="auto" reuses prefixes when they save this fraction of all tokens
# suffix tokens per packed row: on CPU (compute-bound) 256 balances GEMM efficiency against the
# attention a row spends across its neighbours' tokens; accelerators want larger matrices (untested guess)
PACK_TOKENS = {"cpu": 256, "other": 1024}


class Scorer(OneByOne):
    """Scores token-id prompts: the fp32 log-softmax over the four letter ids after each prompt's last token.

    `batch_tokens` bounds each forward: rows x padded length, the reused prefix counted in every row
    (packed rows: prefix + their suffixes). Results do not depend on it beyond float rounding (~1e-5).
    `isolated`: one prompt per forward, no prefix reuse (see the module docstring).
    `mass`: also give each prompt's letter log-mass (LetterScores.log_mass); False only to measure its cost.
    `compute_dtype`: the dtype the matmuls run in (ModelInfo.compute_dtype), which bounds how far the probe
    lets a reuse mode move; default the weights' dtype.

    Public state: `mode` is the reuse mode ("packed" | "rows" | "plain", settled by the first probe;
    "isolated" from the start; None before), `candidates` the modes the probe tries in order, `fallbacks`
    every mode given up with its reason (evalkit.store.records.Fallback; run.json keeps them), `keep` how
    last-token logits are asked for (hf_model.keep_mode), `cache_argument` the forward's name for the
    KV cache, `attention_kinds` {layer type: sliding window or None} of a packable model ({} otherwise).
    """

    def __init__(
        self,
        model,
        letter_ids: Sequence[int],
        *,
        batch_tokens: int | None = None,
        engine: EngineChoice = "auto",
        progress: bool = True,
        isolated: bool = False,
        mass: bool = True,
        compute_dtype: str | None = None,
    ):
        if engine not in get_args(EngineChoice):
            raise unknown("engine", engine, get_args(EngineChoice))
        if len(letter_ids) != 4 or len(set(letter_ids)) != 4:
            raise EvalkitError(f"need four distinct letter ids, got {list(letter_ids)}")
        if batch_tokens is not None and batch_tokens < 1:
            raise EvalkitError(f"--batch-tokens must be positive, got {batch_tokens}")
        embeddings = model.get_input_embeddings().weight
        self.model, self.device, self.engine, self.progress = model, embeddings.device, engine, progress
        self.dtype = embeddings.dtype if embeddings.dtype.is_floating_point else torch.float32
        # the precision the matmuls really run in (ModelInfo.compute_dtype: bf16 for NF4 on bitsandbytes'
        # AVX512-BF16 CPU kernel, under fp32 weights) sets how far the probe lets a reuse mode move
        self.compute_dtype = getattr(torch, compute_dtype) if compute_dtype else self.dtype
        self.letter_ids = torch.tensor(list(letter_ids), device=self.device)
        self.batch_tokens = batch_tokens or hf_model.default_batch_tokens(model)
        self.engine_used = ""  # "prefix" | "plain" | "isolated" once score() has run
        self.engines_used: set[str] = set()  # every engine_used of the last score_subjects
        self.keep = hf_model.keep_mode(model)
        self.cache_argument = hf_model.cache_argument(model)
        self.fallbacks: list[Fallback] = []
        kinds = hf_model.attention_kinds(model)
        self.attention_kinds: dict[str, int | None] = kinds if isinstance(kinds, dict) else {}
        self.candidates: list[str] = ["packed", "rows"] if self.attention_kinds else ["rows"]
        if isinstance(kinds, str):
            self.fallbacks.append(Fallback("packed", "unsupported", kinds))
        if self.cache_argument is None:
            self.candidates = []
            self.fallbacks.append(Fallback("rows", "unsupported", "its forward takes no KV cache argument"))
        self.isolated = isolated
        self.mass = mass
        self.mode: ReuseMode | None = "isolated" if isolated else None
        if isolated and engine == "prefix":
            LOG.warning(
                "this model quantizes activations per forward: --engine prefix would make scores "
                "depend on the other tokens in a forward; scoring one prompt per forward instead"
            )

    @property
    def window(self) -> int | None:
        """The longest sliding window of the model's layers (None: full attention everywhere)."""
        windows = [w for w in self.attention_kinds.values() if w is not None]
        if windows:
            return max(windows)
        window = getattr(self.model.config.get_text_config(), "sliding_window", None)  # models not packed
        return window if isinstance(window, int) else None

    def score_batches(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[list[tuple[int, LetterScores]]]:
        """Yield each batch's [(index, LetterScores)] as soon as it is done (the runner writes one batch at
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
        saved = sum((len(g.members) - 1) * g.prefix for g in groups)
        if self.engine == "auto" and saved < AUTO_MIN_SHARE * sum(map(len, seqs)):
            groups = []
        cache, cached = None, None  # one group's prefix cache at a time: its batches are consecutive
        if groups and self.mode is None:
            self.mode, cache = self._probe(seqs, groups[0])
            cached = seqs[groups[0].members[0]][: groups[0].prefix]
        groups = groups if self.mode in ("packed", "rows") else []
        self.engine_used = "prefix" if groups else "isolated" if self.isolated else "plain"
        plan = [
            Batch(g.prefix, members)
            for g in groups
            for members in self._batches(seqs, g.prefix, g.members, self.mode)
        ]
        grouped = {i for g in groups for i in g.members}
        rest = [i for i in range(len(seqs)) if i not in grouped]
        plan += [Batch(0, b) for b in self._batches(seqs, 0, rest, "plain")]
        with tqdm(total=len(todo), disable=not self.progress, desc="scoring", unit="q") as bar:
            for batch in plan:
                if todo.isdisjoint(batch.members):
                    continue
                prefix = seqs[batch.members[0]][: batch.prefix]
                if batch.prefix and cached != prefix:
                    cached, cache = prefix, self._prefix_cache(prefix)
                mode = self.mode if batch.prefix else "plain"
                results = self._batch(seqs, batch.members, batch.prefix, cache, mode)
                yield [(i, scores) for i, scores in zip(batch.members, results, strict=True) if i in todo]
                bar.update(len(todo.intersection(batch.members)))

    def _batches(
        self, seqs: list[list[int]], prefix: int, members: list[int], mode: str | None
    ) -> list[list[int]]:
        """Split a group (or, prefix 0, the plainly scored rest) into forwards within the token budget,
        longest first (an out-of-memory error shows at once; similar lengths pad little)."""
        order = sorted(members, key=lambda i: (-len(seqs[i]), i))
        if self.isolated:
            return [[i] for i in order]
        if mode != "packed":  # rows x padded length, the prefix counted in each row
            return split_batches([(i, len(seqs[i])) for i in order], self.batch_tokens, packed=False)
        # packed rows: suffixes in lexicographic order, so that those sharing leading tokens (a question's
        # option rotations) meet in a row, where those tokens are packed once (hf_model.packed_inputs); each
        # costs the tokens it does not share with its predecessor
        cap = min(PACK_TOKENS["cpu" if self.device.type == "cpu" else "other"], self.batch_tokens - prefix)
        order = sorted(members, key=lambda i: (seqs[i][prefix:], i))
        sizes, previous = [], []
        for i in order:
            suffix = seqs[i][prefix:]
            sizes.append((i, len(suffix) - hf_model.shared_start(previous, suffix)))
            previous = suffix
        return split_batches(sizes, cap, packed=True)

    # ---- the probe: trust a reuse mode only where it agrees with plain forwards ----

    def _probe(self, seqs: list[list[int]], group: Group) -> tuple[ReuseMode, object]:
        """The first reuse mode that this model runs and that agrees with a plain forward of every probe
        prompt, with the group's prefix cache; each mode given up is logged and kept in `fallbacks`."""
        name = type(self.model).__name__
        if not self.candidates:
            LOG.warning("%s cannot reuse a prefix KV cache: scoring with plain batches", name)
            return "plain", None
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        forwards = probe_prompts(seqs, group, self.window, limit)
        try:
            expected = [
                [self._batch(prompts, [k], 0, None, "plain")[0] for k in range(len(prompts))]
                for prompts in forwards
            ]
        except NonFiniteLogits:  # its indices are the probe's: name the group's first prompt that fails alone
            alone_bad = (
                i
                for i in group.members
                if not torch.isfinite(self._letters(seqs, [i], 0, None, "plain")[0]).all()
            )
            bad = next(alone_bad, group.members[0])
            raise NonFiniteLogits([bad]) from None
        tolerance = PROBE_TOLERANCE.get(self.compute_dtype, 1e-3)
        for mode in self.candidates:
            try:
                cache = self._prefix_cache(seqs[group.members[0]][: group.prefix])
                got = [
                    self._batch(prompts, list(range(len(prompts))), group.prefix, cache, mode)
                    for prompts in forwards
                ]
            # What a model's attention raises when it cannot take a cached prefix with a longer suffix, a 4D
            # mask or position ids: torch shape errors (RuntimeError, e.g. Baichuan-13B's ALiBi "The size of
            # tensor a (7) must match...") and the size checks of Llama-derived remote code (ValueError,
            # "Attention mask should be of size ..."). Anything else is a bug of ours and must surface.
            except (RuntimeError, ValueError) as err:
                LOG.warning("prefix reuse (%s) fails on %s: %s", mode, name, err)
                self.fallbacks.append(Fallback(mode, "error", f"{type(err).__name__}: {err}"[:500]))
                continue
            diff = largest_difference(got, expected)
            if diff <= tolerance:
                return mode, cache
            LOG.warning(
                "prefix reuse (%s) disagrees with a plain forward on %s by %.3g log-prob", mode, name, diff
            )
            self.fallbacks.append(
                Fallback(
                    mode,
                    "disagreement",
                    f"{diff:.3g} log-prob from plain forwards (tolerance {tolerance:g})",
                    diff=diff,
                )
            )
        LOG.warning("%s cannot reuse a prefix KV cache: scoring with plain batches", name)
        return "plain", None

    # ---- forwards ----

    @torch.inference_mode()
    def _prefix_cache(self, tokens: list[int]):
        inputs = {
            "input_ids": torch.tensor([tokens]),
            "use_cache": True,
            **({"logits_to_keep": 1} if self.keep != "full" else {}),
        }
        if any(window is not None for window in self.attention_kinds.values()):
            # a cache that keeps every position (sliding layers would keep the last window - 1): a packed
            # row's masks then have one key length in every layer, and windows come from positions alone;
            # rows mode on it is exact as well (the model's own sliding mask, at the cache's offsets)
            inputs[self.cache_argument] = DynamicCache()
        cache = hf_model.returned_cache(self._forward(inputs))
        if cache is None:  # a capability signal like the shape errors the probe catches
            raise RuntimeError("the model returned no KV cache")
        return cache

    @torch.inference_mode()
    def _batch(
        self, seqs: list[list[int]], batch: list[int], prefix: int, cache, mode: str
    ) -> list[LetterScores]:
        """One forward: log-softmax over the letters after the last token of each prompt in `batch`, and
        the letters' log-mass in the full vocabulary there (None where it is not finite or not asked)."""
        letters, totals = self._letters(seqs, batch, prefix, cache, mode)  # (n, 4), (n,) or None
        finite = torch.isfinite(letters).all(dim=-1)
        if not finite.all():
            bad = [batch[k] for k in torch.nonzero(~finite).flatten().tolist()]
            if len(batch) > 1 or prefix:  # a NaN spreads through a shared row or prefix: who fails alone?
                lone = {i: self._letters(seqs, [i], 0, None, "plain")[0] for i in bad}
                bad = [i for i in bad if not torch.isfinite(lone[i]).all()] or bad
            raise NonFiniteLogits(bad)
        logprobs = torch.log_softmax(letters, dim=-1).tolist()  # (n, 4)
        if totals is None:
            return [LetterScores(tuple(row), None) for row in logprobs]
        log_mass = (torch.logsumexp(letters, dim=-1) - totals).tolist()  # (n,) log sum of the 4 probabilities
        return [
            LetterScores(tuple(row), m if math.isfinite(m) else None)
            for row, m in zip(logprobs, log_mass, strict=True)
        ]

    def _letters(
        self, seqs: list[list[int]], batch: list[int], prefix: int, cache, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fp32 letter logits (len(batch) x 4) of one forward in `mode` (plain, rows or packed), and the
        logsumexp over the whole vocabulary at the same positions (len(batch),; None without `mass`)."""
        suffixes = [seqs[i][prefix:] for i in batch]
        if mode == "packed":
            inputs, positions = hf_model.packed_inputs(
                suffixes, prefix, cache, self.attention_kinds, self.dtype, self.cache_argument
            )
        else:
            rows_cache = cache if mode == "rows" else None
            inputs, positions = hf_model.padded_inputs(suffixes, rows_cache, self.cache_argument)
        letters, totals = self._letter_logits(inputs, positions)  # (rows, k, 4), (rows, k)
        return letters.reshape(-1, 4), None if totals is None else totals.reshape(-1)

    def _letter_logits(
        self, inputs: dict, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fp32 logits of the four letters at `positions` (rows x k) of this forward, and (with `mass`) the
        logsumexp of all logits there: only the answer positions' vocabulary rows are reduced."""
        cols = hf_model.keep_logits(self.keep, inputs, positions)
        logits = self._forward(inputs).logits  # (rows, kept, vocab)
        index = cols.to(logits.device)  # (rows, k): where each answer position landed among the kept
        if not self.mass:
            letters = logits[..., self.letter_ids]  # (rows, kept, 4)
            return letters.gather(1, index[..., None].expand(-1, -1, 4)).float(), None
        rows = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (rows, k, vocab)
        letters = rows[..., self.letter_ids].float()  # (rows, k, 4)
        return letters, torch.logsumexp(rows.float(), dim=-1)  # (rows, k, 4), (rows, k)

    def _forward(self, inputs: dict):
        """The model's own forward on its device; out-of-memory becomes an error naming --batch-tokens."""
        inputs = {k: hf_model.to_device(v, self.device) for k, v in inputs.items()}
        try:
            return self.model(**inputs)
        except RuntimeError as err:
            if isinstance(err, torch.cuda.OutOfMemoryError) or "not enough memory" in str(err):
                raise EvalkitError(
                    f"out of memory with --batch-tokens {self.batch_tokens}: lower --batch-tokens ({err})"
                ) from err
            raise
