"""Executors for the node kinds the engine runs itself: INPUT, OUTPUT, CONDITION.

AGENT / CREW / LLM / TOOL need runtimes (CrewAI, LiteLLM, the sandbox) and are injected
into `FlowEngine(executors=...)`; `missing_executor_message` names what is missing when
one is not.

Templates and expressions (`domain.flows.expressions`) are bounded in time (up to a few
seconds for hostile input) but synchronous, so the built-ins run them on a small thread
pool shared fairly between tenants (`domain.flows.expressions.pool`): the event loop keeps
serving other nodes and runs, a cancel still stops the run within a second, and no tenant
holds every thread. Other executors can use `render_value_async` / `evaluate_async`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from domain.errors import BadUserInput
from domain.executions.ports import NodeContext
from domain.flows.expressions.pool import EXPRESSION_POOL
from domain.flows.model import FlowNode, NodeKind
from domain.json_schema import SchemaUnusable, instance_errors

T = TypeVar("T")


async def _off_loop(func: Callable[..., T], *args: Any) -> T:
    return await EXPRESSION_POOL.run(func, *args)  # the running execution's tenant's share


async def render_value_async(value: Any, scope: Mapping[str, Any]) -> Any:
    """`render_value` off the event loop (plain values are returned as they are)."""
    if not _has_template(value):
        return value
    return await _off_loop(render_value, value, scope)


async def evaluate_async(expression: str, scope: Mapping[str, Any]) -> Any:
    """`domain.flows.expressions.evaluate` off the event loop."""
    from domain.flows.expressions import evaluate

    return await _off_loop(evaluate, expression, scope)


def _has_template(value: Any) -> bool:
    if isinstance(value, str):
        return "{" in value
    if isinstance(value, Mapping):
        return any(_has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_template(v) for v in value)
    return False


_RUNTIME_NEEDED: dict[str, str] = {
    NodeKind.LLM: "an LLM runtime",
    NodeKind.AGENT: "an agent runtime (CrewAI)",
    NodeKind.CREW: "a crew runtime (CrewAI)",
    NodeKind.TOOL: "a tool sandbox",
}


def missing_executor_message(kind: str) -> str:
    """E.g. "LLM nodes need an LLM runtime, which is not configured"."""
    needed = _RUNTIME_NEEDED.get(kind, "an executor")
    return f"{kind} nodes need {needed}, which is not configured"


async def run_input(node: FlowNode, ctx: NodeContext) -> Any:
    """The execution inputs, validated against `config.schema` (JSON Schema) when given."""
    inputs = dict(ctx.inputs)
    schema = node.config.get("schema")
    if schema:
        validate_inputs(inputs, schema)
    return inputs


def validate_inputs(inputs: Mapping[str, Any], schema: Any) -> None:
    """Raise BadUserInput with one `fields` entry per violation (paths `inputs.a.0.b`)."""
    try:
        errors = instance_errors(schema, dict(inputs), limit=100)
    except SchemaUnusable as exc:
        raise BadUserInput(f"the flow's input schema is invalid: {exc.message}") from None
    fields: dict[str, str] = {}
    for path, message in errors:
        fields.setdefault(".".join(["inputs", *(str(p) for p in path)]), message)
    if fields:
        raise BadUserInput("the execution inputs do not match the flow's input schema", fields)


async def run_output(node: FlowNode, ctx: NodeContext) -> Any:
    """`config.value` rendered when present; else what flows in.

    What flows in is the output of the single completed direct predecessor, or a dict
    {predecessor id: output} when several completed (skipped ones are left out).
    """
    if "value" in node.config and node.config["value"] is not None:
        return await render_value_async(node.config["value"], ctx.scope)
    preds = ctx.predecessors
    if len(preds) == 1:
        return ctx.upstream.get(preds[0])
    return {pid: ctx.upstream.get(pid) for pid in preds}


_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{|\{%|\{#).)*)\}\}\s*$", re.S)


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render a template string; dicts and lists are rendered item by item.

    A string that is exactly one `{{ expression }}` (no filters) keeps the native
    JSON type of what it names: `"{{ inputs.n }}"` with n = 21 gives 21, not "21",
    and `"{{ nodes.a.output }}"` passes a whole object along. Anything else renders
    to text."""
    if isinstance(value, str):
        from domain.flows.expressions import ExpressionError, evaluate, render

        whole = _WHOLE_EXPRESSION.match(value)
        if whole and "|" not in whole["expr"]:
            try:
                return evaluate(whole["expr"].strip(), scope)
            except ExpressionError:
                pass  # not valid in the expression language: let Jinja render (or explain)
        return render(value, scope)
    if isinstance(value, Mapping):
        return {k: render_value(v, scope) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, scope) for v in value]
    return value


async def run_condition(node: FlowNode, ctx: NodeContext) -> bool:
    """`config.expression` evaluated by the safe evaluator, as a boolean."""
    expression = node.config.get("expression")
    if not isinstance(expression, str) or not expression.strip():
        raise BadUserInput(
            "condition node has no expression",
            {f"nodes.{node.id}.config.expression": "is required"},
        )
    return bool(await evaluate_async(expression, ctx.scope))
