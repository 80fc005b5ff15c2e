"""Turns every error into one with `extensions.code`; unexpected ones are masked."""

from __future__ import annotations

import re

import structlog
from graphql.error import GraphQLError
from strawberry.extensions import MaskErrors

from domain.errors import DomainError

log = structlog.get_logger("crewgraph.errors")

_LIMIT_PATTERNS = re.compile(
    r"exceeds maximum operation depth|aliases found|token limit|too many tokens|exceeds max",
    re.IGNORECASE,
)
INTERNAL_MESSAGE = "Internal server error. The request id in the logs tells what happened."


def classify(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    if isinstance(original, GraphQLError) and original is not error:
        return classify(original)
    if isinstance(original, DomainError):
        return _with(error, original.message, {**original.extensions, "code": original.code})
    if original is None:
        # Parse, validation and variable-coercion errors: the client sent a bad document.
        if error.extensions and "code" in error.extensions:
            return error
        code = "LIMIT_EXCEEDED" if _LIMIT_PATTERNS.search(error.message) else "BAD_USER_INPUT"
        return _with(error, error.message, {"code": code})
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
