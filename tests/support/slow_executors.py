"""Test-only node executors: `build_container(..., wrap_executors=wrap)` in tests, and
`python -m tests.support.cli serve|worker` for subprocesses.

INPUT / CONDITION / OUTPUT finish in microseconds and model nodes need a model; to watch
a run mid-flight without either (cancel it, kill its worker) the tests use TOOL nodes whose config carries `testSleepSeconds`:
such a node sleeps that long (after `testLogEvents` LOG events, if set) and returns
{"node", "slept", "pid"}. Every other TOOL node
goes to the real TOOL executor (or fails NOT_CONFIGURED without one), so this hook
changes nothing else.

With CREWGRAPH_TEST_EXECUTOR_LOG set, each start of a sleeping node appends a line
"<execution id> <node id> <pid>" to that file, so a test can count how often each node ran
(across worker processes).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

from domain.errors import NotConfigured
from domain.executions.builtins import missing_executor_message
from domain.executions.ports import NodeContext, NodeExecutor
from domain.flows.model import FlowNode

SLEEP_KEY = "testSleepSeconds"
LOGS_KEY = "testLogEvents"  # emit this many LOG events before sleeping
INTERVAL_KEY = "testLogIntervalSeconds"  # pace them (benchmarks); each carries its time "t"
GATE_KEY = "testWaitForFile"  # benchmarks: start only once this file exists


def wrap(executors: Mapping[str, NodeExecutor]) -> dict[str, NodeExecutor]:
    real = executors.get("TOOL")

    async def tool(node: FlowNode, ctx: NodeContext) -> Any:
        seconds = node.config.get(SLEEP_KEY)
        if seconds is None:
            if real is None:
                raise NotConfigured(missing_executor_message("TOOL"))
            return await real(node, ctx)
        path = os.environ.get("CREWGRAPH_TEST_EXECUTOR_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{ctx.execution_id} {node.id} {os.getpid()}\n")
        gate = node.config.get(GATE_KEY)
        if gate:  # benchmarks: wait until the client side is ready
            deadline = time.monotonic() + 600
            while not os.path.exists(gate) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        interval = float(node.config.get(INTERVAL_KEY, 0))
        start = time.monotonic()
        for i in range(int(node.config.get(LOGS_KEY, 0))):  # LOG events (a burst, or paced)
            if interval > 0:
                await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
            await ctx.log(f"log {i}", index=i, t=time.time())
        await ctx.log(f"sleeping {seconds} s", seconds=seconds)
        await asyncio.sleep(float(seconds))
        return {"node": node.id, "slept": seconds, "pid": os.getpid()}

    return {**executors, "TOOL": tool}
