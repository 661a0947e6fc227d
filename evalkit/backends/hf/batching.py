"""The scoring plan, arithmetic on token ids alone: which prompts share a prefix worth running once
(`prefix_groups`), and greedy batches within a token budget (`split_batches`). No torch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

GROUP_OVERHEAD = 64  # tokens a prefix group must save beyond its own extra forward to be worth it


class Group(NamedTuple):
    """Prompts that share a prefix worth running once."""

    prefix: int  # tokens every member starts with (each member keeps at least one token of its own)
    members: list[int]  # prompt indices, ascending


class Batch(NamedTuple):
    """One forward of the plan."""

    prefix: int  # tokens of a prefix KV cache the members' suffixes are scored on; 0: full prompts
    members: list[int]  # prompt indices, longest first


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    differ = np.asarray(a[:n]) != np.asarray(b[:n])
    return int(differ.argmax()) if differ.any() else n


def prefix_groups(seqs: Sequence[Sequence[int]]) -> list[Group]:
    """Partition prompts into Group(shared prefix length, member indices); the rest is scored plainly.

    Sorted lexicographically, prompts sharing a prefix are contiguous and the common prefixes of
    neighbours form a tree of intervals (LCP intervals). Each interval is kept as one group, saving
    (members - 1) * prefix - GROUP_OVERHEAD tokens, or split into the best groups of its sub-intervals
    plus one group of the members they leave out, whichever saves more: prompts with fewer shots form
    their own groups. A prefix leaves each member at least one token of its own.
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    lcp = [_common_prefix(seqs[a], seqs[b]) for a, b in itertools.pairwise(order)] + [0]
    # open intervals: [common prefix, first sorted position, gain, groups]
    stack: list[list] = [[0, 0, 0, []]]

    def close(node: list, last: int) -> list:
        members = order[node[1] : last + 1]
        prefix = min(node[0], min(len(seqs[i]) for i in members) - 1)
        taken = {i for _, group in node[3] for i in group}
        left = [i for i in members if i not in taken]
        if len(left) > 1 and (len(left) - 1) * prefix > GROUP_OVERHEAD:
            node[2] += (len(left) - 1) * prefix - GROUP_OVERHEAD
            node[3] = node[3] + [Group(prefix, sorted(left))]
        if (len(members) - 1) * prefix - GROUP_OVERHEAD > node[2]:
            node[2], node[3] = (len(members) - 1) * prefix - GROUP_OVERHEAD, [Group(prefix, sorted(members))]
        return node

    for k, value in enumerate(lcp):  # value: common prefix of sorted positions k and k + 1
        first, child = k, None
        while value < stack[-1][0]:
            child = close(stack.pop(), k)
            first = child[1]
            if value <= stack[-1][0]:
                stack[-1][2] += child[2]
                stack[-1][3] = stack[-1][3] + child[3]
                child = None
        if value > stack[-1][0]:
            stack.append([value, first, child[2] if child else 0, child[3] if child else []])
    groups = close(stack[0], len(order) - 1)[3] if seqs else []
    return sorted(groups, key=lambda group: group.members[0])


def split_batches(items: list[tuple[int, int]], budget: int, packed: bool) -> list[list[int]]:
    """Greedy batches of (index, size) items sorted largest first, within budget: right-padded rows
    cost rows x the first (largest) size, a packed row the sum of sizes. An item alone may exceed it."""
    batches: list[list[int]] = []
    width = total = 0
    for index, size in items:
        if batches and (total + size if packed else (len(batches[-1]) + 1) * width) <= budget:
            batches[-1].append(index)
            total += size
        else:
            batches.append([index])
            width = total = size
    return batches
