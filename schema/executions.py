"""Execution types: runs, node runs, events, and their enums."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain.executions import approvals as ap
from domain.executions import events as ev
from domain.executions import records as rec
from domain.executions import state as st
from domain.executions.ports import NodeResult
from schema.context import Info
from schema.crews import Crew
from schema.fields import described
from schema.flows import Flow
from schema.records import from_record
from schema.usage import Usage

ExecutionStatus = strawberry.enum(st.ExecutionStatus, name="ExecutionStatus")
NodeStatus = strawberry.enum(st.NodeStatus, name="NodeStatus")
ExecutionEventType = strawberry.enum(ev.EventType, name="ExecutionEventType")


@strawberry.type(description="One node of one execution: its latest status and result.")
class NodeRun:
    node_id: str
    status: NodeStatus  # type: ignore[valid-type]
    output: JSON | None
    error: str | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    execution_id: strawberry.Private[str | None] = None

    @described("Tokens and cost of this node run's LLM calls; null when it called no model.")
    async def usage(self, info: Info) -> Usage | None:
        if self.execution_id is None:
            return None
        found = await info.context.loaders.node_usage.load((self.execution_id, self.node_id))
        return Usage.from_domain(found) if found is not None else None

    @classmethod
    def from_domain(cls, r: NodeResult, execution_id: str | None = None) -> NodeRun:
        return from_record(cls, r, execution_id=execution_id, status=st.NodeStatus(r.status))


@strawberry.type(description="One event of an execution; `sequence` is 1, 2, 3, ... per run.")
class ExecutionEvent:
    execution_id: strawberry.ID
    sequence: int
    type: ExecutionEventType  # type: ignore[valid-type]
    node_id: str | None
    at: datetime
    data: JSON | None

    @classmethod
    def from_domain(cls, e: ev.ExecutionEvent) -> ExecutionEvent:
        return from_record(cls, e)


@strawberry.type(description="An APPROVAL node of a run, waiting for an answer.")
class PendingApproval:
    node_id: str
    prompt: str = strawberry.field(description="The node's prompt, rendered with the run's data.")
    input_schema: JSON | None = strawberry.field(
        description="JSON Schema of the answer's `input`, when the node asks for data."
    )
    requested_at: datetime
    expires_at: datetime | None = strawberry.field(
        description="When it is answered by its `onTimeout` rule; null: never."
    )

    @classmethod
    def from_domain(cls, a: ap.Approval) -> PendingApproval:
        return cls(
            node_id=a.node_id,
            prompt=a.prompt,
            input_schema=JSON(a.input_schema) if a.input_schema is not None else None,
            requested_at=a.requested_at,
            expires_at=a.expires_at,
        )


@strawberry.type(description="One run of a flow version or of a crew.")
class Execution:
    id: strawberry.ID
    flow_version: int | None
    status: ExecutionStatus  # type: ignore[valid-type]
    outputs: JSON | None = strawberry.field(description="output node id → value")
    error: str | None
    cancel_requested: bool
    attempts: int = strawberry.field(description="how many times a worker started it")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    domain: strawberry.Private[rec.Execution]

    @strawberry.field
    async def inputs(self, info: Info) -> JSON:
        inputs = self.domain.inputs
        if inputs is None:  # status updates come without inputs
            found = await info.context.loaders.execution.load(self.domain.id)
            inputs = found.inputs if found is not None else None
        return JSON(inputs if inputs is not None else {})

    @described("The flow at the version this execution ran.")
    async def flow(self, info: Info) -> Flow | None:
        d = self.domain
        if d.flow_id is None or d.flow_version is None:
            return None
        found = await info.context.loaders.flow_version.load((d.flow_id, d.flow_version))
        return Flow.from_domain(found) if found is not None else None

    @described("The crew of a `testCrew` run.")
    async def crew(self, info: Info) -> Crew | None:
        if self.domain.crew_id is None:
            return None
        found = await info.context.loaders.crew.load(self.domain.crew_id)
        return Crew.from_domain(found) if found is not None else None

    @strawberry.field
    async def node_runs(self, info: Info) -> list[NodeRun]:
        runs = await info.context.loaders.node_runs.load(self.domain.id)
        return [NodeRun.from_domain(r, self.domain.id) for r in runs]

    @described("The APPROVAL nodes waiting for an answer (`resolveApproval`), oldest first.")
    async def pending_approvals(self, info: Info) -> list[PendingApproval]:
        found = await info.context.loaders.pending_approvals.load(self.domain)
        return [PendingApproval.from_domain(a) for a in found]

    @described("Tokens and cost of every LLM call of this execution (zeros when none).")
    async def usage(self, info: Info) -> Usage:
        return Usage.from_domain(await info.context.loaders.execution_usage.load(self.domain.id))

    @described(
        "Stored events after afterSequence in order (at most `first`, up to 1000); "
        "subscribe to executionEvents to follow them live."
    )
    async def events(
        self, info: Info, after_sequence: int = 0, first: int = 100
    ) -> list[ExecutionEvent]:
        p = await info.context.principal()
        found = await info.context.services.executions.events(
            p, self.domain.id, after_sequence, first
        )
        return [ExecutionEvent.from_domain(e) for e in found]

    @classmethod
    def from_domain(cls, e: rec.Execution) -> Execution:
        return from_record(cls, e, domain=e)
