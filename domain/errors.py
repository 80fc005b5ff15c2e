"""Domain errors. Each carries the GraphQL `extensions.code` clients switch on."""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, extensions: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extensions: dict[str, object] = dict(extensions or {})


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class NotFound(DomainError):
    code = "NOT_FOUND"

    def __init__(self, what: str, ident: object | None = None) -> None:
        text = f"{what} not found" if ident is None else f"{what} {ident!s} not found"
        super().__init__(text)


class BadUserInput(DomainError):
    """Validation failure; `fields` maps each offending input path to its problem."""

    code = "BAD_USER_INPUT"

    def __init__(self, message: str, fields: Mapping[str, str] | None = None) -> None:
        self.fields = dict(fields or {})
        super().__init__(message, extensions={"fields": self.fields} if self.fields else None)


class Conflict(DomainError):
    code = "CONFLICT"


class LimitExceeded(DomainError):
    code = "LIMIT_EXCEEDED"


class RateLimited(DomainError):
    code = "RATE_LIMITED"


class NotConfigured(DomainError):
    """A capability (runtime, sandbox backend) is not available on this deployment."""

    code = "NOT_CONFIGURED"
