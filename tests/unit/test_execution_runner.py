"""ExecutionRunner and Sweeper over in-memory ports: claims, publishing, leases, resume."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from domain.executions.events import EventType
from domain.executions.ports import NodeContext, NodeResult
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.executions.worker import ExecutionRunner, Sweeper
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from tests.unit.execution_fakes import MemoryBus, MemoryLeases, MemoryRuns, MemoryRunStore, Recorder

GRAPH = FlowGraph(
    (FlowNode("in", "INPUT"), FlowNode("work", "TOOL"), FlowNode("out", "OUTPUT")),
    (FlowEdge("in", "work"), FlowEdge("work", "out")),
)


def pending(db: MemoryRuns, n: int = 1, **changes: Any) -> ExecutionRef:
    ref = ExecutionRef("tenant", "tenant_000000000001", f"run-{n}")
    execution = Execution(
        ref.execution_id, ExecutionStatus.PENDING, {"x": n}, datetime.now(UTC), **changes
    )
    db.add(execution, ref, GRAPH)
    return ref


class Tool:
    def __init__(self) -> None:
        self.contexts: list[NodeContext] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, node: FlowNode, ctx: NodeContext) -> Any:
        self.contexts.append(ctx)
        await ctx.emit_token("a")
        await ctx.emit_token("b")
        await self.release.wait()
        return {"seen": ctx.inputs["x"]}


def runner(db: MemoryRuns, bus: MemoryBus, tool: Tool, **kw: Any) -> ExecutionRunner:
    def stores(ref: ExecutionRef, owner: str) -> MemoryRunStore:
        return MemoryRunStore(db, ref, owner)

    options: dict[str, Any] = {"bus": bus, "owner": "w1", "lease_seconds": 30}
    return ExecutionRunner(MemoryLeases(db), stores, {"TOOL": tool}, **(options | kw))


async def test_a_run_is_claimed_run_and_announced_after_each_write() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    ref = pending(db)
    outcome = await runner(db, bus, tool).run(ref)
    assert outcome is not None and outcome.status == ExecutionStatus.COMPLETED
    assert bus.statuses_published == [ExecutionStatus.RUNNING, ExecutionStatus.COMPLETED]
    events = bus.events_published
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.sequence for e in db.runs[ref.execution_id].events] == [e.sequence for e in events]
    types = [e.type for e in events]
    assert types.count(EventType.TOKEN) == 2
    assert types.index(EventType.TOKEN) > types.index(EventType.NODE_STARTED)
    last_token = len(types) - 1 - types[::-1].index(EventType.TOKEN)
    assert types[last_token + 1] == EventType.NODE_COMPLETED  # tokens written before it
    assert types[-1] == EventType.EXECUTION_COMPLETED
    [ctx] = tool.contexts
    assert ctx.tenant_schema == ref.tenant_schema and ctx.cancelled.is_set()


async def test_a_claim_that_ends_a_cancelled_run_publishes_its_terminal_event() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    ref = pending(db, cancel_requested=True)
    assert await runner(db, bus, tool).run(ref) is None
    assert bus.statuses_published == [ExecutionStatus.CANCELLED]
    [event] = bus.events_published
    assert (event.sequence, event.type) == (1, EventType.EXECUTION_CANCELLED)
    assert tool.contexts == []


async def test_gives_up_after_max_attempts() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    ref = pending(db, attempts=2)
    assert await runner(db, bus, tool, max_attempts=2).run(ref) is None
    ended = db.runs[ref.execution_id].execution
    assert ended.status == ExecutionStatus.FAILED and ended.error
    assert ended.error.startswith("gave up after 2 attempts")
    assert [e.type for e in bus.events_published] == [EventType.EXECUTION_FAILED]


async def test_a_live_lease_or_a_full_tenant_leaves_the_run_alone() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    busy = pending(db, 1)
    db.runs[busy.execution_id].execution.status = ExecutionStatus.RUNNING
    db.runs[busy.execution_id].lease_owner, db.runs[busy.execution_id].lease_expires = "w0", 99
    waiting = pending(db, 2)
    one_slot = runner(db, bus, tool, max_running_per_tenant=1)
    assert await one_slot.run(busy) is None  # held by w0
    assert await one_slot.run(waiting) is None  # the tenant's one slot is taken
    assert bus.published == [] and tool.contexts == []
    assert db.runs[waiting.execution_id].execution.status == ExecutionStatus.PENDING


async def test_resume_skips_checkpointed_nodes_and_the_context_carries_the_attempt() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    ref = pending(db, attempts=1)
    run = db.runs[ref.execution_id]
    run.execution.status = ExecutionStatus.RUNNING
    run.lease_owner, run.lease_expires = "dead worker", -1.0  # expired
    run.nodes["in"] = NodeResult("in", NodeStatus.COMPLETED, output={"x": 1})
    run.nodes["work"] = NodeResult("work", NodeStatus.RUNNING)
    outcome = await runner(db, bus, tool).run(ref)
    assert outcome is not None and outcome.status == ExecutionStatus.COMPLETED
    started = [e for e in bus.events_published if e.type == EventType.EXECUTION_STARTED]
    assert [e.data for e in started] == [{"resumed": True, "checkpointedNodes": 1}]
    assert run.execution.attempts == 2 and len(tool.contexts) == 1


async def test_shutdown_gives_the_run_back_and_announces_it() -> None:
    db, bus, tool = MemoryRuns(), MemoryBus(), Tool()
    tool.release.clear()
    ref = pending(db)
    recorder = Recorder()
    worker = runner(db, bus, tool, dispatcher=recorder)
    task = asyncio.create_task(worker.run(ref))
    while not tool.contexts:
        await asyncio.sleep(0.01)
    await worker.shutdown()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.refs == [ref]
    assert bus.statuses_published == [ExecutionStatus.RUNNING, ExecutionStatus.PENDING]
    assert db.runs[ref.execution_id].nodes["work"].status == NodeStatus.PENDING
    assert tool.contexts[0].cancelled.is_set()


async def test_sweeper_requeues_expired_leases_and_redispatches_stale_pending_runs() -> None:
    db, bus = MemoryRuns(), MemoryBus()
    expired = pending(db, 1)
    run = db.runs[expired.execution_id]
    run.execution.status = ExecutionStatus.RUNNING
    run.lease_owner, run.lease_expires = "dead worker", 5.0
    stale = pending(db, 2)
    recorder = Recorder()
    sweeper = Sweeper(MemoryLeases(db), recorder, bus=bus, redispatch_after=30)
    assert await sweeper.sweep_once() == []  # lease still live, dispatch recent
    db.now = 31.0
    assert await sweeper.sweep_once() == [expired, stale]
    assert recorder.refs == [expired, stale]
    assert run.execution.status == ExecutionStatus.PENDING
    assert bus.statuses_published == [ExecutionStatus.PENDING]
    assert await sweeper.sweep_once() == []  # both dispatched just now


async def test_a_thread_sees_the_attempt_end() -> None:
    from domain.executions.ports import Cancellation

    cancelled = Cancellation()
    waiter = asyncio.create_task(asyncio.to_thread(cancelled.wait_blocking, 5))
    loop_waiter = asyncio.create_task(cancelled.wait())
    await asyncio.sleep(0.05)
    assert not cancelled.is_set() and not waiter.done()
    cancelled.set()
    assert await asyncio.wait_for(waiter, 1) is True
    await asyncio.wait_for(loop_waiter, 1)
    assert Cancellation().wait_blocking(0.01) is False
