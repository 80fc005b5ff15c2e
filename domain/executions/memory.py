"""An in-memory `ExecutionStore`: the reference semantics, for unit tests and benchmarks.

Not for production (nothing survives the process); persistence implements the same
contract on PostgreSQL + Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.errors import NotFound
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
            if res.status in (NodeStatus.COMPLETED, NodeStatus.SKIPPED)
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
        event = ExecutionEvent(
            execution_id=execution_id,
            sequence=len(record.events) + 1,
            type=type,
            node_id=node_id,
            at=self.clock.now(),
            data=data,
        )
        record.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    async def finish(self, execution_id: str, outcome: RunOutcome) -> None:
        record = self.executions.get(execution_id) or self.create(execution_id)
        record.status = transition(record.status, outcome.status)
        record.outputs = outcome.outputs
        record.error = outcome.error
