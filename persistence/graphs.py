"""Flow graphs as stored in JSONB (flow versions, and the graph a crew run pins)."""

from __future__ import annotations

from typing import Any

from domain.flows.model import FlowEdge, FlowGraph, FlowNode


def nodes_from(data: list[dict[str, Any]]) -> tuple[FlowNode, ...]:
    return tuple(FlowNode(n["id"], n["kind"], n.get("name"), n.get("config") or {}) for n in data)


def edges_from(data: list[dict[str, Any]]) -> tuple[FlowEdge, ...]:
    return tuple(FlowEdge(e["source"], e["target"], e.get("branch")) for e in data)


def graph_from(nodes: list[dict[str, Any]], edges: list[dict[str, Any]]) -> FlowGraph:
    return FlowGraph(nodes_from(nodes), edges_from(edges))


def nodes_json(nodes: tuple[FlowNode, ...]) -> list[dict[str, Any]]:
    return [{"id": n.id, "kind": n.kind, "name": n.name, "config": n.config} for n in nodes]


def edges_json(edges: tuple[FlowEdge, ...]) -> list[dict[str, Any]]:
    return [{"source": e.source, "target": e.target, "branch": e.branch} for e in edges]


def graph_json(graph: FlowGraph) -> dict[str, Any]:
    return {"nodes": nodes_json(graph.nodes), "edges": edges_json(graph.edges)}
