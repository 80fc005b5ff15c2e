"""Flows for execution tests, and helpers to wait for runs (through the API)."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from typing import Any

from tests.support.client import GQL, op
from tests.support.ws import init, recv, subscribe

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
TERMINAL_EVENTS = {"EXECUTION_COMPLETED", "EXECUTION_FAILED", "EXECUTION_CANCELLED"}


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def input_node(**types: str) -> dict[str, Any]:
    """The INPUT node `in`, requiring each named input, of the given JSON type."""
    properties = {key: {"type": type_} for key, type_ in types.items()}
    schema = {"type": "object", "properties": properties, "required": list(types)}
    return {"id": "in", "kind": "INPUT", "config": {"schema": schema}}


def branching(name: str | None = None) -> dict[str, Any]:
    """input → condition → (true) high / (false) low: two OUTPUT branches."""
    return {
        "name": name or _name("branch"),
        "nodes": [
            input_node(score="number"),
            {"id": "check", "kind": "CONDITION", "config": {"expression": "inputs.score > 5"}},
            {"id": "high", "kind": "OUTPUT", "config": {"value": "high: {{ inputs.score }}"}},
            {"id": "low", "kind": "OUTPUT", "config": {"value": "low: {{ inputs.score }}"}},
        ],
        "edges": [
            {"source": "in", "target": "check"},
            {"source": "check", "target": "high", "branch": "true"},
            {"source": "check", "target": "low", "branch": "false"},
        ],
    }


def slow_chain(tool_id: str, seconds: list[float], name: str | None = None) -> dict[str, Any]:
    """input → s0 → s1 → ... → out, each s<i> a TOOL node sleeping seconds[i] (test hook)."""
    ids = [f"s{i}" for i in range(len(seconds))]
    nodes: list[dict[str, Any]] = [{"id": "in", "kind": "INPUT"}]
    nodes += [
        {"id": nid, "kind": "TOOL", "config": {"toolId": tool_id, "testSleepSeconds": s}}
        for nid, s in zip(ids, seconds, strict=True)
    ]
    nodes.append({"id": "out", "kind": "OUTPUT"})
    chain = ["in", *ids, "out"]
    return {
        "name": name or _name("slow"),
        "nodes": nodes,
        "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(chain)],
    }


def merge(tool_id: str, seconds: float = 0.05) -> dict[str, Any]:
    """input → condition → (true) yes / (false) no (slow TOOL nodes) → out (merge)."""
    return {
        "name": _name("merge"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "check", "kind": "CONDITION", "config": {"expression": "inputs.go"}},
            {
                "id": "yes",
                "kind": "TOOL",
                "config": {"toolId": tool_id, "testSleepSeconds": seconds},
            },
            {
                "id": "no",
                "kind": "TOOL",
                "config": {"toolId": tool_id, "testSleepSeconds": seconds},
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "check"},
            {"source": "check", "target": "yes", "branch": "true"},
            {"source": "check", "target": "no", "branch": "false"},
            {"source": "yes", "target": "out"},
            {"source": "no", "target": "out"},
        ],
    }


async def create_flow(gql: GQL, token: str, data: dict[str, Any]) -> dict[str, Any]:
    return (await gql.ok("CreateFlow", {"input": data}, token=token))["createFlow"]


async def execute(
    gql: GQL, token: str, flow_id: str, inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = await gql.ok("ExecuteFlow", {"id": flow_id, "inputs": inputs or {}}, token=token)
    return data["executeFlow"]


async def wait_status(
    gql: GQL,
    token: str,
    execution_id: str,
    statuses: set[str] | None = None,
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll until the execution reaches one of `statuses` (default: terminal)."""
    wanted = statuses or TERMINAL
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = (await gql.ok("Execution", {"id": execution_id}, token=token))["execution"]
        if found["status"] in wanted:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"execution still {found['status']}: {json.dumps(found)[:2000]}")
        await asyncio.sleep(0.05)


async def wait_node(
    gql: GQL, token: str, execution_id: str, node_id: str, status: str, timeout: float = 20.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = (await gql.ok("Execution", {"id": execution_id}, token=token))["execution"]
        runs = {r["nodeId"]: r for r in found["nodeRuns"]}
        if node_id in runs and runs[node_id]["status"] == status:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"node {node_id} never {status}: {json.dumps(found)[:2000]}")
        await asyncio.sleep(0.05)


async def collect_events(
    gql: GQL, token: str, execution_id: str, after: int = 0, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Subscribe over graphql-transport-ws and gather events until `complete`."""
    events: list[dict[str, Any]] = []
    async with gql.connect_ws() as ws:
        assert (await init(ws, {"authorization": f"Bearer {token}"}))["type"] == "connection_ack"
        await subscribe(
            ws, "ev", op("ExecutionEvents"), {"executionId": execution_id, "afterSequence": after}
        )
        while True:
            msg = await recv(ws, timeout)
            if msg["type"] == "complete":
                return events
            assert msg["type"] == "next", msg
            assert not msg["payload"].get("errors"), msg
            events.append(msg["payload"]["data"]["executionEvents"])
