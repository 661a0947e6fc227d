"""Text shared by the report tables: the Average column's name, footnotes' warning sign, a run's row
label, and the markdown layout of a table of strings."""

from __future__ import annotations

import re

import pandas as pd

AVERAGE = "Average"
WARN = "⚠"


def footnote(text: str) -> str:
    """A note with one ⚠ at most, and only in front: a warning is a note that starts with the sign.

    Signs inside (a `--limit` run's label carries one, a published note may) are dropped, so a
    footnote about a flagged run reads "⚠ X fp16 limit=10: ..." rather than stacking signs."""
    warns = text.lstrip().startswith(WARN)
    plain = re.sub(rf"\s*{WARN}\s*", " ", text).strip()
    return f"{WARN} {plain}" if warns else plain


def markdown_table(frame: pd.DataFrame) -> str:
    """Label column left, figures centred as in the README; strings kept as formatted ("50.0", not 50)."""
    align = ("left",) + ("center",) * len(frame.columns)
    return frame.to_markdown(colalign=align, disable_numparse=True) + "\n"
