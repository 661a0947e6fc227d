"""The precision table of a sweep, in the layout of the Baichuan-13B README's quantization table.

Rows model × precision; columns the Average of each benchmark (in the order the runs come) and
memory: the weight bytes the model holds (model_info.weight_bytes, real tensor bytes) and the peak
measured while loading it (CUDA allocations on a GPU, else the process's peak RSS). Every row is set
against its model's full-precision row run with the same settings (fp32 if there is one, else bf16,
else fp16): Δ and its 95% CI come from evalkit.stats.compare's paired bootstrap over the questions both
runs scored. Published rows of the same model (int8/int4) follow with their Δ to the published
unquantized row and the published GPU memory. Beside the precision table, the divergence table: per
compared row and benchmark, how far its four-letter distributions moved from the baseline's (mean
KL(P_A || P_B) in nats with its CI, 95th/99th percentiles, top-letter agreement, mean |Δ P(gold)|),
from the same comparison; a 2-point accuracy drop hides in the noise, a KL rise does not. Both as text:
evalkit.report.quantization_markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evalkit.models.quant.choices import BACKENDS, PRECISIONS
from evalkit.report.text import AVERAGE, footnote
from evalkit.stats.compare import Delta, compare_pair
from evalkit.stats.published import FULL, FULL_PRECISIONS, PublishedRow, matching
from evalkit.stats.summary import GroupFigures, group_figures
from evalkit.store.records import Metric, ReportRun, SavedRun
from evalkit.store.saved_runs import run_label, short_model_name
from evalkit.types import EvalkitError

EXPLAINED = (
    "Cells: Average (Δ [95% CI]) in accuracy points against the model's full-precision row (fp32, "
    "else bf16, else fp16) with the same settings; paired bootstrap over the shared questions.",
    "Weights: bytes of the tensors the model holds. Peak load: the peak while loading it (CUDA "
    "allocations, or the resident set (RSS) of the process on CPU).",
    "Scoring: minutes spent scoring, summed over the row's benchmarks (* a resumed run: its last "
    "session only). Load: seconds to load the variant.",
)


@dataclass(frozen=True)
class QuantCell:
    """One benchmark Average of one row, and its change against the row's baseline."""

    metric: Metric
    delta: Delta | None  # None on the baseline row, or where the baseline lacks the benchmark or questions
    figures: GroupFigures | None = None  # calibration, letter mass, answer order; None: no questions given


@dataclass(frozen=True)
class QuantRow:
    label: str  # "Baichuan-13B-Base int8/bnb"
    group: int  # rows of one group share model and settings: one comparison
    model: str  # the name matched against published rows (run label or the run's explicit reference)
    precision: str
    baseline: str | None  # label of the row it is compared with; None for a baseline itself
    cells: dict[str, QuantCell]  # task name -> cell
    weight_bytes: int | None
    peak_bytes: int | None
    peak_kind: str  # "CUDA", "RSS" or "" where not recorded
    scoring_seconds: float  # summed over the row's benchmarks (a resumed run counts its last session only)
    load_seconds: float | None  # loading the variant (once per sweep variant); None where not recorded
    resumed: bool  # some benchmark of the row was resumed, so scoring_seconds undercounts


@dataclass(frozen=True)
class PublishedQuant:
    label: str  # as published: "Baichuan-13B-Base-int8"
    model: str  # the model it names: "Baichuan-13B-Base"
    precision: str
    averages: dict[str, float]  # task name -> accuracy x100
    deltas: dict[str, float]  # task name -> points against the published unquantized row
    memory_gb: float | None
    sources: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class QuantTable:
    titles: dict[str, str]  # task name -> title, in column order
    rows: tuple[QuantRow, ...]
    published: tuple[PublishedQuant, ...]
    notes: tuple[str, ...]


def _settings(run: ReportRun) -> tuple:
    """What must agree for two runs to be rows of one model's comparison (all but precision and backend)."""
    # the seed counts for every task, so a scheme's shuffled and unshuffled tasks share a row
    config = run.result.config
    return (
        run.reference or short_model_name(config.model),
        config.scheme,
        config.letter_rule,
        config.shots,
        config.split,
        config.limit,
        config.seed,
        config.permute,  # a permuted run pairs only with runs permuted the same way
    )


def _memory(runs: Sequence[ReportRun]) -> tuple[int | None, int | None, str]:
    infos = [run.result.model_info for run in runs]
    weights = [i.weight_bytes for i in infos if i.weight_bytes]
    cuda = [i.peak_cuda_bytes for i in infos if i.peak_cuda_bytes]
    rss = [i.peak_rss_bytes for i in infos if i.peak_rss_bytes]
    peak, kind = (max(cuda), "CUDA") if cuda else (max(rss), "RSS") if rss else (None, "")
    return max(weights) if weights else None, peak, kind


def _times(runs: Sequence[ReportRun]) -> tuple[float, float | None, bool]:
    timings = [run.result.timings for run in runs]
    loads = [t.load_seconds for t in timings if t.load_seconds is not None]
    return (
        sum(t.scoring_seconds for t in timings),
        max(loads) if loads else None,
        any(t.resumed_questions for t in timings),
    )


def _group_rows(runs: Sequence[ReportRun]) -> dict[tuple, dict[tuple, dict[str, ReportRun]]]:
    """settings -> (precision, backend) -> task name -> run; a second run of one cell is an error."""
    groups: dict[tuple, dict[tuple, dict[str, ReportRun]]] = {}
    for run in runs:
        if run.result.overall is None:
            continue  # an unlabeled split has no Average
        config = run.result.config
        cell = groups.setdefault(_settings(run), {}).setdefault((config.precision, config.quant_backend), {})
        if run.task.name in cell:
            label = run_label(run.result, run.task.eval_split)
            raise EvalkitError(
                f"precision table: two {run.task.name} runs of {label!r} (config "
                f"{cell[run.task.name].result.config_hash} and {run.result.config_hash}); "
                "report one"
            )
        cell[run.task.name] = run
    return groups


