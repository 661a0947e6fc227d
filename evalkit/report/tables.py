"""Report tables from saved results only (never a model), in the layout of the Baichuan-13B README.

Per benchmark: `Model 5-shot | <categories in task order> | <extra groups> | Average`, one row per
run, accuracies x100 with one decimal; beside it a table of the questions (subjects) behind every
figure, and notes for smoke runs (`--limit`), subset runs and C-Eval test runs (which have no
accuracy, only a leaderboard submission file). Published figures (evalkit.stats.published) stand under
the runs they match, each followed by a Δ row (measured − published); rows of other published models
can be added for comparison. The same tables go to markdown (evalkit.report.tables_markdown)
and CSV (evalkit.report.csv).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from evalkit.report.run_setting import run_setting_note
from evalkit.report.text import AVERAGE, footnote
from evalkit.stats.metrics import (
    Interval,
    bootstrap_ci,
    correct_by_subject,
    group_members,
    questions_by_subject,
    subject_points,
)
from evalkit.stats.published import PublishedRow, check_names, matching, named_rows
from evalkit.store.records import Metric, ReportRun, RunResult
from evalkit.store.saved_runs import SUBMISSION_FILE, run_label, short_model_name
from evalkit.types import RunConfig, Task

AGGREGATION_NOTES = {
    "micro": "mean over questions (micro)",
    "macro": "mean of subject accuracies (macro)",
    "points": "subject accuracies weighted by their total points (GAOKAO-Bench)",
}


@dataclass(frozen=True)
class BenchmarkTable:
    """One benchmark's table: scores x100 (NaN where a run has no result), counts, notes."""

    title: str
    first_column: str  # "Model 5-shot"
    scores: pd.DataFrame  # index = row labels; columns = categories, extra groups, Average
    questions: pd.DataFrame  # same shape: questions behind each figure (nullable Int64)
    subjects: pd.DataFrame  # same shape: subjects behind each figure
    intervals: dict[str, Interval]  # row label -> 95% CI of the Average, where questions were given
    group_intervals: dict[str, dict[str, Interval]]  # row label -> column -> 95% CI (every figure), same rows
    configs: dict[str, RunConfig]  # row label -> the run's config
    notes: tuple[str, ...]
    published: pd.DataFrame  # published figures, rows labelled "<model> (published)", columns as `scores`
    published_rows: dict[str, PublishedRow]  # published row label -> its record (sources, split, scheme)
    links: dict[str, tuple[str, ...]]  # run label -> the published rows it is compared with, first for Δ

    def rows(self) -> list[tuple[str, str, pd.Series]]:
        """(label, kind, figures) in display order: each run ("measured") with the published rows it matches
        under it (each shown once) and its "delta" row, then the published rows added for comparison."""
        out, placed = [], set()
        for label in self.scores.index:
            out.append((label, "measured", self.scores.loc[label]))
            for name in self.links.get(label, ()):
                if name not in placed:
                    out.append((name, "published", self.published.loc[name]))
                    placed.add(name)
            if label in self.links:
                delta = self.scores.loc[label] - self.published.loc[self.links[label][0]]
                out.append((f"Δ {label}", "delta", delta))
        out += [
            (name, "published", self.published.loc[name])
            for name in self.published.index
            if name not in placed
        ]
        return out


def _labels(results: Sequence[RunResult], eval_split: str) -> list[str]:
    """Row labels, unique within one table (the config hash tells identical labels apart)."""
    show_scheme = len({r.config.scheme for r in results}) > 1
    show_shots = len({r.config.shots for r in results}) > 1
    labels = [run_label(r, eval_split, show_scheme=show_scheme, show_shots=show_shots) for r in results]
    return [
        f"{label} #{r.config_hash[:6]}" if labels.count(label) > 1 else label
        for label, r in zip(labels, results, strict=True)
    ]


def _figures(result: RunResult, columns: Sequence[str]) -> dict[str, Metric]:
    figures = {c: result.groups[c] for c in columns if c in result.groups}
    if result.overall is not None:
        figures[AVERAGE] = result.overall
    return figures


def _submission(run: ReportRun) -> str:
    """Where the leaderboard file of an unlabeled (C-Eval test) run lies."""
    if run.path is None:
        return "unknown (run directory not given)"
    path = run.path / SUBMISSION_FILE
    return str(path) if path.is_file() else f"missing from {run.path}"


def _notes(task: Task, runs: Sequence[ReportRun], labels: Sequence[str]) -> list[str]:
    notes = []
    aggregations = {run.result.scheme.aggregation for run in runs}
    for aggregation in sorted(aggregations):
        who = (
            ""
            if len(aggregations) == 1
            else " for "
            + ", ".join(
                lbl
                for lbl, run in zip(labels, runs, strict=True)
                if run.result.scheme.aggregation == aggregation
            )
        )
        notes.append(f"Categories and Average{who}: {AGGREGATION_NOTES[aggregation]}.")
    for label, run in zip(labels, runs, strict=True):
        config = run.result.config
        if run.result.overall is None:
            notes.append(
                f"{label}: split {config.split or task.eval_split} has no answers, no accuracy; "
                f"submission written: {_submission(run)}"
            )
        if run.result.scheme.shot_source != "split":  # AGIEval, Gaokao, declared tasks: name the setting
            notes.append(run_setting_note(label, task, run.result))
        if config.limit is not None:
            notes.append(
                f"⚠ {label}: --limit {config.limit} questions per subject, a smoke run: "
                "not comparable with published figures."
            )
        if run.result.overall is not None and run.result.overall.n_subjects < len(task.subjects):
            notes.append(
                f"⚠ {label}: {run.result.overall.n_subjects} of {len(task.subjects)} subjects; "
                "groups without results are blank."
            )
    return notes


