"""Schema extensions: limits on document size, depth and aliases, and error codes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from strawberry.extensions import (
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from domain.validation import DEFAULT_PAGE
from schema.cost import QueryCost
from schema.errors import ErrorCodes


class ValidatedDocuments(SchemaExtension):
    """Validate each distinct document once (an LRU of documents that passed).

    Validation (the rules plus the depth, alias limits) depends only on the document
    text and the schema, both fixed for the process; it costs ~2-3 ms per operation here,
    paid on every request and every subscription without this. Strawberry's own
    `ValidationCache` cannot hit with per-request limiter rules. Failures are not cached.
    """

    maxsize = 2048

    def __init__(self, passed: OrderedDict[str, None]) -> None:
        self._passed = passed  # one per schema (limits differ between schemas)

    def on_validate(self) -> Iterator[None]:
        query = self.execution_context.query
        known = query is not None and query in self._passed
        if known:
            self._passed.move_to_end(query)  # type: ignore[arg-type]
            self.execution_context.pre_execution_errors = []  # skips validation
        yield
        if query is not None and not known and self.execution_context.pre_execution_errors == []:
            self._passed[query] = None
            if len(self._passed) > self.maxsize:
                self._passed.popitem(last=False)


def default_extensions(
    *,
    max_depth: int = 12,
    max_aliases: int = 30,
    max_tokens: int = 5000,
    max_cost: int = 20_000,
    page_size_max: int = 100,
) -> list[Any]:
    # Factories, not instances: extensions keep per-request state.
    passed: OrderedDict[str, None] = OrderedDict()
    return [
        ErrorCodes,
        lambda: ValidatedDocuments(passed),
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
        lambda: MaxAliasesLimiter(max_alias_count=max_aliases),
        lambda: QueryDepthLimiter(max_depth=max_depth),
        lambda: QueryCost(budget=max_cost, default_page=min(DEFAULT_PAGE, page_size_max)),
    ]
