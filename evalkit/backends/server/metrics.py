"""The servers' prefix-cache counters from their Prometheus `/metrics`, read before and after a run.

vLLM (v1 engine) counts prompt tokens looked up in its prefix cache (`vllm:prefix_cache_queries_total`)
and found there (`vllm:prefix_cache_hits_total`), summed here over engines and label sets. They are
server-wide: every client of the server during the run counts, which the record says.
"""

from __future__ import annotations

from dataclasses import dataclass

from evalkit.backends.server.client import Endpoint, ServerDown
from evalkit.types import EvalkitError

QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"


@dataclass(frozen=True)
class PrefixCounters:
    queries: float
    hits: float

    @staticmethod
    def change(before: PrefixCounters | None, after: PrefixCounters | None) -> dict | None:
        """The counters' change over a run, for run.json (None where /metrics does not expose them)."""
        if before is None or after is None:
            return None
        queries, hits = after.queries - before.queries, after.hits - before.hits
        return {
            "queried_tokens": int(queries),
            "hit_tokens": int(hits),
            "hit_rate": round(hits / queries, 4) if queries > 0 else None,
            "scope": "server-wide (every client of the server during the run)",
        }


def parse_counters(text: str) -> PrefixCounters | None:
    """The two counters out of Prometheus text (None where either is absent)."""
    sums = {QUERIES: 0.0, HITS: 0.0}
    seen = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            try:
                sums[name] += float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            seen.add(name)
    if seen != set(sums):
        return None
    return PrefixCounters(queries=sums[QUERIES], hits=sums[HITS])


def prefix_counters(endpoint: Endpoint) -> PrefixCounters | None:
    """The server's counters now; None where it has no /metrics, or does not answer it (a record only:
    never a reason to stop a run)."""
    try:
        text = endpoint.call("GET", "/metrics", what="/metrics", text=True, missing_ok=True)
    except (ServerDown, EvalkitError):
        return None
    return parse_counters(text) if text else None
