"""Published reference figures as records, and which of them a run is set beside.

The figures are data in tasks/references/*.json (read by `tasks.references`); evalkit never imports
tasks/, so the caller passes the rows in. A run matches a published row of its benchmark when the
names agree with case, spaces and punctuation ignored ("baichuan-inc/Baichuan-13B-Base" is labelled
"Baichuan-13B-Base", which matches "baichuan 13b base") and the precision class agrees: fp32, bf16 and
fp16 runs meet the figures of the unquantized model ("full"), int8 and int4 runs the published int8
and int4 figures. A run may name its reference explicitly instead of relying on its model label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evalkit.types import unknown

FULL = "full"  # the precision class of an unquantized model
FULL_PRECISIONS = ("fp32", "bf16", "fp16")  # in the order a quantization table picks its baseline


@dataclass(frozen=True)
class PublishedRow:
    """One model's published figures on one benchmark, keyed by our column labels, accuracy x100."""

    label: str  # as published: "Baichuan-13B-Base-int8", "moss-moon-003-base (16B)"
    model: str  # the model it names, matched against run labels: "Baichuan-13B-Base"
    benchmark: str  # our task name: "ceval", "mmlu", "cmmlu"
    scores: dict[str, float]  # column -> figure; a figure published as "-" is absent
    sources: tuple[str, ...]  # "<file> § <section>", one per document that publishes these figures
    precision: str = FULL  # "full" | "int8" | "int4"
    split: str | None = None  # the split scored, None where the source does not say
    scheme: str | None = None  # our scheme that reproduces the source's code, where known
    memory_gb: float | None = None  # published GPU memory at this precision (quantization rows)
    notes: tuple[str, ...] = ()  # footnotes of the source, caveats found in checking

    def named(self, name: str) -> bool:
        return name_key(name) in (name_key(self.model), name_key(self.label))


def name_key(name: str) -> str:
    """What two spellings of one model name share: lower case letters and digits."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def precision_class(precision: str) -> str:
    return FULL if precision in FULL_PRECISIONS else precision


def matching(rows: Iterable[PublishedRow], benchmark: str, name: str, precision: str) -> list[PublishedRow]:
    """The published rows of `benchmark` a run of model `name` at `precision` is compared with."""
    wanted = precision_class(precision)
    return [row for row in rows if row.benchmark == benchmark and row.precision == wanted and row.named(name)]


def check_names(names: Iterable[str], rows: Sequence[PublishedRow]) -> None:
    """Every name must name some published row; a typo gets the close names and the valid ones."""
    known = sorted({row.label for row in rows} | {row.model for row in rows}, key=str.lower)
    for name in names:
        if not any(row.named(name) for row in rows):
            raise unknown("published row", name, known)


def named_rows(rows: Sequence[PublishedRow], benchmark: str, names: Iterable[str]) -> list[PublishedRow]:
    """Rows of `benchmark` named by `names`, in the order of the names (for `--reference` rows)."""
    found = [row for name in names for row in rows if row.benchmark == benchmark and row.named(name)]
    return [row for i, row in enumerate(found) if all(row is not other for other in found[:i])]
