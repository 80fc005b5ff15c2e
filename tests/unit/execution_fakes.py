"""In-memory fakes of the executions ports (no services), for the use-case unit tests.

`MemoryRuns` is the "database": the lease store, the run stores and the unit of work's
execution repository all read and write it, with the same contract as PostgreSQL (fenced
writes, gap-free sequences, claim decisions taken by `ClaimPolicy`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Self

from domain.executions.approvals import (
    SYSTEM,
    Approval,
    ApprovalAnswer,
    ApprovalRequest,
    timeout_comment,
)
from domain.executions.claims import ClaimAction, ClaimPolicy, ClaimState
from domain.executions.events import EventType, ExecutionEvent, NewEvent
from domain.executions.ports import (
    ExecutionFilter,
    LeaseLost,
    NodeResult,
    Resumed,
    RunOutcome,
    Suspension,
)
from domain.executions.records import (
    Claim,
    ClaimOutcome,
    Execution,
    ExecutionRef,
    LeaseState,
)
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.executions.streams import FeedInterrupted
from domain.flows.model import FlowGraph
from domain.ports import Page

ACTIVE = (ExecutionStatus.PENDING, ExecutionStatus.RUNNING)


@dataclass
class StoredRun:
    execution: Execution
    ref: ExecutionRef
    graph: FlowGraph | None
    lease_owner: str | None = None
    lease_expires: float | None = None
    dispatched_at: float | None = 0.0
    nodes: dict[str, NodeResult] = field(default_factory=dict)
    events: list[ExecutionEvent] = field(default_factory=list)
    approvals: dict[str, Approval] = field(default_factory=dict)
    wake: bool = False  # the next claim resumes after an approval


class MemoryRuns:
    """Executions of every tenant; `now` is a manual clock (seconds) for leases."""

    def __init__(self) -> None:
        self.runs: dict[str, StoredRun] = {}
        self.now = 0.0
        self.graphs: dict[tuple[str, int], FlowGraph] = {}

    def add(self, execution: Execution, ref: ExecutionRef, graph: FlowGraph | None) -> None:
        self.runs[execution.id] = StoredRun(execution, ref, graph, dispatched_at=self.now)

    def set_status(self, run: StoredRun, status: ExecutionStatus, **changes: Any) -> Execution:
        run.execution = replace(run.execution, status=status, **changes)
        return run.execution

    def append(self, run: StoredRun, events: Sequence[NewEvent]) -> list[ExecutionEvent]:
        stored = []
        for e in events:
            sequence = run.execution.last_sequence + 1
            run.execution = replace(run.execution, last_sequence=sequence)
            stored.append(
                ExecutionEvent(run.execution.id, sequence, e.type, e.node_id, e.at, e.data)
            )
        run.events += stored
        return stored

    def end(self, run: StoredRun, status: ExecutionStatus, error: str | None) -> Execution:
        for nid, node in run.nodes.items():
            if node.status in (NodeStatus.PENDING, NodeStatus.RUNNING, NodeStatus.WAITING):
                run.nodes[nid] = replace(node, status=NodeStatus.CANCELLED)
        run.lease_owner = run.lease_expires = None
        return self.set_status(run, status, error=error, finished_at=datetime.now(UTC))

    def requeue(self, run: StoredRun, *, dispatched: bool) -> Execution:
        for nid, node in run.nodes.items():
            if node.status == NodeStatus.RUNNING:
                run.nodes[nid] = replace(node, status=NodeStatus.PENDING)
        run.lease_owner = run.lease_expires = None
        run.dispatched_at = self.now if dispatched else None
        return self.set_status(run, ExecutionStatus.PENDING)

    def resume(self, run: StoredRun, data: dict[str, Any]) -> Resumed | None:
        if run.execution.status != ExecutionStatus.WAITING:
            return None
        run.wake = True
        run.dispatched_at = self.now
        record = self.set_status(run, ExecutionStatus.PENDING)
        [event] = self.append(
            run, [NewEvent(EventType.EXECUTION_RESUMED, None, datetime.now(UTC), data)]
        )
        return Resumed(run.execution, event) if record else None

    def expire(self, run: StoredRun, node_id: str | None = None) -> list[str]:
        """The system answers the expired approvals (`expires_at` compared to real time)."""
        now = datetime.now(UTC)
        done = []
        for nid, a in run.approvals.items():
            due = a.expires_at is not None and a.expires_at <= now
            if due and not a.answered and node_id in (None, nid):
                run.approvals[nid] = replace(
                    a,
                    approved=False,
                    comment=timeout_comment(),
                    answered_by=SYSTEM,
                    answered_at=now,
                    timed_out=True,
                )
                done.append(nid)
        return done


class MemoryLeases:
    def __init__(self, db: MemoryRuns) -> None:
        self.db = db

    async def claim(
        self, ref: ExecutionRef, owner: str, lease_seconds: float, policy: ClaimPolicy
    ) -> ClaimOutcome:
        run = self.db.runs.get(ref.execution_id)
        if run is None:
            return ClaimOutcome()
        running = sum(
            1
            for r in self.db.runs.values()
            if r.ref.tenant_id == ref.tenant_id
            and r.execution.status == ExecutionStatus.RUNNING
            and r is not run
        )
        decision = policy.decide(
            ClaimState(
                status=run.execution.status,
                lease_live=run.lease_expires is not None and run.lease_expires > self.db.now,
                cancel_requested=run.execution.cancel_requested,
                attempts=run.execution.attempts,
                running_elsewhere=running,
                wake=run.wake,
            )
        )
        if decision.action in (ClaimAction.SKIP, ClaimAction.FORGET):
            return ClaimOutcome()
        if decision.action == ClaimAction.REQUEUE:
            return ClaimOutcome(changed=self.db.requeue(run, dispatched=True))
        if decision.action == ClaimAction.END:
            assert decision.status is not None and decision.event is not None
            ended = self.db.end(run, decision.status, decision.error)
            [event] = self.db.append(
                run, [NewEvent(decision.event, None, datetime.now(UTC), decision.event_data)]
            )
            return ClaimOutcome(changed=ended, event=event)
        if decision.resume:
            self.db.requeue(run, dispatched=False)
        run.lease_owner = owner
        run.lease_expires = self.db.now + lease_seconds
        run.wake = False
        started = self.db.set_status(
            run,
            ExecutionStatus.RUNNING,
            attempts=run.execution.attempts + (0 if decision.wake else 1),
            started_at=run.execution.started_at or datetime.now(UTC),
        )
        assert run.graph is not None
        claim = Claim(
            ref, run.graph, dict(started.inputs or {}), started.attempts, 0.0,
            started.cancel_requested, decision.wake,
        )  # fmt: skip
        return ClaimOutcome(claim=claim, changed=started)

    async def renew(self, ref: ExecutionRef, owner: str, lease_seconds: float) -> LeaseState | None:
        run = self.db.runs[ref.execution_id]
        if run.lease_owner != owner:
            return None
        if run.execution.status == ExecutionStatus.RUNNING:
            run.lease_expires = self.db.now + lease_seconds
        return LeaseState(cancel_requested=run.execution.cancel_requested)

    async def release(self, ref: ExecutionRef, owner: str) -> Execution | None:
        run = self.db.runs[ref.execution_id]
        if run.lease_owner != owner or run.execution.status != ExecutionStatus.RUNNING:
            return None
        return self.db.requeue(run, dispatched=False)

    async def expired(self, limit: int) -> list[ExecutionRef]:
        return [
            r.ref
            for r in self.db.runs.values()
            if r.execution.status == ExecutionStatus.RUNNING
            and r.lease_expires is not None
            and r.lease_expires < self.db.now
        ][:limit]

    async def requeue_expired(self, ref: ExecutionRef) -> Execution | None:
        run = self.db.runs[ref.execution_id]
        expired = run.lease_expires is not None and run.lease_expires < self.db.now
        if run.execution.status != ExecutionStatus.RUNNING or not expired:
            return None
        return self.db.requeue(run, dispatched=True)

    async def stale_pending(self, redispatch_after: float, limit: int) -> list[ExecutionRef]:
        out = []
        for r in self.db.runs.values():
            if r.execution.status != ExecutionStatus.PENDING:
                continue
            if r.dispatched_at is None or r.dispatched_at < self.db.now - redispatch_after:
                r.dispatched_at = self.db.now
                out.append(r.ref)
        return out[:limit]

    async def next_pending(self, tenant_id: str, limit: int) -> list[ExecutionRef]:
        return [
            r.ref
            for r in self.db.runs.values()
            if r.ref.tenant_id == tenant_id and r.execution.status == ExecutionStatus.PENDING
        ][:limit]

    async def expired_approvals(self, limit: int) -> list[ExecutionRef]:
        now = datetime.now(UTC)
        return [
            r.ref
            for r in self.db.runs.values()
            if r.execution.status == ExecutionStatus.WAITING
            and any(
                a.expires_at is not None and a.expires_at <= now and not a.answered
                for a in r.approvals.values()
            )
        ][:limit]

    async def expire_waiting(self, ref: ExecutionRef) -> Resumed | None:
        run = self.db.runs[ref.execution_id]
        if run.execution.status != ExecutionStatus.WAITING:
            return None
        expired = self.db.expire(run)
        if not expired:
            return None
        return self.db.resume(run, {"nodeIds": expired, "reason": "timeout"})


class MemoryRunStore:
    """`RunStore` fenced by the lease owner, like the SQL one."""

    def __init__(self, db: MemoryRuns, ref: ExecutionRef, owner: str) -> None:
        self.db = db
        self.ref = ref
        self.owner = owner
        self.batches: list[list[NewEvent]] = []

    def _owned(self, execution_id: str) -> StoredRun:
        run = self.db.runs.get(execution_id)
        if run is None or run.lease_owner != self.owner:
            raise LeaseLost(f"execution {execution_id}: lease lost")
        return run

    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]:
        run = self.db.runs[execution_id]
        done = (NodeStatus.COMPLETED, NodeStatus.SKIPPED, NodeStatus.WAITING)
        return {k: v for k, v in run.nodes.items() if v.status in done}

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
        self._owned(execution_id).nodes[result.node_id] = result

    async def append_events(
        self, execution_id: str, events: Sequence[NewEvent], node: NodeResult | None = None
    ) -> list[ExecutionEvent]:
        run = self._owned(execution_id)
        if node is not None:
            run.nodes[node.node_id] = node
        self.batches.append(list(events))
        await asyncio.sleep(0)  # a real write yields to the loop
        return self.db.append(run, events)

    async def finish(self, execution_id: str, outcome: RunOutcome) -> Execution:
        run = self._owned(execution_id)
        run.lease_expires = None
        return self.db.set_status(run, outcome.status, outputs=outcome.outputs, error=outcome.error)

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval:
        run = self._owned(execution_id)
        if request.node_id not in run.approvals:
            run.approvals[request.node_id] = Approval(
                execution_id,
                request.node_id,
                request.prompt,
                request.input_schema,
                request.requested_at,
                request.expires_at,
                request.on_timeout,
            )
        return run.approvals[request.node_id]

    async def approval_answers(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval]:
        run = self.db.runs[execution_id]
        return [
            run.approvals[n] for n in node_ids if n in run.approvals and run.approvals[n].answered
        ]

    async def expire_approval(self, execution_id: str, node_id: str) -> None:
        self.db.expire(self.db.runs[execution_id], node_id)

    async def suspend(self, execution_id: str, node_ids: Sequence[str]) -> Suspension:
        run = self._owned(execution_id)
        if run.execution.status != ExecutionStatus.RUNNING:
            raise LeaseLost(f"execution {execution_id}: lease lost")
        if run.execution.cancel_requested:
            return Suspension([], cancel_requested=True)
        answered = await self.approval_answers(execution_id, node_ids)
        if answered:
            return Suspension(answered)
        [event] = self.db.append(
            run,
            [
                NewEvent(
                    EventType.EXECUTION_WAITING,
                    None,
                    datetime.now(UTC),
                    {"waitingNodes": list(node_ids)},
                )
            ],
        )
        run.lease_owner = run.lease_expires = None
        run.dispatched_at = None
        return Suspension([], self.db.set_status(run, ExecutionStatus.WAITING), event)


class _Queue:
    def __init__(self) -> None:
        self.items: asyncio.Queue[Any] = asyncio.Queue()

    async def next(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.items.get(), timeout)
        except TimeoutError:
            return None


class MemoryBus:
    """Records what was published, in order; subscriptions get what follows them."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Any]] = []  # ("event" | "status" | "cancel", item)
        self.fail = False
        self._event_subs: dict[str, list[_Queue]] = {}

    @property
    def statuses_published(self) -> list[ExecutionStatus]:
        return [item.status for kind, item in self.published if kind == "status"]

    @property
    def events_published(self) -> list[ExecutionEvent]:
        return [item for kind, item in self.published if kind == "event"]

    async def publish_event(self, tenant_id: str, event: ExecutionEvent) -> None:
        if self.fail:
            raise ConnectionError("bus down")
        self.published.append(("event", event))
        for sub in self._event_subs.get(event.execution_id, []):
            sub.items.put_nowait(event)

    async def publish_status(self, tenant_id: str, execution: Execution) -> None:
        if self.fail:
            raise ConnectionError("bus down")
        self.published.append(("status", execution))

    async def publish_cancel(self, ref: ExecutionRef) -> None:
        self.published.append(("cancel", ref))

    @asynccontextmanager
    async def events(self, tenant_id: str, execution_id: str) -> AsyncIterator[_Queue]:
        sub = _Queue()
        self._event_subs.setdefault(execution_id, []).append(sub)
        try:
            yield sub
        finally:
            self._event_subs[execution_id].remove(sub)

    @asynccontextmanager
    async def statuses(self, tenant_id: str) -> AsyncIterator[_Queue]:
        raise FeedInterrupted("not used")
        yield _Queue()  # pragma: no cover

    @asynccontextmanager
    async def cancels(self) -> AsyncIterator[_Queue]:
        raise FeedInterrupted("not used")
        yield _Queue()  # pragma: no cover


