"""A typed `@strawberry.field(description=...)` for nested fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import strawberry

F = TypeVar("F", bound=Callable[..., Any])


def described(description: str) -> Callable[[F], F]:
    """`@strawberry.field(description=...)`: Strawberry's overload for that call returns
    `Any`, which mypy --strict rejects as an untyped decorator. Same field at runtime."""
    return cast("Callable[[F], F]", strawberry.field(description=description))
