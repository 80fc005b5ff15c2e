"""Rows of the execution tables <-> domain records, and JSON PostgreSQL accepts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from domain.executions.events import EventType, ExecutionEvent
from domain.executions.ports import NodeResult
from domain.executions.records import Execution
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from persistence.repositories.sql import Row


def json_text(value: Any) -> str:
    """JSON text for a jsonb parameter: non-JSON objects become strings, NaN null, NUL U+FFFD."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_sanitize(value))
    return json.dumps(_sanitize(value)) if "\\u0000" in text else text


def json_param(value: Any) -> str | None:
    """`json_text`, keeping None as SQL NULL."""
    return None if value is None else json_text(value)


def clean_text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL."""
    return value.replace("\x00", "\ufffd") if value else value


def _sanitize(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k).replace("\x00", "\ufffd"): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_sanitize(v) for v in value]
    return str(value).replace("\x00", "\ufffd")


def to_execution(r: Row) -> Execution:
    inputs = r["inputs"]
    return Execution(
        id=str(r["id"]),
        status=ExecutionStatus(r["status"]),
        inputs=inputs if inputs is not None else {},
        created_at=r["created_at"],
        flow_id=str(r["flow_id"]) if r["flow_id"] else None,
        flow_version=r["flow_version"],
        crew_id=str(r["crew_id"]) if r["crew_id"] else None,
        outputs=r["outputs"],
        error=r["error"],
        cancel_requested=bool(r["cancel_requested"]),
        attempts=r["attempts"],
        last_sequence=r["last_sequence"],
        created_by=r["created_by"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
    )


def to_event(r: Row) -> ExecutionEvent:
    return ExecutionEvent(
        execution_id=str(r["execution_id"]),
        sequence=r["sequence"],
        type=EventType(r["type"]),
        node_id=r["node_id"],
        at=r["at"],
        data=r["data"],
    )


def to_node_result(r: Row) -> NodeResult:
    return NodeResult(
        node_id=r["node_id"],
        status=NodeStatus(r["status"]),
        output=r["output"],
        error=r["error"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        attempts=r["attempts"],
    )


def graph_json(graph: FlowGraph) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": n.id, "kind": n.kind, "name": n.name, "config": n.config} for n in graph.nodes
        ],
        "edges": [
            {"source": e.source, "target": e.target, "branch": e.branch} for e in graph.edges
        ],
    }


def graph_from(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> FlowGraph:
    return FlowGraph(
        tuple(FlowNode(n["id"], n["kind"], n.get("name"), n.get("config") or {}) for n in nodes),
        tuple(FlowEdge(e["source"], e["target"], e.get("branch")) for e in edges),
    )
