"""Schema extensions: limits on document size, depth and aliases, and error codes."""

from __future__ import annotations

from typing import Any

from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
)

from schema.errors import ErrorCodes


def default_extensions(
    *, max_depth: int = 12, max_aliases: int = 30, max_tokens: int = 5000
) -> list[Any]:
    # Factories, not instances: extensions keep per-request state.
    return [
        ErrorCodes,
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
        lambda: MaxAliasesLimiter(max_alias_count=max_aliases),
        lambda: QueryDepthLimiter(max_depth=max_depth),
    ]
