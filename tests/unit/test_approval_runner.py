"""Waiting runs around the worker: claims, leases, the sweeper, resolveApproval (fakes)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.errors import BadUserInput, Conflict, Forbidden, NotFound
from domain.executions.claims import ClaimAction, ClaimPolicy, ClaimState
from domain.executions.events import EventType
from domain.executions.records import Execution, ExecutionRef
from domain.executions.service import ExecutionService
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.executions.worker import ExecutionRunner, Sweeper
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from domain.identity import Principal
from domain.rbac import Role
from tests.unit.execution_fakes import (
    MemoryBus,
    MemoryLeases,
    MemoryRuns,
    MemoryRunStore,
    MemoryUnitOfWorkFactory,
    Recorder,
)

pytestmark = pytest.mark.timeout(30)
ET = EventType
S = ExecutionStatus
SCHEMA = "tenant_000000000001"
MEMBER = Principal("tenant", SCHEMA, Role.MEMBER, user_id="u1", actor_name="mia@example.com")


def graph(**config: Any) -> FlowGraph:
    return FlowGraph(
        (
            FlowNode("in", "INPUT"),
            FlowNode("ask", "APPROVAL", None, {"prompt": "ok {{ inputs.x }}?", **config}),
            FlowNode("yes", "OUTPUT", None, {"value": "yes"}),
            FlowNode("no", "OUTPUT", None, {"value": "no"}),
        ),
        (FlowEdge("in", "ask"), FlowEdge("ask", "yes", "true"), FlowEdge("ask", "no", "false")),
    )


def pending(db: MemoryRuns, g: FlowGraph, n: int = 1) -> ExecutionRef:
    ref = ExecutionRef("tenant", SCHEMA, f"00000000-0000-4000-8000-00000000000{n}")
    db.add(Execution(ref.execution_id, S.PENDING, {"x": n}, datetime.now(UTC)), ref, g)
    return ref


class World:
    def __init__(self) -> None:
        self.db, self.bus, self.dispatcher = MemoryRuns(), MemoryBus(), Recorder()
        self.finished: list[ExecutionRef] = []

        async def finished(ref: ExecutionRef) -> None:
            self.finished.append(ref)

        def stores(ref: ExecutionRef, owner: str) -> MemoryRunStore:
            return MemoryRunStore(self.db, ref, owner)

        self.leases = MemoryLeases(self.db)
        self.runner = ExecutionRunner(
            self.leases,
            stores,
            {},
            bus=self.bus,
            owner="w1",
            dispatcher=self.dispatcher,
            on_finished=[finished],
            approval_poll=0.02,
        )
        self.sweeper = Sweeper(self.leases, self.dispatcher, bus=self.bus, redispatch_after=0)
        self.service = ExecutionService(
            MemoryUnitOfWorkFactory(self.db), self.bus, self.dispatcher, idle_poll=0.05
        )

    def events(self, ref: ExecutionRef) -> list[EventType]:
        return [e.type for e in self.db.runs[ref.execution_id].events]


def test_claims_skip_waiting_runs_and_do_not_count_a_wake_as_an_attempt() -> None:
    policy = ClaimPolicy(max_running=1, max_attempts=2)
    assert policy.decide(ClaimState(S.WAITING)).action == ClaimAction.SKIP
    assert policy.decide(ClaimState(S.WAITING, cancel_requested=True)).action == ClaimAction.SKIP
    worn = ClaimState(S.PENDING, attempts=2, wake=True)
    woken = policy.decide(worn)
    assert woken.action == ClaimAction.START and woken.wake and not woken.resume
    assert policy.decide(ClaimState(S.PENDING, attempts=2)).action == ClaimAction.END
    # A crash after the wake is a new attempt again.
    crashed = policy.decide(ClaimState(S.RUNNING, attempts=1, wake=True))
    assert crashed.action == ClaimAction.START and crashed.resume and not crashed.wake
    # Cancel still wins over a wake.
    assert policy.decide(ClaimState(S.PENDING, cancel_requested=True, wake=True)).action == (
        ClaimAction.END
    )


async def test_a_waiting_run_holds_no_lease_and_resumes_once_when_answered() -> None:
    w = World()
    ref = pending(w.db, graph())
    outcome = await w.runner.run(ref)
    assert outcome is not None and outcome.status == S.WAITING
    run = w.db.runs[ref.execution_id]
    assert run.execution.status == S.WAITING and run.lease_owner is None
    assert run.execution.attempts == 1
    assert w.bus.statuses_published[-1] == S.WAITING
    assert w.finished == []  # waiting is not finished
    assert w.runner.active == []
    # The sweeper neither requeues nor redispatches it.
    w.db.now += 1000
    assert await w.sweeper.sweep_once() == []
    # A duplicate dispatch does nothing.
    assert await w.runner.run(ref) is None and w.db.runs[ref.execution_id].execution.status == (
        S.WAITING
    )
    [pending_approval] = await w.service.pending_approvals(MEMBER, run.execution)
    assert pending_approval.prompt == "ok 1?" and pending_approval.node_id == "ask"

    w.dispatcher.refs.clear()
    resolved = await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", True, None, "ok")
    assert resolved.status == S.PENDING
    assert [r.execution_id for r in w.dispatcher.refs] == [ref.execution_id]
    assert w.events(ref)[-1] == ET.EXECUTION_RESUMED
    with pytest.raises(Conflict):
        await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", False)

    outcome = await w.runner.run(ref)
    assert outcome is not None and outcome.status == S.COMPLETED
    assert outcome.outputs == {"yes": "yes"}
    assert w.db.runs[ref.execution_id].execution.attempts == 1  # the resume is no attempt
    events = w.events(ref)
    assert events.count(ET.EXECUTION_STARTED) == 1
    assert events[events.index(ET.EXECUTION_RESUMED) + 1] == ET.NODE_COMPLETED
    output = w.db.runs[ref.execution_id].nodes["ask"].output
    assert output["by"] == "mia@example.com" and output["comment"] == "ok"
    assert w.finished == [ref]
    assert await w.service.pending_approvals(MEMBER, w.db.runs[ref.execution_id].execution) == []


async def test_answers_are_checked_and_scoped() -> None:
    w = World()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    ref = pending(w.db, graph(inputSchema=schema))
    await w.runner.run(ref)
    with pytest.raises(BadUserInput) as bad:
        await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", True, {"n": "x"})
    assert "input.n" in (bad.value.fields or {})
    with pytest.raises(BadUserInput):
        await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", True, None)
    with pytest.raises(NotFound):
        await w.service.resolve_approval(MEMBER, ref.execution_id, "yes", True, {"n": 1})
    other = Principal("t2", "tenant_000000000002", Role.MEMBER, user_id="u2")
    with pytest.raises(NotFound):
        await w.service.resolve_approval(other, ref.execution_id, "ask", True, {"n": 1})
    viewer = Principal("tenant", SCHEMA, Role.VIEWER, user_id="u3")
    with pytest.raises(Forbidden):
        await w.service.resolve_approval(viewer, ref.execution_id, "ask", True, {"n": 1})
    assert w.db.runs[ref.execution_id].execution.status == S.WAITING  # nothing written
    resolved = await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", True, {"n": 1})
    assert resolved.status == S.PENDING


async def test_the_sweeper_times_a_waiting_run_out_once() -> None:
    w = World()
    ref = pending(w.db, graph(timeoutSeconds=0.05))
    await w.runner.run(ref)
    assert w.db.runs[ref.execution_id].execution.status == S.WAITING
    await asyncio.sleep(0.1)
    w.dispatcher.refs.clear()
    swept = await w.sweeper.sweep_once()
    assert [r.execution_id for r in swept] == [ref.execution_id]
    assert await w.sweeper.sweep_once() == []  # resumed once
    data = w.db.runs[ref.execution_id].events[-1].data
    assert data == {"nodeIds": ["ask"], "reason": "timeout"}
    outcome = await w.runner.run(ref)
    assert outcome is not None and outcome.outputs == {"no": "no"}
    assert w.db.runs[ref.execution_id].nodes["ask"].output["by"] == "system"


async def test_cancel_while_waiting_ends_the_run_at_once() -> None:
    w = World()
    ref = pending(w.db, graph())
    await w.runner.run(ref)
    cancelled = await w.service.cancel(MEMBER, ref.execution_id)
    assert cancelled.status == S.CANCELLED
    run = w.db.runs[ref.execution_id]
    assert run.nodes["ask"].status == NodeStatus.CANCELLED
    assert run.events[-1].type == ET.EXECUTION_CANCELLED
    assert run.events[-1].data == {"cancelledNodes": ["ask"]}
    with pytest.raises(Conflict):
        await w.service.resolve_approval(MEMBER, ref.execution_id, "ask", True)
    assert await w.service.pending_approvals(MEMBER, run.execution) == []


async def test_a_cancel_that_raced_the_suspend_ends_the_run_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cancel flag was set (its signal not yet here) just before the run would wait."""
    w = World()
    ref = pending(w.db, graph())
    original = MemoryRunStore.request_approval

    async def cancel_meanwhile(self: MemoryRunStore, execution_id: str, request: Any) -> Any:
        run = w.db.runs[execution_id]
        w.db.set_status(run, run.execution.status, cancel_requested=True)
        return await original(self, execution_id, request)

    monkeypatch.setattr(MemoryRunStore, "request_approval", cancel_meanwhile)
    outcome = await w.runner.run(ref)
    assert outcome is not None and outcome.status == S.CANCELLED
    run = w.db.runs[ref.execution_id]
    assert run.execution.status == S.CANCELLED
    assert run.events[-1].type == ET.EXECUTION_CANCELLED
    assert ET.EXECUTION_WAITING not in w.events(ref)
    assert run.nodes["ask"].status == NodeStatus.CANCELLED
