"""What the prefix engine's probe (evalkit.backends.hf.scorer.Scorer) compares before trusting a reuse mode:
the prompts it scores both ways, how far the two may differ, and how far they do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evalkit.backends.base import LetterScores
from evalkit.backends.hf.batching import Group

# The probe's bound on a log-prob's difference from a lone forward, by the dtype the matmuls run in
# (1e-3 for other dtypes: fp32 rounding moves it ~1e-5). A 16-bit letter logit of magnitude 16-32 is
# rounded to steps of 2^-6 (fp16) or 2^-3 (bf16), and another order of the same arithmetic moves it by a
# step or two: on SmolLM2 bf16 (CMMLU) the prefix forms differed by 0.16-0.19, where a 0.1 bound threw
# them out.
PROBE_TOLERANCE = {torch.float16: 0.1, torch.bfloat16: 0.5}


def probe_prompts(
    seqs: list[list[int]], group: Group, window: int | None, max_positions: object
) -> list[list[list[int]]]:
    """The probe's forwards: the group's longest and shortest prompts together (padding, packing and
    length effects), and where the model has a sliding window they do not exceed, a prompt longer
    than it (the group's prefix, then its suffixes' tokens over again) with the shortest one.
    `max_positions`: the model's max_position_embeddings (no such prompt past an integer one)."""
    order = sorted(group.members, key=lambda i: (-len(seqs[i]), i))
    longest, shortest = seqs[order[0]], seqs[order[-1]]
    forwards = [[longest, shortest]]
    length = (window or 0) + 8  # a few positions past the window see it cut their context
    fits = not isinstance(max_positions, int) or length <= max_positions
    if window is not None and len(longest) <= window and fits:
        pool = [t for i in order for t in seqs[i][group.prefix :]]
        tail = [pool[k % len(pool)] for k in range(length - group.prefix)]
        forwards.append([longest[: group.prefix] + tail, shortest])
    return forwards


def largest_difference(
    got: Sequence[Sequence[LetterScores]], expected: Sequence[Sequence[LetterScores]]
) -> float:
    """The largest log-prob difference between the probe's forwards in a reuse mode (`got`) and the
    plain forwards of their prompts alone (`expected`), both [forward][prompt]: the four letters' and,
    where both sides have it, the letter log-mass (a reuse mode must get the full vocabulary right too)."""
    largest = 0.0
    for part, want in zip(got, expected, strict=True):
        for row, ref in zip(part, want, strict=True):
            for a, b in zip(row.logprobs, ref.logprobs, strict=True):
                largest = max(largest, abs(a - b))
            if row.log_mass is not None and ref.log_mass is not None:
                largest = max(largest, abs(row.log_mass - ref.log_mass))
    return largest
