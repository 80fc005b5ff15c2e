"""An in-memory `ExecutionStore`: the reference semantics, for unit tests and benchmarks.

Not for production (nothing survives the process); persistence implements the same
contract on PostgreSQL + Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from domain.errors import Conflict, NotFound
from domain.executions.approvals import SYSTEM, Approval, ApprovalRequest, timeout_comment
from domain.executions.events import EventType, ExecutionEvent
from domain.executions.ports import Clock, NodeResult, RunOutcome, SystemClock
from domain.executions.state import ExecutionStatus, NodeStatus, transition


@dataclass(slots=True)
class StoredExecution:
    status: ExecutionStatus = ExecutionStatus.PENDING
    outputs: dict[str, Any] | None = None
    error: str | None = None
    nodes: dict[str, NodeResult] = field(default_factory=dict)
    events: list[ExecutionEvent] = field(default_factory=list)


class InMemoryExecutionStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.executions: dict[str, StoredExecution] = {}
        self.listeners: list[Callable[[ExecutionEvent], None]] = []
        self.approvals: dict[tuple[str, str], Approval] = {}
        cls = type(self)
        self._plain = (
            cls.save_node_result is InMemoryExecutionStore.save_node_result
            and cls.append_event is InMemoryExecutionStore.append_event
        )

    # -- helpers for the worker side / tests

    def create(self, execution_id: str) -> StoredExecution:
        """A PENDING execution (what the `runFlow` use case would insert)."""
        record = StoredExecution()
        self.executions[execution_id] = record
        return record

    def start(self, execution_id: str) -> None:
        """The worker claims the execution: PENDING -> RUNNING (creates it if unknown)."""
        record = self.executions.get(execution_id) or self.create(execution_id)
        record.status = transition(record.status, ExecutionStatus.RUNNING)

    def requeue(self, execution_id: str) -> None:
        """The sweeper found the lease expired: RUNNING -> PENDING."""
        record = self.get(execution_id)
        record.status = transition(record.status, ExecutionStatus.PENDING)

    def get(self, execution_id: str) -> StoredExecution:
        try:
            return self.executions[execution_id]
        except KeyError:
            raise NotFound("Execution", execution_id) from None

    def events(self, execution_id: str, after_sequence: int = 0) -> list[ExecutionEvent]:
        return [e for e in self.get(execution_id).events if e.sequence > after_sequence]

    # -- the ExecutionStore port

    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]:
        record = self.executions.get(execution_id)
        if record is None:
            return {}
        return {
            nid: res
            for nid, res in record.nodes.items()
            if res.status in (NodeStatus.COMPLETED, NodeStatus.SKIPPED, NodeStatus.WAITING)
        }

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
        record = self.executions.get(execution_id) or self.create(execution_id)
        record.nodes[result.node_id] = result

    async def append_event(
        self,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent:
        record = self.executions.get(execution_id) or self.create(execution_id)
        return self._append(record, execution_id, type, node_id, data)

    async def record_node(
        self,
        execution_id: str,
        result: NodeResult,
        type: EventType,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent:
        if not self._plain:  # a subclass changed one of the two: go through them
            await self.save_node_result(execution_id, result)
            return await self.append_event(execution_id, type, result.node_id, data)
        # save_node_result then append_event, in one step
        record = self.executions.get(execution_id) or self.create(execution_id)
        record.nodes[result.node_id] = result
        return self._append(record, execution_id, type, result.node_id, data)

    def _append(
        self,
        record: StoredExecution,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent:
        events = record.events
        event = ExecutionEvent(execution_id, len(events) + 1, type, node_id, self.clock.now(), data)
        events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    async def finish(self, execution_id: str, outcome: RunOutcome) -> None:
        record = self.executions.get(execution_id) or self.create(execution_id)
        record.status = transition(record.status, outcome.status)
        record.outputs = outcome.outputs
        record.error = outcome.error

    # -- approvals (the ExecutionStore port), and answering them as a use case would

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval:
        key = (execution_id, request.node_id)
        if key not in self.approvals:
            self.approvals[key] = Approval(
                execution_id,
                request.node_id,
                request.prompt,
                request.input_schema,
                request.requested_at,
                request.expires_at,
                request.on_timeout,
            )
        return self.approvals[key]

    async def approval_answers(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval]:
        found = (self.approvals.get((execution_id, nid)) for nid in node_ids)
        return [a for a in found if a is not None and a.answered]

    async def expire_approval(self, execution_id: str, node_id: str) -> None:
        approval = self.approvals.get((execution_id, node_id))
        now = self.clock.now()
        if approval is None or approval.answered or approval.expires_at is None:
            return
        if approval.expires_at <= now:
            self.approvals[(execution_id, node_id)] = replace(
                approval,
                approved=False,
                comment=timeout_comment(),
                answered_by=SYSTEM,
                answered_at=now,
                timed_out=True,
            )

    async def suspend(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval] | None:
        answered = await self.approval_answers(execution_id, node_ids)
        if answered:
            return answered
        record = self.get(execution_id)
        record.status = transition(record.status, ExecutionStatus.WAITING)
        await self.append_event(
            execution_id, EventType.EXECUTION_WAITING, None, {"waitingNodes": list(node_ids)}
        )
        return []

    def answer(
        self,
        execution_id: str,
        node_id: str,
        approved: bool,
        input: Any = None,
        comment: str | None = None,
        by: str = "someone",
    ) -> Approval:
        """Answer an approval (CONFLICT when answered); a WAITING run becomes PENDING."""
        approval = self.approvals.get((execution_id, node_id))
        if approval is None:
            raise NotFound("approval of node", node_id)
        if approval.answered:
            raise Conflict(f"the approval of node {node_id!r} was already answered")
        approval = self.approvals[(execution_id, node_id)] = replace(
            approval,
            approved=approved,
            input=input,
            comment=comment,
            answered_by=by,
            answered_at=self.clock.now(),
        )
        record = self.get(execution_id)
        if record.status == ExecutionStatus.WAITING:
            record.status = transition(record.status, ExecutionStatus.PENDING)
        return approval
