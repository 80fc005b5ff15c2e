"""Small input checks shared by use cases; failures name the offending field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from email_validator import EmailNotValidError, validate_email

from domain.errors import BadUserInput

MAX_NAME = 200
MAX_TEXT = 20_000


class Checker:
    """Collects field errors so one response lists every problem, not just the first."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.errors: dict[str, str] = {}

    def fail(self, field: str, message: str) -> None:
        self.errors.setdefault(f"{self.prefix}{field}", message)

    def text(
        self, field: str, value: str | None, *, required: bool = True, max_len: int = MAX_NAME
    ) -> str | None:
        if value is None:
            if required:
                self.fail(field, "is required")
            return None
        value = value.strip()
        if required and not value:
            self.fail(field, "must not be empty")
        elif len(value) > max_len:
            self.fail(field, f"must be at most {max_len} characters")
        return value

    def email(self, field: str, value: str) -> str:
        if len(value) > 254:
            self.fail(field, "must be at most 254 characters")
            return value
        try:
            return validate_email(value.strip(), check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            self.fail(field, f"is not a valid email address: {exc}")
            return value

    def password(self, field: str, value: str) -> None:
        if len(value) < 8:
            self.fail(field, "must be at least 8 characters")
        elif len(value) > 256:
            self.fail(field, "must be at most 256 characters")

    def check(self, field: str, ok: bool, message: str) -> None:
        if not ok:
            self.fail(field, message)

    def nested(self, prefix: str, fn: Callable[[Checker], Any]) -> Any:
        inner = Checker(f"{self.prefix}{prefix}")
        result = fn(inner)
        for key, msg in inner.errors.items():
            self.errors.setdefault(key, msg)
        return result

    def raise_if_any(self, message: str = "invalid input") -> None:
        if self.errors:
            first = next(iter(self.errors.items()))
            raise BadUserInput(f"{message}: {first[0]} {first[1]}", self.errors)


DEFAULT_PAGE = 20
MAX_PAGE = 100


def page_size(first: int | None, maximum: int = MAX_PAGE) -> int:
    if first is None:
        return min(DEFAULT_PAGE, maximum)
    if first < 1 or first > maximum:
        raise BadUserInput(
            f"first must be between 1 and {maximum}", {"first": f"must be between 1 and {maximum}"}
        )
    return first
