"""Query cost analysis: a per-request budget computed from the document before execution.

Each field costs 1 (a `JSON` field, which can hold up to the input limits, costs
`JSON_WEIGHT`); a field with a `first`/`last` argument multiplies its own cost and its
selection's by that page size (the argument's default, else the default page size, when
absent; variables resolved), a list field without one by `LIST_SIZE` (the `edges` of a
connection by 1: its connection already counted the page), nested multiplicatively.
Fragments and inline fragments are followed; `__typename` is free and `__schema` /
`__type` (GraphiQL's introspection) cost `INTROSPECTION_COST` each. A subscription is
costed per event the same way. Over the budget: LIMIT_EXCEEDED with `cost` and `budget`,
before any resolver runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from graphql.utilities import get_operation_ast
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType as StrawberryOperationType

from domain.errors import LimitExceeded
from graphql import (
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
)

JSON_WEIGHT = 10
LIST_SIZE = 5
INTROSPECTION_COST = 100
PAGE_ARGUMENTS = ("first", "last")


class _Costing:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        defaults: Mapping[str, Any],
        default_page: int,
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.defaults = defaults  # the operation's variable defaults
        self.default_page = default_page
        self.fragment_costs: dict[str, int] = {}

    def selection_set(self, selections: SelectionSetNode, parent: GraphQLNamedType) -> int:
        total = 0
        for node in selections.selections:
            if isinstance(node, FieldNode):
                total += self.field(node, parent)
            elif isinstance(node, InlineFragmentNode):
                target = parent
                if node.type_condition is not None:
                    target = self.schema.get_type(node.type_condition.name.value) or parent
                total += self.selection_set(node.selection_set, target)
            elif isinstance(node, FragmentSpreadNode):
                total += self.fragment(node.name.value)
        return total

    def fragment(self, name: str) -> int:
        if name in self.fragment_costs:
            return self.fragment_costs[name]
        self.fragment_costs[name] = 0  # a cycle (refused by validation) adds nothing
        definition = self.fragments.get(name)
        cost = 0
        if definition is not None:
            target = self.schema.get_type(definition.type_condition.name.value)
            if target is not None:
                cost = self.selection_set(definition.selection_set, target)
        self.fragment_costs[name] = cost
        return cost

    def field(self, node: FieldNode, parent: GraphQLNamedType) -> int:
        name = node.name.value
        if name == "__typename":
            return 0
        if name in ("__schema", "__type"):
            return INTROSPECTION_COST
        fields: Mapping[str, GraphQLField] = getattr(parent, "fields", {})
        definition = fields.get(name)
        if definition is None:
            return 1
        kind: Any = definition.type
        is_list = False
        while isinstance(kind, GraphQLNonNull | GraphQLList):
            is_list = is_list or isinstance(kind, GraphQLList)
            kind = kind.of_type
        own = JSON_WEIGHT if kind.name == "JSON" else 1
        children = self.selection_set(node.selection_set, kind) if node.selection_set else 0
        return self.multiplier(node, definition, parent, is_list) * (own + children)

    def multiplier(
        self, node: FieldNode, definition: GraphQLField, parent: GraphQLNamedType, is_list: bool
    ) -> int:
        for argument in PAGE_ARGUMENTS:
            if argument in definition.args:
                return max(self.page(node, argument, definition.args[argument].default_value), 1)
        if not is_list:
            return 1
        if node.name.value == "edges" and parent.name.endswith("Connection"):
            return 1
        return LIST_SIZE

    def page(self, node: FieldNode, argument: str, schema_default: Any) -> int:
        value: Any = None
        for given in node.arguments or ():
            if given.name.value != argument:
                continue
            if isinstance(given.value, IntValueNode):
                value = int(given.value.value)
            elif isinstance(given.value, VariableNode):
                variable = given.value.name.value
                value = self.variables.get(variable, self.defaults.get(variable))
        if value is None and isinstance(schema_default, int):
            value = schema_default
        if isinstance(value, bool) or not isinstance(value, int):
            return self.default_page
        return value


def operation_cost(
    schema: GraphQLSchema,
    document: Any,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    *,
    default_page: int,
) -> int:
    """The cost of the operation a request runs (0 when there is none to run)."""
    operation: OperationDefinitionNode | None = get_operation_ast(document, operation_name)
    if operation is None:
        return 0
    root = {
        OperationType.QUERY: schema.query_type,
        OperationType.MUTATION: schema.mutation_type,
        OperationType.SUBSCRIPTION: schema.subscription_type,
    }[operation.operation]
    if root is None:
        return 0
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    defaults: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        if isinstance(definition.default_value, IntValueNode):
            defaults[definition.variable.name.value] = int(definition.default_value.value)
    costing = _Costing(schema, fragments, variables or {}, defaults, default_page)
    return costing.selection_set(operation.selection_set, root)


class QueryCost(SchemaExtension):
    """Refuses an operation whose cost exceeds the budget, after validation (so the
    document is well-formed and within the depth limit) and before any resolver runs."""

    def __init__(self, *, budget: int, default_page: int) -> None:
        self.budget = budget
        self.default_page = default_page

    def on_execute(self) -> Iterator[None]:
        check_cost(self.execution_context, self.budget, self.default_page)
        yield


def check_cost(
    ctx: Any, budget: int, default_page: int, known: MutableMapping[Any, int] | None = None
) -> None:
    """Sets `ctx.result` to the LIMIT_EXCEEDED error (raises it for a subscription) when
    the operation costs more than `budget`. `known`: costs of operations without
    variables by (document text, operation name), filled here (the caller bounds it)."""
    document = ctx.graphql_document
    if document is None:
        return
    key = (ctx.query, ctx.operation_name) if known is not None and not ctx.variables else None
    cost = known.get(key) if key is not None and known is not None else None
    if cost is None:
        cost = operation_cost(
            ctx.schema._schema,
            document,
            ctx.operation_name,
            ctx.variables,
            default_page=default_page,
        )
        if key is not None and known is not None and isinstance(ctx.query, str):
            known[key] = cost
    if cost > budget:
        error = LimitExceeded(
            f"query cost {cost} exceeds the budget of {budget}; ask for fewer "
            "items (smaller `first`) or fewer fields",
            extensions={"cost": cost, "budget": budget},
        )
        if ctx.operation_type is StrawberryOperationType.SUBSCRIPTION:
            raise error
        ctx.result = ExecutionResult(
            data=None, errors=[GraphQLError(error.message, original_error=error)]
        )
