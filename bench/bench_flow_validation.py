"""Benchmark flow validation: time for layered DAGs and chains, and linear scaling.

    .venv/bin/python bench/bench_flow_validation.py [--short]

Every node carries a template (or expression) that reads the output of one of its
predecessors, so the numbers include parsing templates and the upstream check. Most templates
are plain placeholders (the validator's fast path); every COMPLEX_EVERY-th node uses tags and
filters, which take the full Jinja parse.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain.flows.expressions import clear_caches
from domain.flows.graph import validate_flow
from domain.flows.model import FlowEdge, FlowGraph, FlowNode, NodeKind

KINDS = (NodeKind.LLM, NodeKind.AGENT, NodeKind.TOOL, NodeKind.CREW)
COMPLEX_EVERY = 50


def _work_node(node_id: str, kind: NodeKind, upstream: str, complex_template: bool) -> FlowNode:
    ref = f"{{{{ nodes['{upstream}'].output }}}}"
    if complex_template:
        ref = (
            f"{{% if inputs.verbose %}}{{{{ nodes['{upstream}'].output | trim }}}}"
            f"{{% else %}}{{{{ nodes['{upstream}'].output | truncate(200) }}}}{{% endif %}}"
        )
    if kind is NodeKind.LLM:
        config = {"providerId": "p", "prompt": f"Summarise {ref} for {{{{ inputs.topic }}}}"}
    elif kind is NodeKind.AGENT:
        config = {"agentId": "a", "task": f"Check {ref}", "retries": 2}
    elif kind is NodeKind.TOOL:
        config = {"toolId": "t", "input": {"query": ref}}
    else:
        config = {"crewId": "c", "inputs": {"text": ref}, "timeoutSeconds": 60}
    return FlowNode(node_id, kind.value, config=config)


def layered_dag(total: int, width: int, prefix: str) -> FlowGraph:
    """INPUT -> layers of ``width`` nodes, each fed by two nodes of the layer before -> OUTPUT."""
    nodes = [FlowNode(f"{prefix}in", NodeKind.INPUT.value, config={"schema": {"type": "object"}})]
    edges: list[FlowEdge] = []
    has_successor: set[str] = set()
    previous = [f"{prefix}in"]
    remaining = total - 2
    layer = 0
    while remaining > 0:
        current = [f"{prefix}n{layer}_{i}" for i in range(min(width, remaining))]
        for i, node_id in enumerate(current):
            sources = {previous[i % len(previous)], previous[(i + 1) % len(previous)]}
            upstream = previous[i % len(previous)]
            kind = KINDS[(layer + i) % len(KINDS)]
            nodes.append(_work_node(node_id, kind, upstream, len(nodes) % COMPLEX_EVERY == 0))
            edges.extend(FlowEdge(source, node_id) for source in sorted(sources))
            has_successor.update(sources)
        remaining -= len(current)
        previous = current
        layer += 1
    out = f"{prefix}out"
    edges.extend(FlowEdge(node.id, out) for node in nodes[1:] if node.id not in has_successor)
    nodes.append(FlowNode(out, NodeKind.OUTPUT.value, config={"value": "{{ inputs.topic }}"}))
    return FlowGraph(tuple(nodes), tuple(edges))


def chain(total: int, prefix: str) -> FlowGraph:
    """INPUT -> n1 -> n2 -> ... -> OUTPUT, with a CONDITION every 100 nodes."""
    ids = [f"{prefix}c{i}" for i in range(total)]
    nodes = [FlowNode(ids[0], NodeKind.INPUT.value)]
    edges: list[FlowEdge] = []
    for i in range(1, total - 1):
        if i % 100 == 0:
            expression = f"len(str(nodes['{ids[i - 1]}'].output)) > 3"
            nodes.append(
                FlowNode(ids[i], NodeKind.CONDITION.value, config={"expression": expression})
            )
        else:
            kind = KINDS[i % len(KINDS)]
            nodes.append(_work_node(ids[i], kind, ids[i - 1], i % COMPLEX_EVERY == 1))
    nodes.append(FlowNode(ids[-1], NodeKind.OUTPUT.value))
    for i in range(total - 1):
        source = nodes[i]
        if source.kind == NodeKind.CONDITION.value:
            edges.append(FlowEdge(ids[i], ids[i + 1], "true"))
            edges.append(FlowEdge(ids[i], ids[-1], "false"))
        else:
            edges.append(FlowEdge(ids[i], ids[i + 1]))
    return FlowGraph(tuple(nodes), tuple(edges))


def best_time(graph: FlowGraph, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        clear_caches()  # measure cold parsing, not the template cache
        gc.collect()
        gc.disable()  # like timeit: collector pauses grow with the heap and blur the scaling
        try:
            started = time.perf_counter()
            result = validate_flow(graph)
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        if not result.valid:
            raise SystemExit(f"benchmark graph is invalid: {result.errors[:3]}")
        best = min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="smaller graphs, one repeat")
    args = parser.parse_args()
    big, small, chain_size, repeats = (
        (2_000, 200, 200, 1) if args.short else (10_000, 1_000, 1_000, 3)
    )

    cases: list[tuple[str, Callable[[], FlowGraph]]] = [
        (f"layered DAG {small}", lambda: layered_dag(small, 50, "s")),
        (f"layered DAG {big}", lambda: layered_dag(big, 100, "b")),
        (f"chain {chain_size}", lambda: chain(chain_size, "k")),
    ]
    print(f"{'graph':<22}{'nodes':>8}{'edges':>8}{'time ms':>10}{'us/node':>10}")
    timings: dict[str, float] = {}
    for name, build in cases:
        graph = build()
        seconds = best_time(graph, repeats)
        timings[name] = seconds
        per_node = seconds / len(graph.nodes) * 1e6
        print(
            f"{name:<22}{len(graph.nodes):>8}{len(graph.edges):>8}{seconds * 1e3:>10.1f}{per_node:>10.1f}"
        )
    ratio = timings[f"layered DAG {big}"] / timings[f"layered DAG {small}"]
    print(
        f"\nscaling: {big} / {small} nodes = {big // small}x nodes -> {ratio:.1f}x time (linear ~ {big // small})"
    )


if __name__ == "__main__":
    main()
