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
    values = {
        f.name: getattr(record, f.name)
        for f in dataclasses.fields(cast(Any, cls))
        if f.init and f.name not in differing
    }
    return cast(Callable[..., T], cls)(**values, **differing)
