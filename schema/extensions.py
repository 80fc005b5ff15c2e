"""Schema extensions: limits on document size, depth and aliases, per-operation rate
limits, and error codes (each with the request id)."""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql.error import GraphQLError
from graphql.utilities import get_operation_ast
from graphql.validation import ASTValidationRule, NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.types import ExecutionContext
from strawberry.types import ExecutionResult as StrawberryExecutionResult
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
from schema.cost import QueryCost, check_cost
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
                await count_operation(ctx.context, ctx.operation_type, document, ctx.operation_name)
            except DomainError as error:
                if ctx.operation_type is OperationType.SUBSCRIPTION:
                    raise
                ctx.result = ExecutionResult(
                    data=None, errors=[GraphQLError(error.message, original_error=error)]
                )
        yield


async def count_operation(
    context: Any,
    kind: OperationType,
    document: DocumentNode,
    operation_name: str | None,
) -> None:
    """`OperationRateLimits`' counting (raises RATE_LIMITED)."""
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


_SCHEMA_HINT = re.compile(r"\s*Did you mean [^?]*\?")


@dataclass(frozen=True)
class PipelineConfig:
    """What `OperationPipeline` needs, built once per schema."""

    passed: OrderedDict[str, None]  # documents that passed validation (an LRU)
    rules: tuple[type[ASTValidationRule], ...]  # alias and depth limits (+ no introspection)
    max_tokens: int
    parse: Callable[..., DocumentNode]
    budget: int
    default_page: int
    strip_hints: bool = False
    # Costs of operations without variables, by document text and operation name.
    costs: dict[tuple[str, str | None], int] = field(default_factory=dict)
    # Called with the execution context once its errors carry their final codes (the
    # access log's recorder, the metrics): plain functions, not extensions of their own.
    after_operation: tuple[Callable[[ExecutionContext], None], ...] = ()


class OperationPipeline(ErrorCodesWithRequestId):
    """Every per-operation step of the schema in one extension, in the order the separate
    extensions (kept above for their behaviour and tests) ran: the token limit and the
    alias / depth rules set up, the parsed-document cache, validation once per distinct
    document, rate limits then the cost budget before execution, error codes with the
    request id, then the `after_operation` recorders.

    Strawberry wraps each hook of each extension in a context manager of its own, built
    anew for every operation; ten extensions cost more per request than the work they do,
    one costs a quarter of that."""

    maxsize = ValidatedDocuments.maxsize

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.config = config

    def _process_result(self, result: object) -> None:
        # MaskErrors' check is an isinstance of a runtime-checkable Protocol: slower than
        # everything else this extension does for a query without errors.
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]

    def on_operation(self) -> Iterator[None]:
        self._stream_result_processed = False
        ec = self.execution_context
        config = self.config
        ec.parse_options["max_tokens"] = config.max_tokens
        ec.validation_rules = ec.validation_rules + config.rules
        yield
        # Error codes first (MaskErrors), so the recorders see the final ones.
        if not self._stream_result_processed:
            result = ec.result
            if isinstance(result, ExecutionResult | StrawberryExecutionResult):
                self._process_result(result)
            elif initial_result := getattr(result, "initial_result", None):
                self._process_result(initial_result)
        for record in config.after_operation:
            record(ec)

    def on_parse(self) -> Iterator[None]:
        ec = self.execution_context
        # A document that does not parse is left to Strawberry's own parse step (see
        # `CachedParser`).
        with contextlib.suppress(GraphQLError):
            ec.graphql_document = self.config.parse(ec.query, **ec.parse_options)
        yield

    def on_validate(self) -> Iterator[None]:
        ec = self.execution_context
        passed = self.config.passed
        query = ec.query
        known = query is not None and query in passed
        if known:
            passed.move_to_end(query)  # type: ignore[arg-type]
            ec.pre_execution_errors = []  # skips validation
        yield
        if self.config.strip_hints:
            for error in ec.pre_execution_errors or []:
                error.message = _SCHEMA_HINT.sub("", error.message)
        if query is not None and not known and ec.pre_execution_errors == []:
            passed[query] = None
            if len(passed) > self.maxsize:
                passed.popitem(last=False)

    async def on_execute(self) -> AsyncIterator[None]:
        ec = self.execution_context
        document = ec.graphql_document
        if document is not None:
            if ec.result is None:
                try:
                    await count_operation(
                        ec.context,
                        ec.operation_type,
                        document,
                        ec.operation_name,
                    )
                except DomainError as error:
                    if ec.operation_type is OperationType.SUBSCRIPTION:
                        raise
                    ec.result = ExecutionResult(
                        data=None, errors=[GraphQLError(error.message, original_error=error)]
                    )
            costs = self.config.costs
            check_cost(ec, self.config.budget, self.config.default_page, costs)
            if len(costs) > self.maxsize:
                costs.pop(next(iter(costs)))  # the oldest: enough of a bound here
        yield


def pipeline(
    *,
    max_depth: int = 12,
    max_aliases: int = 30,
    max_tokens: int = 5000,
    max_cost: int = 20_000,
    page_size_max: int = 100,
    introspection: bool = True,
    after_operation: tuple[Callable[[ExecutionContext], None], ...] = (),
) -> Callable[[], OperationPipeline]:
    """The factory of the schema's one extension (a fresh instance per operation)."""
    rules: list[type[ASTValidationRule]] = [
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
    ]
    if not introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    config = PipelineConfig(
        passed=OrderedDict(),
        rules=tuple(rules),
        max_tokens=max_tokens,
        parse=CachedParser(maxsize=256).cached_parse_document,
        budget=max_cost,
        default_page=min(DEFAULT_PAGE, page_size_max),
        strip_hints=not introspection,
        after_operation=after_operation,
    )
    return lambda: OperationPipeline(config)


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
