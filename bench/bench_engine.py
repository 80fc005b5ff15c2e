"""Flow engine overhead, measured side by side with bare asyncio in the same run.

    .venv/bin/python bench/bench_engine.py            # 1,000-node DAGs, 9 repeats
    .venv/bin/python bench/bench_engine.py --short    # CI smoke: 200 nodes, 7 repeats
    .venv/bin/python bench/bench_engine.py --check    # exit 1 if over the 1 ms/node target

Scenarios (in-memory store, no-op executors, so what is measured is the engine itself:
scheduling, checkpoints, events):

- chain: INPUT -> n0 -> n1 -> ... -> OUTPUT. Baseline: one asyncio task per node, awaited
  one after the other.
- wide: INPUT -> n0..nN (parallel) -> OUTPUT. Baseline: one task per node, gathered.
- fan-out: INPUT -> 50 nodes sleeping 0.1 s -> OUTPUT. Compared with the longest path
  (0.1 s): a ratio near 1 means the branches really run concurrently (sequential would
  be 50x).

The machine is shared and noisy: the ratios, not the absolute times, are the result.
Each repeat runs the engine and then its baseline back to back, so both see the same
load; the ratio shown is the median of the per-repeat ratios, the times are medians.
Target: the engine takes at most twice as long per node as bare asyncio tasks doing the
same no-op work (chain and wide).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.executions.engine import FlowEngine
from domain.executions.memory import InMemoryExecutionStore
from domain.executions.ports import NodeContext
from domain.executions.state import ExecutionStatus
from domain.flows.model import FlowEdge, FlowGraph, FlowNode

TARGET_US_PER_NODE = 1000.0
TARGET_RATIO = 2.0


async def noop(node: FlowNode, ctx: NodeContext) -> Any:
    return None


def sleeper(seconds: float) -> Callable[[FlowNode, NodeContext], Awaitable[Any]]:
    async def run(node: FlowNode, ctx: NodeContext) -> Any:
        await asyncio.sleep(seconds)
        return node.id

    return run


def chain(n: int) -> FlowGraph:
    nodes = [FlowNode("in", "INPUT")] + [FlowNode(f"n{i}", "TOOL") for i in range(n)]
    nodes.append(FlowNode("out", "OUTPUT"))
    ids = [node.id for node in nodes]
    edges = [FlowEdge(a, b) for a, b in itertools.pairwise(ids)]
    return FlowGraph(tuple(nodes), tuple(edges))


def wide(n: int) -> FlowGraph:
    middle = [FlowNode(f"n{i}", "TOOL") for i in range(n)]
    nodes = [FlowNode("in", "INPUT"), *middle, FlowNode("out", "OUTPUT")]
    edges = [FlowEdge("in", m.id) for m in middle] + [FlowEdge(m.id, "out") for m in middle]
    return FlowGraph(tuple(nodes), tuple(edges))


async def engine_run(graph: FlowGraph, executor: Any) -> float:
    store = InMemoryExecutionStore()
    store.start("bench")
    engine = FlowEngine(store, {"TOOL": executor})
    started = time.perf_counter()
    outcome = await engine.run("bench", "tenant", graph, {"x": 1})
    elapsed = time.perf_counter() - started
    if outcome.status != ExecutionStatus.COMPLETED:
        raise SystemExit(f"benchmark run did not complete: {outcome}")
    return elapsed


async def baseline_chain(n: int) -> float:
    node = FlowNode("n", "TOOL")
    ctx = NodeContext(execution_id="bench", tenant_id="tenant", inputs={})
    started = time.perf_counter()
    for _ in range(n + 2):
        await asyncio.create_task(noop(node, ctx))
    return time.perf_counter() - started


async def baseline_wide(n: int) -> float:
    node = FlowNode("n", "TOOL")
    ctx = NodeContext(execution_id="bench", tenant_id="tenant", inputs={})
    started = time.perf_counter()
    await asyncio.create_task(noop(node, ctx))
    await asyncio.gather(*(asyncio.create_task(noop(node, ctx)) for _ in range(n)))
    await asyncio.create_task(noop(node, ctx))
    return time.perf_counter() - started


async def side_by_side(
    repeats: int, engine: Callable[[], Awaitable[float]], base: Callable[[], Awaitable[float]]
) -> tuple[float, float, float]:
    """Median engine time, median baseline time, median of the per-repeat ratios."""
    engine_times, base_times, ratios = [], [], []
    for _ in range(repeats):
        gc.collect()  # neither side pays for the other's garbage
        engine_t = await engine()
        gc.collect()
        base_t = await base()
        engine_times.append(engine_t)
        base_times.append(base_t)
        ratios.append(engine_t / base_t)
    median = statistics.median
    return median(engine_times), median(base_times), median(ratios)


async def main(short: bool, check: bool) -> int:
    n = 200 if short else 1000
    repeats = 7 if short else 9
    fan, fan_sleep = (20, 0.05) if short else (50, 0.1)

    # warm-up (imports, caches)
    await engine_run(chain(10), noop)
    await engine_run(wide(10), noop)

    rows: list[tuple[str, int, float, float, float, str, float | None]] = []
    for name, graph, base in (
        ("chain", chain(n), lambda: baseline_chain(n)),
        ("wide", wide(n), lambda: baseline_wide(n)),
    ):
        engine_t, base_t, ratio = await side_by_side(
            repeats,
            lambda g=graph: engine_run(g, noop),  # type: ignore[misc]
            base,
        )
        nodes = len(graph.nodes)
        per_node = (engine_t - base_t) / nodes * 1e6
        rows.append(
            (f"{name} no-op", nodes, engine_t, base_t, ratio, "bare asyncio tasks", per_node)
        )

    fan_graph = wide(fan)
    fan_runs = [await engine_run(fan_graph, sleeper(fan_sleep)) for _ in range(min(repeats, 3))]
    fan_t = statistics.median(fan_runs)
    rows.append(
        (
            f"fan-out {fan} x {fan_sleep:g} s",
            fan + 2,
            fan_t,
            fan_sleep,
            fan_t / fan_sleep,
            "longest path",
            None,
        )
    )

    print(f"Flow engine benchmark ({'short' if short else 'full'} mode, {repeats} repeats)\n")
    print("| scenario | nodes | engine | reference | ratio | reference is | overhead/node |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, nodes, engine_t, ref_t, ratio, ref_name, per_node_us in rows:
        overhead = "" if per_node_us is None else f"{per_node_us:.1f} µs"
        print(
            f"| {name} | {nodes} | {engine_t * 1e3:.1f} ms | {ref_t * 1e3:.1f} ms "
            f"| {ratio:.2f}x | {ref_name} | {overhead} |"
        )
    print()
    for name, _, _, _, ratio, _, per_node_us in rows:
        if per_node_us is not None:
            verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
            print(
                f"{name}: engine ≤ {TARGET_RATIO:g}× bare asyncio per node: "
                f"ratio {ratio:.2f}: {verdict}"
            )
    sequential = fan * fan_sleep
    print(
        f"fan-out: {fan_t:.3f} s wall vs {fan_sleep:g} s longest path "
        f"and {sequential:g} s if run one after another ({sequential / fan_t:.1f}x speed-up)."
    )
    worst = max(r[6] for r in rows if r[6] is not None)
    verdict = "OK" if worst < TARGET_US_PER_NODE else "OVER TARGET"
    print(
        f"worst engine overhead: {worst:.1f} µs/node (target < {TARGET_US_PER_NODE:g}): {verdict}"
    )
    fan_ok = fan_t < fan_sleep * 2
    if not fan_ok:
        print("fan-out did not run concurrently (wall > 2x longest path)")
    return 1 if check and (worst >= TARGET_US_PER_NODE or not fan_ok) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="smoke mode for CI")
    parser.add_argument("--check", action="store_true", help="exit 1 when over the target")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.short, args.check)))
