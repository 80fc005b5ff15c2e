"""Bad resource input: BAD_USER_INPUT naming the field, and nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL, error_code

AGENT = {"name": "a", "role": "r", "goal": "g", "backstory": "b"}
TOOL = {"name": "t", "description": "d", "kind": "CUSTOM_PYTHON", "config": {"code": b.PY_CODE}}
PROVIDER = {"name": "p", "provider": "openai", "model": "gpt"}


@pytest.mark.parametrize(
    ("operation", "input", "field"),
    [
        ("CreateAgent", {**AGENT, "name": ""}, "input.name"),
        ("CreateAgent", {**AGENT, "name": "n" * 500}, "input.name"),
        ("CreateAgent", {**AGENT, "goal": "g" * 30_000}, "input.goal"),
        ("CreateAgent", {**AGENT, "temperature": 5.0}, "temperature"),
        ("CreateAgent", {**AGENT, "maxIterations": 0}, "maxIterations"),
        ("CreateTool", {**TOOL, "config": {"code": "def run(:\n"}}, "input.config.code"),
        (
            "CreateTool",
            {**TOOL, "config": {"code": "def other(x):\n    return x\n"}},
            "input.config.code",
        ),
        (
            "CreateTool",
            {**TOOL, "config": {"code": "def run():\n    return 1\n"}},
            "input.config.code",
        ),
        (
            "CreateTool",
            {**TOOL, "config": {"code": b.PY_CODE, "entrypoint": "not valid"}},
            "input.config.entrypoint",
        ),
        (
            "CreateTool",
            {**TOOL, "config": {"code": b.PY_CODE, "timeoutSeconds": 99999}},
            "input.config.timeoutSeconds",
        ),
        ("CreateTool", {**TOOL, "config": "not an object"}, "input.config"),
        (
            "CreateTool",
            {**TOOL, "kind": "BUILTIN", "config": {"builtin": "rm_rf"}},
            "input.config.builtin",
        ),
        (
            "CreateTool",
            {**TOOL, "kind": "DOCKER", "config": {"image": "UPPER CASE!", "command": ["x"]}},
            "input.config.image",
        ),
        (
            "CreateTool",
            {**TOOL, "kind": "DOCKER", "config": {"image": "python:3", "command": "echo hi"}},
            "input.config.command",
        ),
        (
            "CreateTool",
            {
                **TOOL,
                "kind": "DOCKER",
                "config": {"image": "python:3", "command": ["x"], "env": {"1BAD": "v"}},
            },
            "input.config.env",
        ),
        ("CreateTool", {**TOOL, "inputSchema": {"type": "no-such-type"}}, "input.inputSchema"),
        ("CreateTool", {**TOOL, "inputSchema": [1, 2]}, "input.inputSchema"),
        ("CreateLlmProvider", {**PROVIDER, "provider": "Open AI!"}, "input.provider"),
        ("CreateLlmProvider", {**PROVIDER, "baseUrl": "ftp://x"}, "input.baseUrl"),
        ("CreateLlmProvider", {**PROVIDER, "model": ""}, "input.model"),
    ],
)
async def test_bad_resource_input(
    gql: GQL, team: Team, operation: str, input: dict[str, Any], field: str
) -> None:
    body = await gql.op(operation, {"input": input}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT", body
    fields = body["errors"][0]["extensions"]["fields"]
    assert any(k.endswith(field) for k in fields), fields
    listing = {
        "CreateAgent": ("Agents", "agents"),
        "CreateTool": ("Tools", "tools"),
        "CreateLlmProvider": ("LlmProviders", "llmProviders"),
    }[operation]
    edges = (await gql.ok(listing[0], token=team.token))[listing[1]]["edges"]
    # nothing written; a new team has only the laptop profile's `Local (scripted)` provider
    assert [e for e in edges if e["node"]["name"] != "Local (scripted)"] == []


async def test_bad_crew_input(gql: GQL, team: Team) -> None:
    a = await b.agent(gql, team.token)
    other = await b.agent(gql, team.token)
    cases = [
        ({"name": "c", "agentIds": [], "tasks": []}, "input.agentIds"),
        (
            {
                "name": "c",
                "agentIds": [a["id"], a["id"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": a["id"]}],
            },
            "input.agentIds",
        ),
        (
            {
                "name": "c",
                "agentIds": [a["id"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": other["id"]}],
            },
            "input.tasks[0].agentId",
        ),
        (
            {
                "name": "c",
                "agentIds": [a["id"]],
                "tasks": [{"description": "", "expectedOutput": "e", "agentId": a["id"]}],
            },
            "input.tasks[0].description",
        ),
        (
            {
                "name": "c",
                "process": "chaotic",
                "agentIds": [a["id"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": a["id"]}],
            },
            "input.process",
        ),
        (
            {
                "name": "c",
                "process": "hierarchical",
                "agentIds": [a["id"]],
                "tasks": [{"description": "d", "expectedOutput": "e", "agentId": a["id"]}],
            },
            "input.managerAgentId",
        ),
    ]
    for input, field in cases:
        body = await gql.op("CreateCrew", {"input": input}, token=team.token)
        assert error_code(body) == "BAD_USER_INPUT", (input, body)
        assert field in body["errors"][0]["extensions"]["fields"], body
    assert (await gql.ok("Crews", token=team.token))["crews"]["edges"] == []


async def test_bad_flow_input(gql: GQL, team: Team) -> None:
    w = await b.world(gql, team.token)
    base = b.graph(w["agent"]["id"], w["crew"]["id"], w["tool"]["id"])
    dup = {"nodes": [*base["nodes"], base["nodes"][0]], "edges": base["edges"]}
    unknown_edge = {
        "nodes": base["nodes"],
        "edges": [*base["edges"], {"source": "out", "target": "ghost"}],
    }
    bad_config = {
        "nodes": [{**n, "config": "text"} if n["id"] == "in" else n for n in base["nodes"]],
        "edges": base["edges"],
    }
    bad_template = {
        "nodes": [
            {**n, "config": {**n["config"], "task": "{{ secrets.key }}"}}
            if n["id"] == "research"
            else n
            for n in base["nodes"]
        ],
        "edges": base["edges"],
    }
    for graph in (dup, unknown_edge, bad_config, bad_template):
        body = await gql.op("CreateFlow", {"input": {"name": "bad", **graph}}, token=team.token)
        assert error_code(body) == "BAD_USER_INPUT", body
        assert body["errors"][0]["extensions"]["fields"], body
    kind = await gql.op(
        "CreateFlow",
        {"input": {"name": "bad", "nodes": [{"id": "x", "kind": "WORMHOLE"}], "edges": []}},
        token=team.token,
    )
    assert error_code(kind) == "BAD_USER_INPUT"
    assert [
        e["node"]["name"] for e in (await gql.ok("Flows", token=team.token))["flows"]["edges"]
    ] == [w["flow"]["name"]]


async def test_flow_node_limit(gql: GQL, team: Team) -> None:
    nodes = [{"id": f"n{i}", "kind": "OUTPUT"} for i in range(2001)]
    body = await gql.op(
        "CreateFlow", {"input": {"name": "huge", "nodes": nodes, "edges": []}}, token=team.token
    )
    assert error_code(body) in ("LIMIT_EXCEEDED",), body
    assert "2000 nodes" in body["errors"][0]["message"]
