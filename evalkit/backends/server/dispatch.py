"""Scoring many subjects on many servers at once: worker threads per server, one consumer.

Each server gets `concurrency` worker threads sharing its queue of subjects (evalkit.backends.server.routing
decides which). A subject's first question goes alone (its warm-up: the server computes the header and
shots once and keeps them in its prefix cache), then the rest of the subject fans out; meanwhile the
server's other workers take other subjects. Workers only send and parse; every answer goes through one
queue to `Dispatcher.run`, the single consumer, which keeps each (subject, question) once (a late answer
of a question already handed to another server is dropped) and yields them in batches as they arrive.

A request that fails 1 + max_retries times in a row takes its server out of the run: the questions queued
or in flight there move, subject by subject, to the least-loaded server still up (a warning, and a record
in `handoffs`); with no server left, the run ends in one EvalkitError naming the server and the question.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from evalkit.backends.server.client import Endpoint, ServerDown
from evalkit.backends.server.routing import assign, estimated_tokens
from evalkit.types import EvalkitError

LOG = logging.getLogger(__name__)
BATCH_MAX = 256  # answers handed to the caller at most per yield
POLL_S = 1.0  # how often the consumer checks that some worker is still alive


class Answer(NamedTuple):
    """One question's four full-vocabulary letter log-probs, as one server returned them."""

    server: int  # position in the endpoint list
    subject: int
    index: int
    vocab_logprobs: tuple[float, float, float, float]


@dataclass(frozen=True)
class Handoff:
    """A server taken out of the run and where its remaining subjects went (run.json `handoffs`)."""

    server: str  # sanitized URL
    reason: str
    moved: dict[str, list[int]]  # receiving server URL -> subject indices
    questions: int  # questions moved


@dataclass
class _Work:
    """One subject's questions queued on one server, warm-up first."""

    subject: int
    todo: deque[int]
    warmed: bool = False  # its first question has returned: the shared prefix is in the server's cache
    warming: bool = False  # its first question is in flight: the rest waits for it


@dataclass
class _Server:
    position: int
    endpoint: Endpoint
    works: list[_Work] = field(default_factory=list)
    inflight: set[tuple[int, int]] = field(default_factory=set)  # (subject, index)
    down: bool = False


