"""Which server scores which subject: subject-affine, balanced by estimated tokens, longest first.

All of one subject's questions go to one server so that its prefix cache holds the subject's header and
shots after the first question; subjects are spread over the servers greedily (longest first, each to the
least-loaded server: the classic LPT rule, within 4/3 of the best balance).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all `seqs` share (the min and max in sorted order bound it)."""
    if not seqs:
        return 0
    low, high = min(seqs), max(seqs)
    n = 0
    for a, b in zip(low, high):
        if a != b:
            break
        n += 1
    return n


def estimated_tokens(prompts: Sequence[Sequence[int]], todo: Collection[int]) -> int:
    """Tokens a server with a prefix cache computes for one subject: the shared prefix once, then each
    question's own tail."""
    seqs = [prompts[i] for i in todo]
    shared = common_prefix(seqs)
    return shared + sum(len(s) - shared for s in seqs)


def assign(
    costs: dict[int, int], servers: Sequence[int], load: dict[int, int] | None = None
) -> dict[int, list[int]]:
    """Subjects ({subject: estimated tokens}) per server, longest first, each to the least-loaded server
    (ties: the lowest server index); `load` is each server's work already queued (updated in place)."""
    load = load if load is not None else {}
    plan: dict[int, list[int]] = {s: [] for s in servers}
    for subject in sorted(costs, key=lambda i: (-costs[i], i)):
        target = min(servers, key=lambda s: (load.get(s, 0), s))
        plan[target].append(subject)
        load[target] = load.get(target, 0) + costs[subject]
    return plan
