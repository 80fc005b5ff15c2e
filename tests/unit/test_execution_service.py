"""ExecutionService over in-memory ports: start, limits, cancel, publish after commit, follow."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.errors import LimitExceeded, NotFound
from domain.executions.events import EventType
from domain.executions.service import ExecutionLimits, ExecutionService
from domain.executions.state import ExecutionStatus
from domain.flows.model import FlowEdge, FlowNode
from domain.flows.service import Flow
from domain.identity import Principal
from domain.rbac import Role
from tests.unit.execution_fakes import MemoryBus, MemoryRuns, MemoryUnitOfWorkFactory, Recorder

FLOW_ID = "00000000-0000-4000-8000-000000000001"
P = Principal("tenant", "tenant_000000000001", Role.MEMBER, user_id="u1")


def flow() -> Flow:
    now = datetime.now(UTC)
    return Flow(
        id=FLOW_ID,
        name="f",
        description=None,
        version=3,
        nodes=(FlowNode("in", "INPUT"), FlowNode("out", "OUTPUT")),
        edges=(FlowEdge("in", "out"),),
        created_at=now,
        updated_at=now,
    )


def service(**limits: Any) -> tuple[ExecutionService, MemoryRuns, MemoryBus, Recorder, Any]:
    db, bus, recorder = MemoryRuns(), MemoryBus(), Recorder()
    uow = MemoryUnitOfWorkFactory(db, {FLOW_ID: flow()})
    svc = ExecutionService(uow, bus, recorder, ExecutionLimits(**limits), idle_poll=0.05)
    return svc, db, bus, recorder, uow


async def test_execute_flow_stores_a_pending_run_then_announces_and_dispatches_it() -> None:
    svc, db, bus, recorder, uow = service()
    execution = await svc.execute_flow(P, FLOW_ID, {"a": 1})
    assert execution.status == ExecutionStatus.PENDING and execution.flow_version == 3
    assert uow.opened[-1].committed
    assert db.runs[execution.id].execution.inputs == {"a": 1}
    assert bus.statuses_published == [ExecutionStatus.PENDING]
    assert [r.execution_id for r in recorder.refs] == [execution.id]


async def test_over_the_active_limit_nothing_is_stored() -> None:
    svc, db, _bus, recorder, _ = service(max_active=1)
    await svc.execute_flow(P, FLOW_ID, {})
    with pytest.raises(LimitExceeded) as caught:
        await svc.execute_flow(P, FLOW_ID, {})
    assert caught.value.extensions["limit"] == "maxActiveExecutions"
    assert len(db.runs) == 1 and len(recorder.refs) == 1


async def test_an_unknown_flow_is_not_found() -> None:
    svc, *_ = service()
    with pytest.raises(NotFound):
        await svc.execute_flow(P, "00000000-0000-4000-8000-000000000009", {})


async def test_cancel_of_a_pending_run_ends_it_and_publishes_after_commit() -> None:
    svc, _db, bus, _, uow = service()
    execution = await svc.execute_flow(P, FLOW_ID, {})
    bus.published.clear()
    cancelled = await svc.cancel(P, execution.id)
    assert cancelled.status == ExecutionStatus.CANCELLED
    assert cancelled.error == "cancelled before it started"
    assert uow.opened[-1].committed
    assert bus.statuses_published == [ExecutionStatus.CANCELLED]
    [event] = bus.events_published
    assert (event.sequence, event.type) == (1, EventType.EXECUTION_CANCELLED)


async def test_cancel_of_a_running_run_sets_the_flag_and_signals_the_worker() -> None:
    svc, db, bus, _, _ = service()
    execution = await svc.execute_flow(P, FLOW_ID, {})
    db.runs[execution.id].execution.status = ExecutionStatus.RUNNING
    bus.published.clear()
    returned = await svc.cancel(P, execution.id)
    assert returned.cancel_requested and db.runs[execution.id].execution.cancel_requested
    assert [kind for kind, _ in bus.published] == ["cancel"]
    await svc.cancel(P, execution.id)  # again: the flag is set already, the signal repeats
    assert [kind for kind, _ in bus.published] == ["cancel", "cancel"]


async def test_follow_events_replays_the_log_then_ends_at_the_terminal_event() -> None:
    svc, _db, _bus, _, _ = service()
    execution = await svc.execute_flow(P, FLOW_ID, {})
    await svc.cancel(P, execution.id)
    seen = [e async for e in svc.follow_events(P, execution.id, 0)]
    assert [(e.sequence, e.type) for e in seen] == [(1, EventType.EXECUTION_CANCELLED)]


async def test_follow_events_goes_live_once_subscribed() -> None:
    svc, _db, _bus, _, _ = service()
    execution = await svc.execute_flow(P, FLOW_ID, {})
    subscribed = asyncio.Event()

    async def on_subscribed(sequence: int) -> None:
        subscribed.set()

    async def collect() -> list[Any]:
        stream = svc.follow_events(P, execution.id, 0, on_subscribed=on_subscribed)
        return [e async for e in stream]

    follower = asyncio.create_task(collect())
    await asyncio.wait_for(subscribed.wait(), 1)
    await svc.cancel(P, execution.id)
    seen = await asyncio.wait_for(follower, 1)
    assert [(e.sequence, e.type) for e in seen] == [(1, EventType.EXECUTION_CANCELLED)]