def _group_intervals(task: Task, run: ReportRun, columns: Sequence[str]) -> dict[str, Interval]:
    """The bootstrap 95% CI of each figure (category, extra group, Average) from the run's questions."""
    values = correct_by_subject(run.questions or ())
    questions = questions_by_subject(run.questions or ())  # a question's rotations: one draw
    aggregation = run.result.scheme.aggregation
    out = {}
    for column in columns:
        members = list(values) if column == AVERAGE else group_members(task, column, values)
        if members:
            out[column] = bootstrap_ci(
                {m: values[m] for m in members},
                aggregation,
                questions={m: questions[m] for m in members},
                weights=subject_points(task),
            )
    return out


def _frame(
    figures: dict[str, dict[str, Metric]],
    columns: list[str],
    value: Callable[[Metric], float],
    dtype: str | type,
) -> pd.DataFrame:
    rows = {label: {c: value(m) for c, m in row.items()} for label, row in figures.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).astype(dtype)


def _place(shown: dict[str, PublishedRow], row: PublishedRow) -> str:
    """The row label of a published row in this table, adding it on first use."""
    for label, known in shown.items():
        if known is row:
            return label
    label = f"{row.label} (published)"
    if label in shown:  # two documents that disagree on one model
        label = f"{row.label} (published, {row.sources[0].split(' § ')[0]})"
    shown[label] = row
    return label


def _published_notes(
    task: Task,
    runs: Sequence[ReportRun],
    labels: Sequence[str],
    shown: dict[str, PublishedRow],
    links: dict[str, tuple[str, ...]],
    intervals: dict[str, Interval],
) -> list[str]:
    notes = []
    for label, row in shown.items():
        scheme = f"; code reproduced by scheme {row.scheme}" if row.scheme else ""
        extra = "".join(f"; {n}" for n in dict.fromkeys(row.notes))
        notes.append(f"{label}: {'; '.join(row.sources)}{scheme}{extra}")
    if links:
        notes.append("Δ rows: the run above minus the first published row under it, in accuracy points.")
    for label, run in zip(labels, runs, strict=True):
        if label not in links:
            continue
        row, config = shown[links[label][0]], run.result.config
        if AVERAGE in row.scores and (interval := intervals.get(label)):
            inside = "inside" if interval.low <= row.scores[AVERAGE] / 100 <= interval.high else "outside"
            notes.append(
                f"{label}: the published Average {row.scores[AVERAGE]:.1f} lies {inside} the "
                f"measured 95% CI {100 * interval.low:.1f}–{100 * interval.high:.1f}."
            )
        if row.scheme and row.scheme != config.scheme:
            notes.append(
                f"⚠ {label}: measured with scheme {config.scheme}; the published figures come from "
                f"the code that scheme {row.scheme} reproduces."
            )
        if row.split and row.split != (config.split or task.eval_split):
            measured_on = config.split or task.eval_split
            notes.append(f"⚠ {label}: measured on {measured_on}, published on {row.split}.")
    return notes


def _table(
    task: Task, runs: Sequence[ReportRun], published: Sequence[PublishedRow], extra: Sequence[str]
) -> BenchmarkTable:
    columns = [*task.categories, *task.extra_groups, AVERAGE]
    labels = _labels([run.result for run in runs], task.eval_split)
    figures: dict[str, dict[str, Metric]] = {}
    intervals, group_intervals, shown, links = {}, {}, {}, {}
    for label, run in zip(labels, runs, strict=True):
        if run.result.overall is None:
            continue  # unlabeled split: listed in the notes with its submission file
        figures[label] = _figures(run.result, columns)
        if run.questions is not None:
            group_intervals[label] = _group_intervals(task, run, columns)
            if AVERAGE in group_intervals[label]:
                intervals[label] = group_intervals[label][AVERAGE]
        name = run.reference or short_model_name(run.result.config.model)
        if found := matching(published, task.name, name, run.result.config.precision):
            links[label] = tuple(_place(shown, row) for row in found)
    for row in named_rows(published, task.name, extra):
        _place(shown, row)
    shots = {run.result.config.shots for run in runs}
    return BenchmarkTable(
        title=task.title,
        first_column=f"Model {shots.pop()}-shot" if len(shots) == 1 else "Model",
        scores=_frame(figures, columns, lambda m: 100 * m.accuracy, float),
        questions=_frame(figures, columns, lambda m: m.n, "Int64"),
        subjects=_frame(figures, columns, lambda m: m.n_subjects, "Int64"),
        intervals=intervals,
        group_intervals=group_intervals,
        configs={
            label: run.result.config for label, run in zip(labels, runs, strict=True) if label in figures
        },
        notes=tuple(
            footnote(note)
            for note in _notes(task, runs, labels)
            + _published_notes(task, runs, labels, shown, links, intervals)
        ),
        published=pd.DataFrame.from_dict(
            {label: row.scores for label, row in shown.items()}, orient="index", columns=columns
        ).astype(float),
        published_rows=shown,
        links=links,
    )


def build_tables(
    runs: Sequence[ReportRun | tuple], published: Sequence[PublishedRow] = (), extra: Sequence[str] = ()
) -> dict[str, BenchmarkTable]:
    """One table per benchmark (task name), benchmarks and rows in the order the runs come.

    `published`: the known published rows (tasks.references.published_rows()); a run is set beside the
    ones it matches. `extra`: names of published models whose rows are added for comparison.
    """
    runs = [ReportRun(*r) for r in runs]
    check_names([*extra, *(run.reference for run in runs if run.reference)], published)
    by_task: dict[str, list[ReportRun]] = {}
    for run in runs:
        by_task.setdefault(run.task.name, []).append(run)
    return {name: _table(group[0].task, group, published, extra) for name, group in by_task.items()}
