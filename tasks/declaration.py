"""Any multiple-choice benchmark as data: a JSON declaration is a serialisation of the Task, Subject and
Scheme records (evalkit.types) that the built-in tasks use; AGIEval and Gaokao are declared this way.

JSON, not TOML: the standard library reads it on every Python evalkit supports (tomllib is 3.11+ and the
project supports 3.10), and json.dumps writes it back (`dump_declaration`). Layout:

    {"evalkit_task": 1,
     "task": {<Task fields but subjects/schemes>},
     "subjects": [{<Subject fields>}, ...],
     "schemes": {"<name>": {"base": "<task>/<scheme>" (optional), <Scheme fields>}, ...}}

A field keeps its record's type: lists for tuples, objects for dicts, null for None. A mistake (unknown
field, wrong type, bad literal) is one EvalkitError naming the file and the field, e.g.
`decl.json: schemes.official.letter_rule: 'in-context' is not one of in_context, standalone`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path

from evalkit.types import EvalkitError, Scheme, Subject, Task, unknown

VERSION = 1
# Task fields a declaration may leave out, and what they mean there (a declared task reads local files)
TASK_DEFAULTS = {
    "csv_header": None,
    "hub_id": "",
    "hub_splits": {},
    "categories": (),
    "requires_data_dir": True,
}
_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type) -> dict[str, object]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _fail(where: str, why: str) -> EvalkitError:
    return EvalkitError(f"{where}: {why}")


def _coerce(value: object, hint: object, where: str) -> object:
    """`value` (as JSON gives it) checked against a field's type hint and converted (lists -> tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        if value not in args:
            raise _fail(where, f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(where, f"expected a list, got {json.dumps(value, ensure_ascii=False)}")
        inner = args[0]
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected an object, got {json.dumps(value, ensure_ascii=False)}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):  # type: ignore[arg-type]
        raise _fail(
            where, f"expected {getattr(hint, '__name__', hint)}, got {json.dumps(value, ensure_ascii=False)}"
        )
    return value


def _record(cls: type, raw: object, where: str, skip: set[str], defaults: dict | None = None) -> dict:
    """The keyword arguments of a record from a JSON object: unknown and missing fields are errors."""
    if not isinstance(raw, dict):
        raise _fail(where, f"expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    for key in raw:
        if key not in fields:
            raise _fail(where, str(unknown("field", key, fields)))
    hints, out = _hints(cls), dict(defaults or {})
    for name, spec in fields.items():
        if name in raw:
            out[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
        elif (
            name not in out
            and spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        ):
            raise _fail(where, f"missing field {name!r}")
    return out


def _scheme(name: str, raw: object, where: str, base_of: Callable[[str], Scheme]) -> Scheme:
    if isinstance(raw, dict) and "base" in raw:
        base_name, raw = raw["base"], {k: v for k, v in raw.items() if k != "base"}
        if not isinstance(base_name, str):
            raise _fail(f"{where}.base", "expected '<task>/<scheme>'")
        try:
            base = base_of(base_name)
        except EvalkitError as exc:
            raise _fail(f"{where}.base", str(exc)) from exc
        inherited = {k: v for k, v in dataclasses.asdict(base).items() if k != "name"}
        kwargs = _record(Scheme, raw, where, {"name"}, defaults=inherited)
    else:
        kwargs = _record(Scheme, raw, where, {"name"})
    return Scheme(name=name, **kwargs)


def task_from_dict(data: object, where: str, base_of: Callable[[str], Scheme], digest: str = "") -> Task:
    """A Task from a parsed declaration; `where` names the file in messages."""
    if not isinstance(data, dict):
        raise _fail(where, "expected a JSON object")
    for key in data:
        if key not in ("evalkit_task", "task", "subjects", "schemes"):
            raise _fail(
                where, str(unknown("top-level key", key, ["evalkit_task", "task", "subjects", "schemes"]))
            )
    if data.get("evalkit_task") != VERSION:
        raise _fail(
            f"{where}: evalkit_task", f"{data.get('evalkit_task')!r}; this evalkit reads version {VERSION}"
        )
    for key in ("task", "subjects", "schemes"):
        if key not in data:
            raise _fail(where, f"missing {key!r}")
    if not isinstance(data["subjects"], list) or not data["subjects"]:
        raise _fail(f"{where}: subjects", "expected a non-empty list")
    subjects = tuple(
        Subject(**_record(Subject, raw, f"{where}: subjects[{i}]", set()))
        for i, raw in enumerate(data["subjects"])
    )
    if not isinstance(data["schemes"], dict) or "official" not in data["schemes"]:
        raise _fail(f"{where}: schemes", "expected an object with at least an 'official' scheme")
    schemes = {
        name: _scheme(name, raw, f"{where}: schemes.{name}", base_of) for name, raw in data["schemes"].items()
    }
    kwargs = _record(
        Task, data["task"], f"{where}: task", {"subjects", "schemes", "declaration_hash"}, TASK_DEFAULTS
    )
    task = Task(subjects=subjects, schemes=schemes, declaration_hash=digest, **kwargs)
    _check(task, where)
    return task


def _check(task: Task, where: str) -> None:
    """Cross-field checks a type cannot express."""
    names = [s.name for s in task.subjects]
    if len(set(names)) != len(names):
        raise _fail(f"{where}: subjects", f"subject names repeat: {names}")
    for split in (task.eval_split, task.shot_split):
        if split not in task.splits:
            raise _fail(f"{where}: task.splits", f"{task.splits} lacks the split {split!r}")
    if "{subject}" not in task.local_path:
        raise _fail(f"{where}: task.local_path", f"{task.local_path!r} has no {{subject}}")
    for name, scheme in task.schemes.items():
        for subject in [*scheme.subject_shots, *scheme.default_exclude, *scheme.header_by_subject]:
            if subject not in names:
                raise _fail(f"{where}: schemes.{name}", str(unknown("subject", subject, names)))


def load_declaration(path: str | Path, base_of: Callable[[str], Scheme], builtin: bool = False) -> Task:
    """Read and check one declaration file; a user task (not `builtin`) carries the file's hash."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise EvalkitError(f"cannot read the task file {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalkitError(f"{path}: not a JSON task declaration ({exc})") from exc
    digest = "" if builtin else hashlib.sha256(raw).hexdigest()[:12]
    return task_from_dict(data, str(path), base_of, digest)


def dump_declaration(task: Task) -> dict:
    """A Task as a declaration (the inverse of task_from_dict), e.g. to start a user file from a built-in."""
    body = {f.name: getattr(task, f.name) for f in dataclasses.fields(Task)}
    for key in ("subjects", "schemes", "declaration_hash"):
        body.pop(key)
    document = {
        "evalkit_task": VERSION,
        "task": body,
        "subjects": [dataclasses.asdict(s) for s in task.subjects],
        "schemes": {
            n: {k: v for k, v in dataclasses.asdict(s).items() if k != "name"}
            for n, s in task.schemes.items()
        },
    }
    return json.loads(json.dumps(document, ensure_ascii=False))  # tuples -> lists, as a file holds them
