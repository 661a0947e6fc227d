"""Published tables of the Baichuan-13B README and the Baichuan-7B model card, as data.

tasks/references/<document>.json holds every table of one document: the section it sits under, the
published column headers mapped to our column labels, and the rows (model names and numbers only).
`load_tables` reads and checks them; `published_rows` turns the accuracy tables of our benchmarks
into evalkit PublishedRows (one per model and benchmark where the documents agree), and
`published_quantization` the int8/int4 table, each row with the GPU memory of its precision.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from evalkit.stats.published import FULL, FULL_PRECISIONS, PublishedRow, name_key, precision_class
from evalkit.types import EvalkitError, unknown
from tasks import TASKS

REFERENCE_DIR = Path(__file__).parent / "references"
KINDS = ("accuracy", "quantization", "memory", "throughput", "model_details")
TABLE_KEYS = {"name", "kind", "section", "label_column", "columns", "rows"}
TABLE_OPTIONAL = {
    "benchmark",
    "shots",
    "split",
    "split_note",
    "scheme",
    "scheme_note",
    "conditions",
    "model",
    "method",
    "layout_note",
    "note",
    "transposed",
}
ROW_KEYS = {"label", "values"}
ROW_OPTIONAL = {"model", "note", "precision", "precisions"}
QUANT_PRECISIONS = (FULL, "int8", "int4")
PRECISIONS = (*FULL_PRECISIONS, "int8", "int4")
Value = float | int | str | None


@dataclass(frozen=True)
class ReferenceRow:
    label: str  # as published
    model: str  # the model it names (the label without size tags or footnote marks, unless given)
    values: dict[str, Value]  # our column label -> the published figure (None where published "-")
    note: str = ""
    precision: str | None = None  # quantization rows: "full" | "int8" | "int4"
    precisions: tuple[str, ...] = ()  # memory rows: our precision names the row covers


@dataclass(frozen=True)
class ReferenceTable:
    file: str  # "reference/Baichuan-13B-README.md"
    name: str  # unique within its file: "ceval", "quantization", ...
    kind: str  # one of KINDS
    section: str  # the headings above the table, joined by " > "
    label_column: str  # the published header of the first column
    columns: tuple[tuple[str, str], ...]  # (published header, our label), in published order
    rows: tuple[ReferenceRow, ...]
    info: dict  # the table's other keys: benchmark, shots, split, split_note, scheme, conditions, ...

    @property
    def source(self) -> str:
        return f"{Path(self.file).name} § {self.section}"

    def row(self, label: str) -> ReferenceRow:
        for row in self.rows:
            if row.label == label:
                return row
        raise unknown(f"{self.source} row", label, [r.label for r in self.rows])


def _fail(where: str, why: str) -> EvalkitError:
    return EvalkitError(f"{where}: {why}")


def _check_keys(where: str, found: dict, required: set[str], optional: set[str]) -> None:
    missing, unknown = required - found.keys(), found.keys() - required - optional
    if missing or unknown:
        raise _fail(
            where,
            f"missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; "
            f"valid: {sorted(required | optional)}",
        )


def _valid_columns(kind: str, benchmark: str | None) -> set[str] | None:
    """Our labels an accuracy / quantization table may use; None where any label goes."""
    if kind == "quantization":
        return set(TASKS)
    if kind == "accuracy" and benchmark in TASKS:
        task = TASKS[benchmark]
        return {*task.categories, *task.extra_groups, "Average"}
    return None


def _row(where: str, raw: dict, columns: list[str], kind: str) -> ReferenceRow:
    _check_keys(where, raw, ROW_KEYS, ROW_OPTIONAL)
    if len(raw["values"]) != len(columns):
        raise _fail(where, f"{len(raw['values'])} values for {len(columns)} columns {columns}")
    values = dict(zip(columns, raw["values"], strict=False))
    if kind in ("accuracy", "quantization"):
        bad = {
            c: v
            for c, v in values.items()
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 100)
        }
        if bad:
            raise _fail(where, f"accuracies must be numbers in [0, 100] or null, found {bad}")
    if kind == "quantization" and raw.get("precision") not in QUANT_PRECISIONS:
        raise _fail(where, str(unknown("precision", raw.get("precision"), QUANT_PRECISIONS)))
    if kind == "memory" and not (raw.get("precisions") and set(raw["precisions"]) <= set(PRECISIONS)):
        raise _fail(where, f"precisions {raw.get('precisions')!r}; valid: a list of {', '.join(PRECISIONS)}")
    return ReferenceRow(
        label=raw["label"],
        model=raw.get("model", raw["label"]),
        values=values,
        note=raw.get("note", ""),
        precision=raw.get("precision"),
        precisions=tuple(raw.get("precisions", ())),
    )


def _table(path: Path, file: str, raw: dict) -> ReferenceTable:
    where = f"{path}: table {raw.get('name', '?')!r}"
    _check_keys(where, raw, TABLE_KEYS, TABLE_OPTIONAL)
    if raw["kind"] not in KINDS:
        raise _fail(where, str(unknown("kind", raw["kind"], KINDS)))
    for i, column in enumerate(raw["columns"]):
        _check_keys(f"{where} column {i}", column, {"published", "ours"}, set())
    columns = tuple((c["published"], c["ours"]) for c in raw["columns"])
    ours = [c for _, c in columns]
    valid = _valid_columns(raw["kind"], raw.get("benchmark"))
    if valid is not None and not set(ours) <= valid:
        raise _fail(where, f"columns {sorted(set(ours) - valid)} are not ours; valid: {sorted(valid)}")
    rows = tuple(
        _row(f"{where} row {i} ({r.get('label', '?')})", r, ours, raw["kind"])
        for i, r in enumerate(raw["rows"])
    )
    info = {k: v for k, v in raw.items() if k in TABLE_OPTIONAL}
    return ReferenceTable(
        file=file,
        name=raw["name"],
        kind=raw["kind"],
        section=raw["section"],
        label_column=raw["label_column"],
        columns=columns,
        rows=rows,
        info=info,
    )


@lru_cache(maxsize=4)
def load_tables(directory: Path = REFERENCE_DIR) -> tuple[ReferenceTable, ...]:
    """Every table of every reference file, checked; files in name order, tables in document order."""
    tables = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise EvalkitError(f"cannot read {path}: {err}") from err
        _check_keys(str(path), data, {"source", "tables"}, set())
        names = [t.get("name") for t in data["tables"]]
        if len(set(names)) != len(names):
            raise _fail(str(path), f"table names repeat: {names}")
        tables += [_table(path, data["source"]["file"], raw) for raw in data["tables"]]
    if not tables:
        raise EvalkitError(f"no reference tables (*.json) in {directory}")
    return tuple(tables)


def _merge(rows: list[PublishedRow], new: PublishedRow) -> None:
    """Add `new`, or fold it into a row of the same model that no figure or setting contradicts."""
    for i, old in enumerate(rows):
        same = all(getattr(old, f) == getattr(new, f) for f in ("benchmark", "precision"))
        same = same and name_key(old.model) == name_key(new.model)
        agree = all(old.scores[c] == new.scores[c] for c in old.scores.keys() & new.scores.keys())
        settings = all(
            a is None or b is None or a == b for a, b in ((old.split, new.split), (old.scheme, new.scheme))
        )
        if same and agree and settings:
            rows[i] = dataclasses.replace(
                old,
                scores={**new.scores, **old.scores},
                sources=old.sources + new.sources,
                split=old.split or new.split,
                scheme=old.scheme or new.scheme,
                notes=old.notes + new.notes,
            )
            return
    rows.append(new)


def published_rows(directory: Path = REFERENCE_DIR) -> tuple[PublishedRow, ...]:
    """The accuracy rows of our benchmarks, per category; documents that agree make one row."""
    rows: list[PublishedRow] = []
    for table in load_tables(directory):
        if table.kind != "accuracy" or table.info.get("benchmark") not in TASKS:
            continue
        for row in table.rows:
            _merge(
                rows,
                PublishedRow(
                    label=row.label,
                    model=row.model,
                    benchmark=table.info["benchmark"],
                    scores={c: float(v) for c, v in row.values.items() if v is not None},
                    sources=(table.source,),
                    split=table.info.get("split"),
                    scheme=table.info.get("scheme"),
                    notes=tuple(n for n in (row.note, table.info.get("split_note", "")) if n),
                ),
            )
    return tuple(rows)


def published_quantization(directory: Path = REFERENCE_DIR) -> tuple[PublishedRow, ...]:
    """The quantization table's Averages (one row per model, precision and benchmark) with the GPU memory
    the same document gives for that precision."""
    tables = load_tables(directory)
    out = []
    for table in (t for t in tables if t.kind == "quantization"):
        memory = [t for t in tables if t.kind == "memory" and t.file == table.file]
        for row in table.rows:
            mem = [
                (m, r) for m in memory for r in m.rows if row.precision in map(precision_class, r.precisions)
            ]
            for benchmark, value in row.values.items():
                out.append(
                    PublishedRow(
                        label=row.label,
                        model=row.model,
                        benchmark=benchmark,
                        scores={"Average": float(value)},
                        sources=tuple(dict.fromkeys([table.source, *(m.source for m, _ in mem)])),
                        precision=row.precision,
                        scheme=table.info.get("scheme"),
                        notes=tuple(n for n in (row.note, *(m.info.get("note", "") for m, _ in mem)) if n),
                        memory_gb=float(mem[0][1].values["gpu_memory_gb"]) if mem else None,
                    )
                )
    return tuple(out)
