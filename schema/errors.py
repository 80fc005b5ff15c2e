"""Turns every error into one with `extensions.code`; unexpected ones are masked."""

from __future__ import annotations

import re

import structlog
from graphql.error import GraphQLError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import MaskErrors
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from domain.errors import DomainError

log = structlog.get_logger("crewgraph.errors")

_LIMIT_PATTERNS = re.compile(
    r"exceeds maximum operation depth|aliases found|token limit|too many tokens|exceeds max",
    re.IGNORECASE,
)
INTERNAL_MESSAGE = "Internal server error. The request id in the logs tells what happened."
DB_LOST_MESSAGE = "The database connection was lost while serving this request; retry it."
REDIS_LOST_MESSAGE = (
    "The event bus (Redis) is unavailable; retry shortly (subscriptions: with afterSequence)."
)


def _redis_unreachable(error: BaseException) -> bool:
    """redis-py's connection errors, told by class (this layer does not import redis)."""
    return any(
        c.__name__ in ("ConnectionError", "TimeoutError") and c.__module__.startswith("redis")
        for c in type(error).__mro__
    )


#: PostgreSQL's answer to a NUL character in text (22021) or in JSON (22P05): bad input
#: that no database write can hold, told by SQLSTATE (this layer does not import drivers).
_UNSTORABLE_SQLSTATES = {"22021", "22P05"}
_UNIQUE_VIOLATION = "23505"


def _sqlstates(error: BaseException) -> set[str]:
    """The SQLSTATE codes along the driver's exception chain (SQLAlchemy wraps asyncpg)."""
    found: set[str] = set()
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            break
        if isinstance(state := getattr(seen, "sqlstate", None), str):
            found.add(state)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return found


def _unstorable_text(error: BaseException) -> bool:
    return bool(_sqlstates(error) & _UNSTORABLE_SQLSTATES)


_BAD_OPERATION = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def classify(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(original, GraphQLError) and original is not error:
        return classify(original)
    if isinstance(original, DomainError):
        return _with(error, original.message, {**original.extensions, "code": original.code})
    if isinstance(original, _BAD_OPERATION):
        # A streaming transport that does not carry this kind of operation (a query sent
        # as a multipart subscription), no operation, or no document at all.
        return _with(error, error.message, {"code": "BAD_USER_INPUT"})
    if original is None:
        # Parse, validation and variable-coercion errors: the client sent a bad document.
        if error.extensions and "code" in error.extensions:
            return error
        code = "LIMIT_EXCEEDED" if _LIMIT_PATTERNS.search(error.message) else "BAD_USER_INPUT"
        return _with(error, error.message, {"code": code})
    if _unstorable_text(original):
        return _with(
            error,
            "text must not contain NUL (\\u0000) characters",
            {"code": "BAD_USER_INPUT"},
        )
    if _UNIQUE_VIOLATION in _sqlstates(original):
        # Two requests created the same name at once; the use case's own check passed for
        # both and the database's unique index refused the second.
        return _with(
            error,
            "a resource with this name was created at the same moment; pick another name",
            {"code": "CONFLICT"},
        )
    if _redis_unreachable(original):
        log.warning("redis unavailable", path=list(error.path or []), error=str(original)[:200])
        return _with(error, REDIS_LOST_MESSAGE, {"code": "SERVICE_UNAVAILABLE"})
    if getattr(original, "connection_invalidated", False):
        # The database dropped this request's connection (restart, failover, a killed
        # backend): the pool replaces it, so the client may simply retry.
        log.warning(
            "database connection lost",
            path=list(error.path or []),
            error=str(getattr(original, "orig", original))[:200],
        )
        return _with(error, DB_LOST_MESSAGE, {"code": "SERVICE_UNAVAILABLE"})
    log.error(
        "unexpected error",
        path=list(error.path or []),
        exc_info=(type(original), original, original.__traceback__),
    )
    return _with(error, INTERNAL_MESSAGE, {"code": "INTERNAL_SERVER_ERROR"})


def _with(error: GraphQLError, message: str, extensions: dict[str, object]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


class ErrorCodes(MaskErrors):
    """MaskErrors' hooks cover queries, mutations, streams and subscriptions."""

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        return [classify(e) for e in errors]
