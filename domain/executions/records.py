"""What is stored about an execution, as the use cases and the worker see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.executions.events import ExecutionEvent
from domain.executions.state import ExecutionStatus
from domain.flows.model import FlowGraph


@dataclass(frozen=True, slots=True)
class ExecutionRef:
    """Enough to find an execution from anywhere: its tenant, its schema, its id."""

    tenant_id: str
    tenant_schema: str
    execution_id: str


@dataclass(slots=True)
class Execution:
    """One run of a flow version (`flow_id`, `flow_version`) or of a crew (`crew_id`).

    `inputs` may be None on a record that came from a status-change message (they are
    not broadcast); read the execution to get them.
    """

    id: str
    status: ExecutionStatus
    inputs: dict[str, Any] | None
    created_at: datetime
    flow_id: str | None = None
    flow_version: int | None = None
    crew_id: str | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    last_sequence: int = 0
    created_by: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution a worker now owns (status RUNNING, lease held by the worker)."""

    ref: ExecutionRef
    graph: FlowGraph
    inputs: dict[str, Any]
    attempt: int  # 1 on the first run, 2 on the first resume, ...
    elapsed: float  # seconds since the execution first started, waiting time excluded
    cancel_requested: bool = False
    wake: bool = False  # resumed after an approval: not a new attempt, no EXECUTION_STARTED


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The answer to a lease renewal the worker still holds."""

    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """What a claim did: the run to start (if any), and what to announce once committed.

    `changed` is the execution's new record when its status changed (RUNNING, back to
    PENDING, or ended); `event` the terminal event appended when the claim ended it.
    """

    claim: Claim | None = None
    changed: Execution | None = None
    event: ExecutionEvent | None = None
