"""Create resources through the API, the way a client would."""

from __future__ import annotations

import uuid
from typing import Any

from tests.support.client import GQL

PY_CODE = "def run(input):\n    return {'echo': input}\n"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _create(
    gql: GQL, token: str, operation: str, prefix: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Run `operation` (CreateTool, ...) with a fresh name and `data`; what it created."""
    body = await gql.ok(operation, {"input": {"name": _name(prefix), **data}}, token=token)
    result: dict[str, Any] = body[operation[0].lower() + operation[1:]]
    return result


async def provider(gql: GQL, token: str, **over: Any) -> dict[str, Any]:
    defaults = {"provider": "openai", "model": "gpt-4o-mini", "apiKey": "sk-test-secret-123"}
    return await _create(gql, token, "CreateLlmProvider", "llm", {**defaults, **over})


async def tool(gql: GQL, token: str, **over: Any) -> dict[str, Any]:
    defaults = {
        "description": "echo",
        "kind": "CUSTOM_PYTHON",
        "config": {"code": PY_CODE},
        "inputSchema": {"type": "object"},
    }
    return await _create(gql, token, "CreateTool", "tool", {**defaults, **over})


async def agent(gql: GQL, token: str, **over: Any) -> dict[str, Any]:
    defaults = {"role": "Researcher", "goal": "Find facts", "backstory": "Curious"}
    return await _create(gql, token, "CreateAgent", "agent", {**defaults, **over})


async def crew(gql: GQL, token: str, agent_ids: list[str], **over: Any) -> dict[str, Any]:
    task = {"description": "Research", "expectedOutput": "Notes", "agentId": agent_ids[0]}
    data = {"agentIds": agent_ids, "tasks": [task], **over}
    return await _create(gql, token, "CreateCrew", "crew", data)


def graph(agent_id: str, crew_id: str, tool_id: str) -> dict[str, Any]:
    """input → agent → condition → (true) crew / (false) tool → output."""
    return {
        "nodes": [
            {
                "id": "in",
                "kind": "INPUT",
                "config": {
                    "schema": {"type": "object", "properties": {"topic": {"type": "string"}}}
                },
            },
            {
                "id": "research",
                "kind": "AGENT",
                "config": {"agentId": agent_id, "task": "Research {{ inputs.topic }}"},
            },
            {
                "id": "check",
                "kind": "CONDITION",
                "config": {"expression": "inputs.topic == 'deep'"},
            },
            {
                "id": "team",
                "kind": "CREW",
                "config": {"crewId": crew_id, "inputs": {"notes": "{{ nodes.research.output }}"}},
            },
            {
                "id": "echo",
                "kind": "TOOL",
                "config": {"toolId": tool_id, "input": {"text": "{{ nodes.research.output }}"}},
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "research"},
            {"source": "research", "target": "check"},
            {"source": "check", "target": "team", "branch": "true"},
            {"source": "check", "target": "echo", "branch": "false"},
            {"source": "team", "target": "out"},
            {"source": "echo", "target": "out"},
        ],
    }


async def flow(
    gql: GQL, token: str, agent_id: str, crew_id: str, tool_id: str, **over: Any
) -> dict[str, Any]:
    data = {"description": "demo", **graph(agent_id, crew_id, tool_id), **over}
    return await _create(gql, token, "CreateFlow", "flow", data)


async def world(gql: GQL, token: str, **provider_over: Any) -> dict[str, Any]:
    """A provider, a tool, two agents, a crew and a flow that uses them."""
    p = await provider(gql, token, **provider_over)
    t = await tool(gql, token)
    a = await agent(gql, token, llmProviderId=p["id"], toolIds=[t["id"]])
    b = await agent(gql, token)
    c = await crew(gql, token, [a["id"], b["id"]])
    f = await flow(gql, token, a["id"], c["id"], t["id"])
    return {"provider": p, "tool": t, "agent": a, "agent2": b, "crew": c, "flow": f}
