"""Output types built from the domain records they show."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def from_record(cls: type[T], record: object, **differing: Any) -> T:
    """An instance of the Strawberry type `cls` (a dataclass) whose fields take the
    record's attributes of the same name, but for `differing` (fields the record names or
    shapes otherwise). A field the record lacks fails loudly instead of defaulting."""
    values = {name: getattr(record, name) for name in _init_fields(cls) if name not in differing}
    return cast(Callable[..., T], cls)(**values, **differing)


def shallow_fields(record: object) -> dict[str, Any]:
    """A dataclass instance's fields by name, values as they are (`dataclasses.asdict`
    deep-copies every value: a cost on every object of every response)."""
    return {name: getattr(record, name) for name in _init_fields(type(record))}


_INIT_FIELDS: dict[Any, tuple[str, ...]] = {}


def _init_fields(cls: Any) -> tuple[str, ...]:
    # Fixed per class; `dataclasses.fields` walks them again on every call.
    names = _INIT_FIELDS.get(cls)
    if names is None:
        names = _INIT_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    return names
