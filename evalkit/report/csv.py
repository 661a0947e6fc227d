"""The report tables as CSV: every figure of every table on its own line, published rows after them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from evalkit.report.calibration_tables import CSV_FIELDS, CalibrationRow, build_calibration_rows, csv_fields
from evalkit.report.tables import BenchmarkTable, build_tables
from evalkit.stats.calibration import DEFAULT_BINS
from evalkit.stats.published import PublishedRow
from evalkit.store.records import ReportRun
from evalkit.store.saved_runs import short_model_name

CSV_COLUMNS = [
    "benchmark",
    "run",
    "source",
    "model",
    "precision",
    "scheme",
    "shots",
    "limit",
    "group",
    "accuracy",
    "n",
    "subjects",
    "ci95_low",
    "ci95_high",
    "published",
    "published_row",
    *CSV_FIELDS,  # calibration, letter mass, answer order (evalkit.report.calibration_tables)
]


def _csv_rows(name: str, table: BenchmarkTable, calibration: dict[str, CalibrationRow]) -> list[dict]:
    rows = []
    for label in table.scores.index:
        intervals, config = table.group_intervals.get(label, {}), table.configs[label]
        reference = table.links.get(label, (None,))[0]
        for group in table.scores.columns:
            if pd.isna(table.scores.at[label, group]):
                continue
            ci = intervals.get(group)
            published = table.published.at[reference, group] if reference else math.nan
            rows.append(
                {
                    "benchmark": name,
                    "run": label,
                    "source": "measured",
                    "model": short_model_name(config.model),
                    "precision": config.precision,
                    "scheme": config.scheme,
                    "shots": config.shots,
                    "limit": config.limit,
                    "group": group,
                    "accuracy": table.scores.at[label, group],
                    "n": table.questions.at[label, group],
                    "subjects": table.subjects.at[label, group],
                    "ci95_low": 100 * ci.low if ci else None,
                    "ci95_high": 100 * ci.high if ci else None,
                    "published": None if math.isnan(published) else published,
                    "published_row": reference if reference and not math.isnan(published) else None,
                    **(csv_fields(calibration[label], group) if label in calibration else {}),
                }
            )
    for label, row in table.published_rows.items():
        rows += [
            {
                "benchmark": name,
                "run": label,
                "source": "; ".join(row.sources),
                "model": row.model,
                "precision": row.precision,
                "scheme": row.scheme,
                "group": group,
                "accuracy": value,
            }
            for group, value in row.scores.items()
        ]
    return rows


def write_csv(
    runs: Sequence[ReportRun | tuple],
    path: str | Path,
    published: Sequence[PublishedRow] = (),
    extra: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
) -> Path:
    """Every figure of every table, one per line (benchmark, run, group): accuracy x100 unrounded, n, CI,
    and the published figure a run is compared with; published rows follow with their source."""
    rows = []
    calibration = build_calibration_rows(runs, bins)
    for name, table in build_tables(runs, published, extra).items():
        rows += _csv_rows(name, table, {row.label: row for row in calibration.get(name, [])})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(path, index=False, encoding="utf-8")
    return path
