"""run.json's fields checked against the types its records declare, before report or compare reads them.

A hand-edited run.json (`"accuracy": "yes"`, `"model": null`) would otherwise crash a table or a sort far
from its cause; the records' own type hints say what each field holds, so fields added later are checked
without a change here.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal


class BadField(ValueError):
    """A field of run.json that does not hold what its record declares (the message names it)."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: object, hint: Any) -> bool:
    """Whether a value read from JSON holds the declared type (ints pass for floats, bools never for
    numbers; tuples were lists in JSON). Types only: ranges are the writers' business."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # NaN/inf pass: a figure can be undefined (a fallback's diff), and prints as such
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if typing.is_typeddict(hint):  # keys optional (total=False), each present one of its declared type
        declared = _hints(hint)
        return isinstance(value, dict) and all(
            _fits(v, declared[k]) for k, v in value.items() if k in declared
        )
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)  # its own fields are checked by check_record_fields
    if origin is tuple or hint is tuple:
        if not isinstance(value, tuple | list):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(
            _fits(item, arg) for item, arg in zip(value, args, strict=True)
        )
    if origin is list or hint is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value if args)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return not args or all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True  # a hint not modelled here passes


def check_record_fields(record: object, where: str = "") -> None:
    """Every field of a dataclass record (and of the records it holds) against its type hint; BadField
    names the first that is wrong by its dotted path."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        return
    hints = _hints(type(record))
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        path = f"{where}{field.name}"
        if not _fits(value, hints[field.name]):
            raise BadField(f"{path} is {value!r}, expected {_describe(hints[field.name])}")
        if isinstance(value, dict):
            children = [(f"{path}.{key}.", child) for key, child in value.items()]
        elif isinstance(value, tuple | list):
            children = [(f"{path}[{i}].", child) for i, child in enumerate(value)]
        else:
            children = [(f"{path}.", value)]
        for inner, child in children:
            check_record_fields(child, inner)


def _describe(hint: Any) -> str:
    """A type hint in words a user reads (`str | None`, not `typing.Optional[str]`)."""
    text = str(hint) if typing.get_origin(hint) else getattr(hint, "__name__", str(hint))
    return text.replace("typing.", "").replace("NoneType", "null")
