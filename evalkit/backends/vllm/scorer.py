"""The vLLM backend: exact letter log-probs from vLLM, its automatic prefix cache kept on.

lm-evaluation-harness scores on vLLM through `prompt_logprobs`, which turns the prefix cache off, or
reads the top-K log-probs only. Here every prompt is one request of one new token, given as evalkit's
own token ids (`TokensPrompt`: vLLM's tokenizer never runs), with
`SamplingParams(max_tokens=1, logprob_token_ids=letters)`: vLLM returns the values of exactly the four
letter ids for the next token, and a subject's shared header and shots are computed once and then read
from the prefix cache. The engine is started with `logprobs_mode="raw_logprobs"`, so the four values are
the letters' full-vocabulary fp32 log-probs (vLLM's log-softmax of the raw logits, before any sampling
processor): their logsumexp is the letters' log-mass (LetterScores.log_mass), and the log-softmax over
the four, taken here in fp32 as the HF scorer does, equals the renormalisation of the raw logits up to
rounding (log-softmax ignores the shared shift). An engine started in another mode gives no mass (None),
never a guess. A vLLM without `logprob_token_ids` (before 0.32) is refused: top-K
log-probs would silently miss letters outside the top K.

Requests go in sorted by their token ids (prompts sharing a header and shots are neighbours, so the
first computes the shared blocks and the rest hit them) and results are yielded as requests finish,
one list per engine step. `describe()` gives the vLLM version, the settings and the prefix-cache hit
rate (vLLM's `num_cached_tokens` of each request over its prompt tokens) for run.json.

Start the engine with evalkit.backends.vllm.engine.load_vllm; `eval`/`sweep --backend vllm` load through
evalkit.backends.vllm.loader.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterator, Sequence

from tqdm import tqdm

from evalkit.backends.base import LetterScores, NonFiniteLogits, OneByOne, from_vocab_logprobs
from evalkit.backends.vllm.engine import VllmSettings, require_logprob_token_ids
from evalkit.types import EvalkitError

MODE = "prefix_cache"  # the backend's `mode`: vLLM's automatic prefix caching


@dataclasses.dataclass
class CacheStats:
    """Prefix-cache use over every request this scorer sent (vLLM's per-request num_cached_tokens)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float | None:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None


class VllmScorer(OneByOne):
    """Scores token-id prompts on a vLLM engine: the fp32 log-softmax over the four letter ids after each
    prompt's last token (the contract of evalkit.backends.base.ScoringBackend).

    `llm` is a started vllm.LLM (load_vllm). Public state: `engine_used` ("vllm" once score_batches has
    run), `mode` ("prefix_cache"), `fallbacks` (always empty: nothing is probed or given up), `isolated`
    (False), `cache` (CacheStats), `settings` (the VllmSettings it was started with, where known).
    """

    isolated = False

    def __init__(
        self, llm, letter_ids: Sequence[int], *, settings: VllmSettings | None = None, progress: bool = False
    ):
        if len(letter_ids) != 4 or len(set(letter_ids)) != 4:
            raise EvalkitError(f"need four distinct letter ids, got {list(letter_ids)}")
        self.version = require_logprob_token_ids()
        from vllm import SamplingParams

        self.llm, self.settings, self.progress = llm, settings, progress
        self.letter_ids = [int(i) for i in letter_ids]
        self.params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=self.letter_ids, detokenize=False
        )
        config = llm.llm_engine.model_config
        self.max_model_len: int = config.max_model_len
        self.logprobs_mode: str = str(getattr(config, "logprobs_mode", "raw_logprobs"))
        self.engine_used = ""
        self.engines_used: set[str] = set()  # every engine_used of the last score_subjects
        self.mode: str | None = MODE
        self.fallbacks: list = []
        self.cache = CacheStats()
        self._calls = 0  # score_batches calls: they make each request id unique

    def score_batches(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[list[tuple[int, LetterScores]]]:
        """Yield [(index, LetterScores)] of the requests finished in each engine step. Every prompt of `only`
        (all when None) is one request; they go in sorted by token ids, so shared prefixes hit the cache."""
        seqs = [[int(t) for t in s] for s in token_ids]
        todo = set(range(len(seqs))) if only is None else set(only)
        if any(not 0 <= i < len(seqs) for i in todo):
            raise EvalkitError(f"indices to score out of range 0..{len(seqs) - 1}: {sorted(todo)[:5]}...")
        if empty := [i for i, s in enumerate(seqs) if not s]:
            raise EvalkitError(f"prompts {empty[:5]} have no tokens")
        if long := [i for i in sorted(todo) if len(seqs[i]) + 1 > self.max_model_len]:
            raise EvalkitError(
                f"prompt {long[0]} has {len(seqs[long[0]])} tokens: over vLLM's max_model_len "
                f"{self.max_model_len} (raise --max-model-len){_more(long)}"
            )
        if not todo:
            return
        from vllm.inputs import TokensPrompt

        self.engine_used = "vllm"
        order = sorted(todo, key=lambda i: (seqs[i], i))
        engine = self.llm.llm_engine
        self._calls += 1
        index_of = {f"evalkit-{id(self):x}-{self._calls}-{i}": i for i in order}  # vLLM's external ids
        pending = set()
        bar = tqdm(total=len(order), disable=not self.progress, desc="scoring (vLLM)", unit="q")
        try:
            for request_id, i in index_of.items():
                engine.add_request(request_id, TokensPrompt(prompt_token_ids=seqs[i]), self.params)
                pending.add(request_id)
            while pending:
                if not engine.has_unfinished_requests():
                    raise EvalkitError(f"vLLM finished without {len(pending)} of the requests sent")
                batch = []
                for out in engine.step():
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        batch.append(self._result(out, index_of[out.request_id]))
                if batch:
                    bad = [i for i, scores in batch if not all(math.isfinite(x) for x in scores.logprobs)]
                    if bad:
                        raise NonFiniteLogits(sorted(bad))
                    bar.update(len(batch))
                    yield batch
        finally:
            bar.close()
            if pending:  # stopped early (an error, or the caller closed the generator): drop the rest
                engine.abort_request(list(pending))

    def _result(self, out, index: int) -> tuple[int, LetterScores]:
        """(index, fp32 log-softmax over the four letters and their log-mass) of one finished request;
        cache counters."""
        self.cache.requests += 1
        self.cache.prompt_tokens += len(out.prompt_token_ids)
        self.cache.cached_tokens += out.num_cached_tokens or 0
        step = out.outputs[0].logprobs[0]  # {token id: Logprob} of the one new token
        if missing := [t for t in self.letter_ids if t not in step]:
            raise EvalkitError(f"vLLM returned no value for letter id(s) {missing} (got ids {sorted(step)})")
        values = [step[t].logprob for t in self.letter_ids]
        return index, from_vocab_logprobs(values, full_vocabulary=self.logprobs_mode == "raw_logprobs")

    def describe(self) -> dict:
        """run.json's record of the backend: vLLM version, settings, prefix-cache statistics."""
        settings = dataclasses.asdict(self.settings) if self.settings is not None else None
        return {
            "backend": "vllm",
            "vllm_version": self.version,
            "settings": settings,
            "logprobs_mode": self.logprobs_mode,
            "max_model_len": self.max_model_len,
            "prefix_cache": {**dataclasses.asdict(self.cache), "hit_rate": self.cache.hit_rate},
        }


def _more(items: list) -> str:
    return f" and {len(items) - 1} more" if len(items) > 1 else ""
