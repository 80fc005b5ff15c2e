"""Executors for the node kinds the engine runs itself: INPUT, OUTPUT, CONDITION.

AGENT / CREW / LLM / TOOL need runtimes (CrewAI, LiteLLM, the sandbox) and are injected
into `FlowEngine(executors=...)`; `missing_executor_message` names what is missing when
one is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.errors import BadUserInput
from domain.executions.ports import NodeContext
from domain.flows.model import FlowNode, NodeKind

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
    import jsonschema  # type: ignore[import-untyped]  # no stubs; imported on first use

    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
        validator = validator_cls(schema)
    except jsonschema.SchemaError as exc:
        raise BadUserInput(f"the flow's input schema is invalid: {exc.message}") from None
    fields: dict[str, str] = {}
    for error in validator.iter_errors(dict(inputs)):
        path = ".".join(["inputs", *(str(p) for p in error.absolute_path)])
        fields.setdefault(path, str(error.message))
    if fields:
        raise BadUserInput("the execution inputs do not match the flow's input schema", fields)


async def run_output(node: FlowNode, ctx: NodeContext) -> Any:
    """`config.value` rendered when present; else what flows in.

    What flows in is the output of the single completed direct predecessor, or a dict
    {predecessor id: output} when several completed (skipped ones are left out).
    """
    if "value" in node.config and node.config["value"] is not None:
        return render_value(node.config["value"], ctx.scope)
    preds = ctx.predecessors
    if len(preds) == 1:
        return ctx.upstream.get(preds[0])
    return {pid: ctx.upstream.get(pid) for pid in preds}


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render a template string; dicts and lists are rendered item by item."""
    if isinstance(value, str):
        from domain.flows.expressions import render

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
    from domain.flows.expressions import evaluate

    return bool(evaluate(expression, ctx.scope))
