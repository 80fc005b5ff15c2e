"""The LLM node: one prompt to one provider (with its fallbacks), tokens streamed live.

Config (validated at write time by `domain.flows.graph`): `{"providerId", "prompt":
<template>, "system"?, "temperature"?, "maxTokens"?, "responseFormat"?: "text" | "json"}`.
Output: the completion text, or the parsed JSON value when `responseFormat` is "json".
"""

from __future__ import annotations

import json
from typing import Any

from domain.errors import BadUserInput, DomainError
from domain.executions.builtins import render_value_async
from domain.executions.ports import NodeContext
from domain.flows.model import FlowNode
from domain.llm import LlmCallFailed, LlmRequest
from domain.llm_calls import CallScope, LlmService

_PREVIEW = 200


class LlmNodeFailed(DomainError):
    """The provider (and every fallback) failed in a way a retry of the node may fix."""

    code = "LLM_FAILED"


class LlmNodeExecutor:
    """`NodeExecutor` for kind LLM."""

    def __init__(self, llm: LlmService) -> None:
        self._llm = llm

    async def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Any:
        config = node.config or {}
        provider_id = config.get("providerId")
        if not isinstance(provider_id, str) or not provider_id:
            raise BadUserInput(
                f"LLM node {node.id!r} has no providerId",
                {f"nodes.{node.id}.config.providerId": "is required"},
            )
        prompt = _text(await render_value_async(config.get("prompt", ""), ctx.scope))
        messages: list[dict[str, Any]] = []
        system = config.get("system")
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        json_mode = config.get("responseFormat") == "json"
        request = LlmRequest(
            messages=messages,
            temperature=_number(config.get("temperature")),
            max_tokens=_int(config.get("maxTokens")),
            response_format="json" if json_mode else "text",
        )
        scope = CallScope(
            ctx.tenant_id, ctx.tenant_schema, execution_id=ctx.execution_id, node_id=node.id
        )

        async def on_event(message: str, data: dict[str, Any]) -> None:
            await ctx.log(message, level="warning", **data)

        try:
            reply = await self._llm.complete(
                scope, provider_id, request, on_token=ctx.emit_token, on_event=on_event
            )
        except LlmCallFailed as failed:
            if failed.fails_over:
                raise LlmNodeFailed(str(failed)) from None
            raise BadUserInput(str(failed)) from None  # auth, bad request: retrying won't help
        if not json_mode:
            return reply.content
        try:
            return json.loads(reply.content)
        except ValueError as exc:
            preview = reply.content[:_PREVIEW] + ("…" if len(reply.content) > _PREVIEW else "")
            raise LlmNodeFailed(
                f"the model's reply is not valid JSON (responseFormat json): {exc}; "
                f"the reply starts with {preview!r}"
            ) from None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value
