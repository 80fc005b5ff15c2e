"""Schema extensions: limits on document size, depth and aliases, per-operation rate
limits, and error codes (each with the request id)."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from graphql.error import GraphQLError
from graphql.utilities import get_operation_ast
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.types.graphql import OperationType

from domain.errors import DomainError
from domain.identity import Principal
from domain.validation import DEFAULT_PAGE
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
)
from schema.cost import QueryCost
from schema.errors import ErrorCodes


class ErrorCodesWithRequestId(ErrorCodes):
    """Every error also carries `extensions.requestId`: the request's id, the one in the
    `X-Request-ID` response header and in the logs (for a WebSocket, the connection's)."""

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed = super()._process_errors(errors)
        rid = getattr(self.execution_context.context, "request_id", None)
        if isinstance(rid, str):
            for error in processed:
                error.extensions = {**(error.extensions or {}), "requestId": rid}
        return processed


class CachedParser(ParserCache):
    """Strawberry's parser cache, except that a document that does not parse is left to
    Strawberry's own parse step, which reports the syntax error with its code (raised
    from this hook, it would escape the error handling)."""

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        with contextlib.suppress(GraphQLError):
            ctx.graphql_document = self.cached_parse_document(ctx.query, **ctx.parse_options)
        yield


# Root fields with their own limit (`<name>` per caller, `tenant_<name>` per team), counted
# once per occurrence: thirty aliases of executeFlow are thirty runs.
LIMITED_FIELDS: Mapping[str, str] = {"validateTool": "validate_tool", "executeFlow": "execute_flow"}
_KINDS = {
    OperationType.QUERY: "query",
    OperationType.MUTATION: "mutation",
    OperationType.SUBSCRIPTION: "subscribe",
}


def _root_field_counts(document: DocumentNode, operation_name: str | None) -> dict[str, int]:
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return {}
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    counts: dict[str, int] = {}
    seen: set[str] = set()

    def walk(selections: SelectionSetNode) -> None:
        for node in selections.selections:
            if isinstance(node, FieldNode):
                name = LIMITED_FIELDS.get(node.name.value)
                if name is not None:
                    counts[name] = counts.get(name, 0) + 1
            elif isinstance(node, InlineFragmentNode):
                walk(node.selection_set)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                # The same spread twice merges into one set of fields: count it once.
                seen.add(node.name.value)
                fragment = fragments.get(node.name.value)
                if fragment is not None:
                    walk(fragment.selection_set)

    walk(operation.selection_set)
    return counts


class OperationRateLimits(SchemaExtension):
    """Counts each operation once, after validation and before anything runs: `query`,
    `mutation` or `subscribe` for the caller (a user, an API key on its own bucket, or,
    unauthenticated, the client address) and `tenant_<kind>` for the caller's team, plus
    `validate_tool` / `execute_flow` (and their `tenant_` forms) for each such root field.
    Over a limit: RATE_LIMITED with `extensions.retryAfter` (seconds), nothing runs.

    Runs without a request (the shared upstream of multiplexed subscriptions, whose every
    subscriber was counted on its own socket) are not counted."""

    async def on_execute(self) -> AsyncIterator[None]:
        ctx = self.execution_context
        document = ctx.graphql_document
        if ctx.result is None and document is not None:
            try:
                await self._count(ctx.context, ctx.operation_type, document, ctx.operation_name)
            except DomainError as error:
                if ctx.operation_type is OperationType.SUBSCRIPTION:
                    raise
                ctx.result = ExecutionResult(
                    data=None, errors=[GraphQLError(error.message, original_error=error)]
                )
        yield

    async def _count(
        self,
        context: Any,
        kind: OperationType,
        document: DocumentNode,
        operation_name: str | None,
    ) -> None:
        if getattr(context, "request", None) is None:
            return
        limiter = context.services.limiter
        names = [_KINDS[kind]]
        counts = {}
        if kind is OperationType.MUTATION:
            counts = _root_field_counts(document, operation_name)
            names.extend(counts)
        limited = getattr(limiter, "limited", None)
        if limited is not None and not any(
            limited(name) or limited(f"tenant_{name}") for name in names
        ):
            return  # nothing to count: no need to know the caller
        principal: Principal | None
        try:
            principal = await context.principal()
        except DomainError:
            principal = None  # anonymous (register, login) or bad credentials: per address
        for name in names:
            for _ in range(counts.get(name, 1)):
                if principal is None:
                    await context.rate_limit(name)
                    continue
                caller = (
                    f"key:{principal.api_key_id}"
                    if principal.api_key_id
                    else f"user:{principal.user_id}"
                )
                await limiter.hit(name, caller)
                await limiter.hit(f"tenant_{name}", principal.tenant_id)


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
    limits = [
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
    ]
    return [
        ErrorCodesWithRequestId,
        lambda: ValidatedDocuments(passed),
        lambda: MaxTokensLimiter(max_token_count=max_tokens),
        # After the token limit (it sets the parse options, part of the cache key): a
        # bounded LRU of parsed documents, so a repeated query is not parsed again.
        lambda: CachedParser(maxsize=256),
        # The alias and depth rules, built once: the limiters build a rule class each
        # time they are instantiated, i.e. on every request.
        lambda: AddValidationRules(limits),
        OperationRateLimits,
        lambda: QueryCost(budget=max_cost, default_page=min(DEFAULT_PAGE, page_size_max)),
    ]