class Dispatcher:
    """One call's worth of scoring: `run()` yields batches of Answers, each (subject, index) once."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        model: str,
        letter_ids: Sequence[int],
        prompts: Sequence[Sequence[Sequence[int]]],
        todo: Sequence[Sequence[int]],
        labels: Sequence[str],
    ):
        self.model, self.letter_ids, self.prompts, self.labels = model, list(letter_ids), prompts, labels
        self.servers = [_Server(i, endpoint) for i, endpoint in enumerate(endpoints)]
        self.handoffs: list[Handoff] = []
        self._cond = threading.Condition()
        self._answers: queue.Queue = queue.Queue()
        self._stopped = False
        self._total = sum(len(t) for t in todo)
        costs = {s: estimated_tokens(prompts[s], t) for s, t in enumerate(todo) if t}
        plan = assign(costs, [s.position for s in self.servers])
        for server in self.servers:
            for subject in plan[server.position]:
                server.works.append(self._work(subject, todo[subject]))

    def _work(self, subject: int, indices: Sequence[int]) -> _Work:
        """Sorted by token ids: neighbours share the longest prefixes (the server's cache reuses them)."""
        seqs = self.prompts[subject]
        return _Work(subject, deque(sorted(indices, key=lambda i: (seqs[i], i))))

    # ---- the consumer (the caller's thread) ----

    def run(self) -> Iterator[list[Answer]]:
        """Start the workers and yield what they answer, each question once; stop them when done, on an
        error or when the caller closes the generator."""
        for server in self.servers:
            server.endpoint.stop.clear()
        threads = [
            threading.Thread(
                target=self._worker, args=(server,), daemon=True, name=f"evalkit-server-{server.position}"
            )
            for server in self.servers
            for _ in range(server.endpoint.settings.concurrency)
        ]
        for thread in threads:
            thread.start()
        done: set[tuple[int, int]] = set()
        try:
            while len(done) < self._total:
                batch: list[Answer] = []
                for item in self._drain(threads):
                    if isinstance(item, BaseException):
                        raise item
                    if isinstance(item, Handoff):
                        self._warn(item)
                    elif (item.subject, item.index) not in done:  # a late duplicate is dropped
                        done.add((item.subject, item.index))
                        self.servers[item.server].endpoint.stats.questions += 1
                        batch.append(item)
                if batch:
                    yield batch
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
            for server in self.servers:
                server.endpoint.stop.set()  # workers in a backoff wait give up at once

    def _drain(self, threads: list[threading.Thread]) -> list:
        """What the workers posted: at least one item (blocking), then whatever else is there."""
        while True:
            try:
                items = [self._answers.get(timeout=POLL_S)]
                break
            except queue.Empty:
                if not any(thread.is_alive() for thread in threads):
                    raise RuntimeError("every server worker ended with questions left unanswered") from None
        while len(items) < BATCH_MAX:
            try:
                items.append(self._answers.get_nowait())
            except queue.Empty:
                break
        return items

    def _warn(self, handoff: Handoff) -> None:
        self.handoffs.append(handoff)
        moved = "; ".join(f"{len(subjects)} subject(s) to {url}" for url, subjects in handoff.moved.items())
        LOG.warning(
            "server %s is taken out of the run (%s): its %d remaining question(s) go on elsewhere: %s",
            handoff.server,
            handoff.reason,
            handoff.questions,
            moved,
        )

    # ---- the workers ----

    def _worker(self, server: _Server) -> None:
        """Take the server's next question, send it, post the answer; until the run or the server ends."""
        try:
            while (task := self._next(server)) is not None:
                work, index, first = task
                what = f"question {index} of subject {self.labels[work.subject]}"
                prompt = self.prompts[work.subject][index]
                try:
                    values = server.endpoint.letter_logprobs(
                        self.model, prompt, self.letter_ids, what=what, echo=first
                    )
                except ServerDown as exc:
                    self._server_down(server, str(exc))
                    return
                self._finished(server, work, index, first)
                self._answers.put(Answer(server.position, work.subject, index, values))
        except BaseException as exc:  # noqa: BLE001 - EvalkitError or a bug: re-raised in the caller's thread
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
            self._answers.put(exc)

    def _next(self, server: _Server) -> tuple[_Work, int, bool] | None:
        """The next question this server may send (None: stop); waits while only warm-ups are in flight."""
        with self._cond:
            while True:
                if self._stopped or server.down:
                    return None
                for work in server.works:
                    if work.warming or not work.todo:
                        continue
                    index = work.todo.popleft()
                    first = not work.warmed
                    work.warming = first
                    server.inflight.add((work.subject, index))
                    return work, index, first
                self._cond.wait()

    def _finished(self, server: _Server, work: _Work, index: int, first: bool) -> None:
        with self._cond:
            server.inflight.discard((work.subject, index))
            if first:
                work.warming, work.warmed = False, True
                self._cond.notify_all()
            server.works = [w for w in server.works if w.todo or w.warming]

    def _server_down(self, server: _Server, reason: str) -> None:
        """Take `server` out; hand its queued and in-flight questions to the others, subject by subject."""
        with self._cond:
            if server.down or self._stopped:
                return
            server.down = True
            server.endpoint.stop.set()  # its other workers stop retrying
            server.endpoint.stats.down = True
            left: dict[int, set[int]] = {}
            for work in server.works:
                left.setdefault(work.subject, set()).update(work.todo)
            for subject, index in server.inflight:
                left.setdefault(subject, set()).add(index)
            server.works, server.inflight = [], set()
            alive = [s for s in self.servers if not s.down]
            if not alive:
                self._stopped = True
                self._cond.notify_all()
                self._answers.put(
                    EvalkitError(f"every server is down ({len(self.servers)} tried); the last: {reason}")
                )
                return
            costs = {subject: estimated_tokens(self.prompts[subject], left[subject]) for subject in left}
            load = {
                s.position: sum(estimated_tokens(self.prompts[w.subject], w.todo) for w in s.works)
                for s in alive
            }
            plan = assign(costs, [s.position for s in alive], load)
            for target in alive:
                target.works += [
                    self._work(subject, sorted(left[subject])) for subject in plan[target.position]
                ]
            self._cond.notify_all()
        moved = {self.servers[p].endpoint.url: subjects for p, subjects in plan.items() if subjects}
        self._answers.put(Handoff(server.endpoint.url, reason, moved, sum(len(v) for v in left.values())))
