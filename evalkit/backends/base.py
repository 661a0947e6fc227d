"""The scoring interface: token-id prompts and four letter ids in, four fp32 log-probs (and the letters'
full-vocabulary mass) out, batch by batch.

A backend is built for one model and one set of four distinct letter token ids (the runner finds them
with evalkit.questions.tokens.letter_tokens). It never tokenizes: it scores exactly the token ids it is given.
For each prompt it gives the fp32 log-softmax over the four letter ids of the next-token distribution
after the prompt's last token: four floats that sum (in probability) to one, in letter order A, B, C, D.
Beside them it gives `log_mass`, the natural log of the four letters' summed probability under the FULL
vocabulary at that position (logsumexp of the four letter logits minus logsumexp of all logits, fp32), or
None where the engine cannot compute it: never a guess. The two travel together as `LetterScores`:
a renormalised answer can look right while the model puts almost no probability on the letters at all
(it wants to write "The answer is", a wrong letter-token rule, a broken output layer).

`score_batches(token_ids, only=None)` yields lists of (prompt index, LetterScores), each list as soon as
it is done, so the runner appends it to questions.jsonl at once (a killed run keeps it):
- every index in `only` (all prompts when None) is yielded exactly once, and no other; the order of
  the indices within and across batches is the backend's own (the runner keys results by index);
- a question's log-probs do not depend on `only`, on the batch it lands in or on its neighbours beyond
  float rounding (~1e-5 in fp32): a resumed run (`only` = what is not done) equals a fresh one;
- out-of-range indices in `only` and empty prompts are an EvalkitError before anything is scored;
- NaN/inf letter logits raise NonFiniteLogits (below) naming the prompt indices.
`score(token_ids, only=None)` yields the same (index, log-probs) pairs one at a time.
`score_subjects(subjects, only)` scores several subjects' prompts in one call and yields lists of
SubjectScore(subject index, prompt index, LetterScores) as they finish: the runner's one call, so that a
backend that can work on several subjects at once (the served backend spreads them over its servers) does;
OneByOne gives every backend the default, one subject after another through `score_batches`.

Reporting attributes, which the runner copies into run.json:
- `engine_used`: how the last `score_batches` call scored ("prefix" | "plain" | "isolated" for the HF
  scorer, "vllm" for vLLM); "" before the first call; `engines_used`: every one the last
  `score_subjects` call used (what run.json's `engine` joins);
- `mode`: the prefix-reuse mode (evalkit.store.records.ReuseMode for the HF scorer: "packed" | "rows" |
  "plain" | "isolated", None before its probe; "prefix_cache" for vLLM's automatic prefix caching);
- `fallbacks`: every reuse mode given up, with its reason (evalkit.store.records.Fallback; empty for vLLM);
- `isolated`: True where one prompt is scored per forward (activation-quantizing models).
A backend may also offer `describe() -> dict` (JSON-ready: engine version, settings, cache statistics)
for run.json's model_info; `backend_record` reads it where present.

evalkit.backends.hf.scorer.Scorer satisfies this Protocol structurally (no base class, nothing to register):
`isinstance(Scorer(...), ScoringBackend)` holds, and so does it for evalkit.backends.vllm.scorer.VllmScorer.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from evalkit.types import EvalkitError

Scores = tuple[float, float, float, float]  # log-softmax over the letters A, B, C, D (fp32 values)


class NonFiniteLogits(EvalkitError):
    """NaN/inf letter logits; `indices` are the prompts (of the scored list) that give them alone, `subject`
    the index of their subject in a `score_subjects` call; the runner names their questions."""

    def __init__(self, indices: list[int], subject: int = 0) -> None:
        super().__init__(f"non-finite logits (nan/inf) over the letter tokens for prompt index(es) {indices}")
        self.indices, self.subject = indices, subject


class LetterScores(NamedTuple):
    """What a backend gives for one prompt: the four renormalised letter log-probs, and the log of the
    letters' summed full-vocabulary probability (None: this backend cannot give it)."""

    logprobs: Scores
    log_mass: float | None = None


def from_vocab_logprobs(vocab_logprobs: Sequence[float], *, full_vocabulary: bool = True) -> LetterScores:
    """LetterScores from the four letters' log-probs as vLLM returns them (in-process or served): their fp32
    log-softmax, and, where they are full-vocabulary log-probs, their logsumexp as the log-mass (None where
    that is not finite: never a guess)."""
    import torch

    values = torch.tensor(list(vocab_logprobs), dtype=torch.float32)  # (4,)
    log_mass = float(torch.logsumexp(values, dim=-1)) if full_vocabulary else None
    if log_mass is not None and not math.isfinite(log_mass):
        log_mass = None
    return LetterScores(tuple(torch.log_softmax(values, dim=-1).tolist()), log_mass)


class SubjectScore(NamedTuple):
    """One item of `score_subjects`: which subject (its index in the call), which prompt, its scores."""

    subject: int
    index: int
    scores: LetterScores


@runtime_checkable
class ScoringBackend(Protocol):
    """What the runner needs of a scoring engine (the contract is the module docstring)."""

    engine_used: str
    engines_used: set[str]
    mode: str | None
    fallbacks: list
    isolated: bool

    def score_batches(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[list[tuple[int, LetterScores]]]:
        """Yield each finished batch's [(prompt index, LetterScores)]; every index of `only` exactly once."""
        ...

    def score(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[tuple[int, LetterScores]]:
        """The pairs of `score_batches`, one at a time."""
        ...

    def score_subjects(
        self, subjects: Sequence[Sequence[Sequence[int]]], only: Sequence[Collection[int]]
    ) -> Iterator[list[SubjectScore]]:
        """Several subjects' prompts: each finished batch's SubjectScores; every (subject, index of its
        `only`) exactly once."""
        ...


class OneByOne:
    """`score` and `score_subjects` for a backend that defines `score_batches`."""

    def score(
        self, token_ids: Sequence[Sequence[int]], only: Collection[int] | None = None
    ) -> Iterator[tuple[int, LetterScores]]:
        """Yield (index, LetterScores) one question at a time, in the order of `score_batches`."""
        for batch in self.score_batches(token_ids, only):
            yield from batch

    def score_subjects(
        self, subjects: Sequence[Sequence[Sequence[int]]], only: Sequence[Collection[int]]
    ) -> Iterator[list[SubjectScore]]:
        """One subject after another through `score_batches` (a backend scoring one subject at a time);
        `engines_used` collects each subject's `engine_used`."""
        self.engines_used: set[str] = set()
        for subject, (token_ids, todo) in enumerate(zip(subjects, only, strict=True)):
            try:
                for batch in self.score_batches(token_ids, todo):
                    yield [SubjectScore(subject, index, scores) for index, scores in batch]
            except NonFiniteLogits as err:
                raise NonFiniteLogits(err.indices, subject) from err
            self.engines_used.add(self.engine_used)


def backend_record(backend: ScoringBackend) -> dict:
    """What run.json records of the backend: its own `describe()` where it has one, else its name."""
    describe = getattr(backend, "describe", None)
    if callable(describe):
        return describe()
    return {"backend": "hf"}