class Recorder:
    """A dispatcher that only records."""

    def __init__(self) -> None:
        self.refs: list[ExecutionRef] = []

    async def dispatch(self, ref: ExecutionRef) -> None:
        self.refs.append(ref)


# --------------------------------------------------------------------------- unit of work


class MemoryResources:
    def __init__(self, items: dict[str, Any] | None = None) -> None:
        self.items = items or {}

    async def get(self, ident: str, *, for_update: bool = False) -> Any:
        return self.items.get(ident)

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        return {i for i in ids if i in self.items}


class MemoryExecutions:
    """`ExecutionRepository` over `MemoryRuns` (one tenant)."""

    def __init__(self, db: MemoryRuns, schema: str) -> None:
        self.db = db
        self.schema = schema

    def _mine(self) -> list[StoredRun]:
        return [r for r in self.db.runs.values() if r.ref.tenant_schema == self.schema]

    async def add(self, execution: Execution, ref: ExecutionRef, graph: FlowGraph | None) -> None:
        self.db.add(execution, ref, graph)

    async def get(self, ident: str, *, for_update: bool = False) -> Execution | None:
        run = self.db.runs.get(ident)
        return replace(run.execution) if run and run.ref.tenant_schema == self.schema else None

    async def page(self, first: int, after: str | None, where: ExecutionFilter) -> Page[Execution]:
        runs = [r.execution for r in self._mine() if where.status in (None, r.execution.status)]
        return Page(items=[(e, e.id) for e in runs[:first]], has_next_page=len(runs) > first)

    async def node_runs(self, ids: Sequence[str]) -> dict[str, list[NodeResult]]:
        return {
            r.execution.id: list(r.nodes.values()) for r in self._mine() if r.execution.id in ids
        }

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        run = self.db.runs.get(execution_id)
        events = run.events if run else []
        top = before if before is not None else 2**31
        return [e for e in events if after < e.sequence < top][:limit]

    async def head(self, execution_id: str) -> tuple[int, bool]:
        run = self.db.runs.get(execution_id)
        if run is None:
            return 0, True
        last = run.events[-1] if run.events else None
        return run.execution.last_sequence, bool(last and last.is_terminal)

    async def request_cancel(self, ident: str) -> None:
        run = self.db.runs[ident]
        run.execution = replace(run.execution, cancel_requested=True)

    async def end_pending(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        run = self.db.runs[ident]
        if run.execution.status != ExecutionStatus.PENDING:
            raise LeaseLost(f"execution {ident} is no longer PENDING")
        return self.db.end(run, status, error)

    async def append_event(
        self, ident: str, type: EventType, node_id: str | None, data: dict[str, Any] | None
    ) -> ExecutionEvent:
        [event] = self.db.append(
            self.db.runs[ident], [NewEvent(type, node_id, datetime.now(UTC), data)]
        )
        return event

    async def count_active(self, tenant_id: str) -> int:
        return sum(1 for r in self.db.runs.values() if r.execution.status in ACTIVE)

    async def unfinished_ids(self) -> list[str]:
        unfinished = (*ACTIVE, ExecutionStatus.WAITING)
        return [i for i, r in self.db.runs.items() if r.execution.status in unfinished]

    async def created_since(self, tenant_id: str, since: datetime) -> int:
        return sum(1 for r in self.db.runs.values() if r.execution.created_at >= since)

    async def approvals(self, execution_id: str) -> list[Approval]:
        run = self.db.runs.get(execution_id)
        if run is None or run.ref.tenant_schema != self.schema:
            return []
        return sorted(run.approvals.values(), key=lambda a: (a.requested_at, a.node_id))

    async def approvals_of(self, execution_ids: Sequence[str]) -> dict[str, list[Approval]]:
        found = {i: await self.approvals(i) for i in dict.fromkeys(execution_ids)}
        return {i: approvals for i, approvals in found.items() if approvals}

    async def answer_approval(
        self, execution_id: str, node_id: str, answer: ApprovalAnswer
    ) -> Approval | None:
        run = self.db.runs[execution_id]
        found = run.approvals.get(node_id)
        if found is None or found.answered:
            return None
        run.approvals[node_id] = replace(
            found,
            approved=answer.approved,
            input=answer.input,
            comment=answer.comment,
            answered_by=answer.by,
            answered_at=datetime.now(UTC),
        )
        return run.approvals[node_id]

    async def resume(self, ident: str, data: dict[str, Any]) -> Resumed:
        resumed = self.db.resume(self.db.runs[ident], data)
        if resumed is None:
            raise LeaseLost(f"execution {ident} is no longer WAITING")
        return resumed

    async def end_waiting(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        run = self.db.runs[ident]
        if run.execution.status != ExecutionStatus.WAITING:
            raise LeaseLost(f"execution {ident} is no longer WAITING")
        return self.db.end(run, status, error)


class MemoryUnitOfWork:
    def __init__(self, db: MemoryRuns, schema: str, flows: dict[str, Any]) -> None:
        self.flows = MemoryResources(flows)
        self.crews = MemoryResources()
        self.agents = MemoryResources()
        self.tools = MemoryResources()
        self.providers = MemoryResources()
        self.executions = MemoryExecutions(db, schema)
        self.committed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Nothing to roll back: writes go straight to `MemoryRuns`."""

    async def commit(self) -> None:
        self.committed = True


class MemoryUnitOfWorkFactory:
    def __init__(self, db: MemoryRuns, flows: dict[str, Any] | None = None) -> None:
        self.db = db
        self.flows = flows or {}
        self.opened: list[MemoryUnitOfWork] = []

    def __call__(self, tenant_schema: str | None = None) -> MemoryUnitOfWork:
        assert tenant_schema is not None
        uow = MemoryUnitOfWork(self.db, tenant_schema, self.flows)
        self.opened.append(uow)
        return uow