def _precision_rank(key: tuple) -> tuple[int, int]:
    """Where a (precision, backend) row goes: precisions as --precision lists them (fp32, bf16, fp16, int8,
    int4), then the quantization backends in their --quant-backend order."""
    precision, backend = key
    rank = PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)
    return rank, BACKENDS.index(backend) if backend in BACKENDS else -1 if backend is None else len(BACKENDS)


def _baseline(keys: Sequence[tuple]) -> tuple | None:
    for precision in FULL_PRECISIONS:
        if (precision, None) in keys:
            return precision, None
    return None


def _saved(run: ReportRun) -> SavedRun | None:
    return None if run.questions is None else SavedRun(run.result, list(run.questions))


def _cells(
    row: dict[str, ReportRun], base: dict[str, ReportRun] | None, notes: list[str]
) -> dict[str, QuantCell]:
    cells = {}
    for name, run in row.items():
        delta = None
        if base is not None and name in base and (a := _saved(base[name])) and (b := _saved(run)):
            comparison = compare_pair(run.task, a, b, allow_subset=True)
            delta = comparison.overall
            if comparison.only_a or comparison.only_b:
                notes.append(
                    f"⚠ {comparison.label_b} vs {comparison.label_a} ({run.task.title}): Δ over the "
                    f"{delta.a.n} shared questions ({comparison.only_a} and {comparison.only_b} "
                    "left out)."
                )
        figures = None
        if run.questions is not None:
            figures = group_figures(list(run.questions), run.result.scheme.aggregation, n_boot=0)
        cells[name] = QuantCell(run.result.overall, delta, figures)
    return cells


def _published(
    models: Sequence[str], published: Sequence[PublishedRow], tasks: Sequence[str]
) -> list[PublishedQuant]:
    """The published rows of each reported model, the unquantized one first."""
    out = []
    for model in dict.fromkeys(models):
        found: dict[str, list[PublishedRow]] = {}
        for precision in (FULL, "int8", "int4"):
            for task in tasks:
                for pub in matching(published, task, model, precision):
                    found.setdefault(pub.label, []).append(pub)
        full = {
            p.benchmark: p.scores[AVERAGE] for pubs in found.values() for p in pubs if p.precision == FULL
        }
        out += [
            PublishedQuant(
                label=label,
                model=pubs[0].model,
                precision=pubs[0].precision,
                averages={p.benchmark: p.scores[AVERAGE] for p in pubs},
                deltas={
                    p.benchmark: p.scores[AVERAGE] - full[p.benchmark]
                    for p in pubs
                    if p.precision != FULL and p.benchmark in full
                },
                memory_gb=pubs[0].memory_gb,
                sources=pubs[0].sources,
                notes=pubs[0].notes,
            )
            for label, pubs in found.items()
        ]
    return out


def build_quant_table(
    runs: Sequence[ReportRun | tuple], published: Sequence[PublishedRow] = ()
) -> QuantTable:
    """Rows model × precision of every labeled run, compared with their full-precision row.

    `published`: quantization rows (tasks.references.published_quantization()); those of the reported
    models are added."""
    runs = [ReportRun(*r) for r in runs]
    titles = {run.task.name: run.task.title for run in runs if run.result.overall is not None}
    rows, notes = [], []
    for group, (settings, cells) in enumerate(_group_rows(runs).items()):
        base_key = _baseline(list(cells))
        base_label = None
        for key in sorted(cells, key=lambda k: (k != base_key, *_precision_rank(k))):  # baseline first
            first = next(iter(cells[key].values()))
            label = run_label(first.result, first.task.eval_split)
            weights, peak, kind = _memory(list(cells[key].values()))
            scoring, load, resumed = _times(list(cells[key].values()))
            is_base = key == base_key
            base = None if is_base or base_key is None else cells[base_key]
            rows.append(
                QuantRow(
                    label=label,
                    group=group,
                    model=settings[0],
                    precision=key[0],
                    baseline=None if is_base else base_label,
                    cells=_cells(cells[key], base, notes),
                    weight_bytes=weights,
                    peak_bytes=peak,
                    peak_kind=kind,
                    scoring_seconds=scoring,
                    load_seconds=load,
                    resumed=resumed,
                )
            )
            base_label = label if is_base else base_label
        if base_key is None:
            notes.append(f"{settings[0]}: no fp32, bf16 or fp16 run with the same settings, so no Δ.")
    pubs = _published([row.model for row in rows], published, list(titles))
    if pubs:
        sources = "; ".join(dict.fromkeys(s for p in pubs for s in p.sources))
        notes = [
            f"Published rows: {sources}; Δ against the published unquantized row.",
            *(f"Published: {n}." for n in dict.fromkeys(n for p in pubs for n in p.notes)),
            *notes,
        ]
    notes = [footnote(note) for note in (*EXPLAINED, *notes)]
    return QuantTable(titles=titles, rows=tuple(rows), published=tuple(pubs), notes=tuple(notes))


# report --precision-table -> show_precision's `asked`


def show_precision(table: QuantTable, asked: bool | None) -> bool:
    """Shown when asked (True), never (False), or by default (None) when a model has several precisions."""
    groups = [row.group for row in table.rows]
    return asked if asked is not None else len(set(groups)) < len(groups)
