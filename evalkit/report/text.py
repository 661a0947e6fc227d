"""Text shared by the report tables: the Average column's name, footnotes' warning sign, a run's row
label, and the markdown layout of a table of strings."""

from __future__ import annotations

import re

import pandas as pd

from evalkit.store.records import RunResult
from evalkit.store.saved_runs import short_model_name

AVERAGE = "Average"
WARN = "⚠"


def footnote(text: str) -> str:
    """A note with one ⚠ at most, and only in front: a warning is a note that starts with the sign.

    Signs inside (a `--limit` run's label carries one, a published note may) are dropped, so a
    footnote about a flagged run reads "⚠ X fp16 limit=10: ..." rather than stacking signs."""
    warns = text.lstrip().startswith(WARN)
    plain = re.sub(rf"\s*{WARN}\s*", " ", text).strip()
    return f"{WARN} {plain}" if warns else plain


def run_label(
    result: RunResult, eval_split: str, *, show_scheme: bool = False, show_shots: bool = False
) -> str:
    """Model + precision (+ scheme, shots, split and --limit where they set the run apart)."""
    config = result.config
    label = f"{short_model_name(config.model)} {config.precision}"
    if config.quant_backend:
        label += f"/{config.quant_backend}"
    if show_scheme or config.scheme != "official":
        label += f" [{config.scheme}]"
    if config.letter_rule:
        label += f" letters={config.letter_rule}"
    if show_shots:
        label += f" {config.shots}-shot"
    if config.split not in (None, eval_split):
        label += f" ({config.split})"
    if config.permute != "none":
        label += f" permute={config.permute}"
    if config.limit is not None:
        label += f" ⚠ limit={config.limit}"
    return label


def markdown_table(frame: pd.DataFrame) -> str:
    """Label column left, figures centred as in the README; strings kept as formatted ("50.0", not 50)."""
    align = ("left",) + ("center",) * len(frame.columns)
    return frame.to_markdown(colalign=align, disable_numparse=True) + "\n"
