"""`--backend server`: the scoring contract (evalkit.backends.base) over vLLM OpenAI-compatible servers.

Each question is one /v1/completions request of one new token with evalkit's own token ids as the prompt
and `logprob_token_ids` = the four letter ids: the server returns their full-vocabulary log-probs, and they
are renormalised over the four letters in fp32 by the same function as evalkit.backends.vllm.scorer.VllmScorer
(evalkit.backends.base.from_vocab_logprobs: a log-softmax of four values, the full-vocabulary values' common
offset cancels; their logsumexp is the letters' log-mass). The full-vocabulary values are kept too.

`score_subjects` scores many subjects at once over every server (evalkit.backends.server.dispatch);
`score_batches` is the one-subject contract on top of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence

from tqdm import tqdm

from evalkit.backends.base import OneByOne, Scores, SubjectScore, from_vocab_logprobs
from evalkit.backends.server.client import ServerDown
from evalkit.backends.server.dispatch import Dispatcher, Handoff
from evalkit.backends.server.loader import ServedModel
from evalkit.backends.server.metrics import PrefixCounters, prefix_counters
from evalkit.backends.server.protocol import MissingLetters, VocabLogprobs
from evalkit.types import EvalkitError

MODE = "prefix_cache"  # the servers' automatic prefix caching (subject-affine routing feeds it)


class ServerScorer(OneByOne):
    """Scores token-id prompts on the servers of a ServedModel (the contract of evalkit.backends.base).

    Public state: `engine_used` ("server" once something was scored), `mode` ("prefix_cache"),
    `fallbacks` (empty), `isolated` (False), `handoffs` (servers taken out of a run, with where their
    subjects went), `vocab_logprobs` ({(subject, index): the four full-vocabulary letter log-probs} of the
    last call), `scored_by` ({(subject, index): server URL} whose answer was kept, last call).
    """

    isolated = False

    def __init__(self, served: ServedModel, letter_ids: Sequence[int], *, progress: bool = False):
        if len(letter_ids) != 4 or len(set(letter_ids)) != 4:
            raise EvalkitError(f"need four distinct letter ids, got {list(letter_ids)}")
        self.served, self.progress = served, progress
        self.letter_ids = [int(i) for i in letter_ids]
        self.engine_used = ""
        self.engines_used: set[str] = set()  # every engine_used of the last score_subjects
        self.mode: str | None = MODE
        self.fallbacks: list = []
        self.handoffs: list[Handoff] = []
        self.vocab_logprobs: dict[tuple[int, int], VocabLogprobs] = {}
        self.scored_by: dict[tuple[int, int], str] = {}
        for endpoint in served.endpoints:  # the run's own letters, before anything is scored
            endpoint.stop.clear()  # a previous run's end set it; the probe may retry
            try:
                endpoint.letter_logprobs(
                    served.model_name, served.probe_ids, self.letter_ids, what="the probe request", echo=True
                )
            except MissingLetters as exc:
                raise EvalkitError(f"{exc} (vLLM >= 0.32 is needed)") from exc
            except ServerDown as exc:
                raise EvalkitError(f"server {endpoint.url} does not answer the probe request: {exc}") from exc
        self._cache_start = {e.url: prefix_counters(e) for e in served.endpoints}
        self._stats_start = {e.url: dataclasses.replace(e.stats) for e in served.endpoints}

    # ---- the contract ----

    def score_batches(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[list[tuple[int, Scores]]]:
        """One subject: yield [(index, LetterScores)] as answers arrive; every index of `only` once."""
        for batch in self.score_subjects([token_ids], [range(len(token_ids)) if only is None else only]):
            yield [(item.index, item.scores) for item in batch]

    def score_subjects(
        self,
        subjects: Sequence[Sequence[Sequence[int]]],
        only: Sequence[Collection[int]],
        labels: Sequence[str] | None = None,
    ) -> Iterator[list[SubjectScore]]:
        """Several subjects at once, each on one server: yield batches of SubjectScore as they finish,
        each (subject, index) of `only` exactly once. `labels` names the subjects in errors (default:
        their indices)."""
        if len(only) != len(subjects):
            raise EvalkitError(f"{len(subjects)} subjects but {len(only)} sets of indices to score")
        labels = list(labels) if labels is not None else [str(s) for s in range(len(subjects))]
        seqs = [[[int(t) for t in prompt] for prompt in prompts] for prompts in subjects]
        todo = [sorted(set(indices)) for indices in only]
        for s, indices in enumerate(todo):
            self._check(seqs[s], indices, labels[s])
        total = sum(map(len, todo))
        if not total:
            return
        self.engine_used = "server"
        self.engines_used = {self.engine_used}
        self.scored_by, self.vocab_logprobs = {}, {}
        urls = [endpoint.url for endpoint in self.served.endpoints]
        dispatcher = Dispatcher(
            self.served.endpoints, self.served.model_name, self.letter_ids, seqs, todo, labels
        )
        bar = tqdm(total=total, disable=not self.progress, desc="scoring (server)", unit="q")
        try:
            for answers in dispatcher.run():
                bar.update(len(answers))
                self.scored_by.update(((a.subject, a.index), urls[a.server]) for a in answers)
                self.vocab_logprobs.update(((a.subject, a.index), a.vocab_logprobs) for a in answers)
                yield [
                    SubjectScore(a.subject, a.index, from_vocab_logprobs(a.vocab_logprobs)) for a in answers
                ]
        finally:
            bar.close()
            self.handoffs += dispatcher.handoffs

    def _check(self, prompts: list[list[int]], todo: list[int], label: str) -> None:
        """What no server can score, refused before anything is sent."""
        if any(not 0 <= i < len(prompts) for i in todo):
            raise EvalkitError(f"subject {label}: indices to score out of range 0..{len(prompts) - 1}")
        if empty := [i for i in todo if not prompts[i]]:
            raise EvalkitError(f"subject {label}: prompts {empty[:5]} have no tokens")
        limit = self.served.max_model_len
        if long := [i for i in todo if len(prompts[i]) + 1 > limit]:
            raise EvalkitError(
                f"subject {label}: prompt {long[0]} has {len(prompts[long[0]])} tokens: over the server's "
                f"max_model_len {limit} (start the server with a larger --max-model-len)"
                + (f" and {len(long) - 1} more" if len(long) > 1 else "")
            )

    # ---- the record ----

    def describe(self) -> dict:
        """run.json's record of the backend: servers (sanitized URLs), versions, traffic, handoffs and
        the change of each server's prefix-cache counters over this scorer's life (server-wide: every
        client of the server counts)."""
        served, settings = self.served, self.served.settings
        per_server = {}
        for endpoint in served.endpoints:
            before, now = self._stats_start[endpoint.url], endpoint.stats
            per_server[endpoint.url] = {
                "version": served.versions.get(endpoint.url),
                "max_model_len": served.max_model_lens.get(endpoint.url),
                "requests": now.requests - before.requests,
                "retries": now.retries - before.retries,
                "questions": now.questions - before.questions,
                "taken_out": any(h.server == endpoint.url for h in self.handoffs),
                "prefix_cache_server_wide": PrefixCounters.change(
                    self._cache_start[endpoint.url], prefix_counters(endpoint)
                ),
            }
        return {
            "backend": "server",
            "endpoints": [e.url for e in served.endpoints],
            "served_model": served.model_name,
            "server_version": sorted({v for v in served.versions.values() if v}),
            "max_model_len": served.max_model_len,
            "tokenizer_check": dict(served.tokenizer_checks),
            "settings": {
                "concurrency": settings.concurrency,
                "max_retries": settings.max_retries,
                "timeout_s": settings.timeout_s,
                "verify_tls": settings.verify_tls,
                "api_key_env": settings.api_key_env,  # the variable's name; the key is never recorded
            },
            "requests": sum(s["requests"] for s in per_server.values()),
            "retries": sum(s["retries"] for s in per_server.values()),
            "questions_per_server": {url: s["questions"] for url, s in per_server.items()},
            "handoffs": [dataclasses.asdict(h) for h in self.handoffs],
            "servers": per_server,
        }
