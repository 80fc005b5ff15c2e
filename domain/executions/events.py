"""Execution events: what the engine reports, in order, for one execution.

Every event gets a gap-free per-execution `sequence` (1, 2, 3, ...) assigned by the
`ExecutionStore` when it is appended; the store persists it and publishes it, so
`executionEvents(executionId, afterSequence)` can replay then follow live.

Order for one run of the engine: EXECUTION_STARTED first; then NODE_STARTED / TOKEN / LOG /
NODE_COMPLETED / NODE_FAILED / NODE_SKIPPED as they happen (a node's TOKEN and LOG events
fall between its NODE_STARTED and its NODE_COMPLETED / NODE_FAILED); exactly one terminal
event (TERMINAL_EVENTS) last. A resumed run (another worker after a crash) appends a new
EXECUTION_STARTED with data {"resumed": true, ...} to the same sequence.

`data` per type (all keys camelCase, values JSON-serialisable when node outputs are):

    EXECUTION_STARTED    {"resumed": bool, "checkpointedNodes": int}
    NODE_STARTED         {"kind": str, "name": str | None}
    NODE_COMPLETED       {"output": Any, "attempts": int}
    NODE_FAILED          {"error": str, "code": str | None, "attempts": int}
    NODE_SKIPPED         {"reason": str}
    TOKEN                {"delta": str, "index": int}           (index counts per node)
    LOG                  {"message": str, "level": str, ...extra}
    EXECUTION_COMPLETED  {"outputs": {output node id: value}}
    EXECUTION_FAILED     {"error": str, "nodeId": str | None}   (event node_id = failed node)
    EXECUTION_CANCELLED  {"cancelledNodes": [ids of nodes that were running or waiting]}
    NODE_WAITING         {"prompt": str, "inputSchema": dict | None, "requestedAt": str,
                          "expiresAt": str | None}      (an APPROVAL node waits for an answer)
    EXECUTION_WAITING    {"waitingNodes": [ids]}        (nothing else can progress: the run
                                                         stops and holds no worker or lease)
    EXECUTION_RESUMED    {"nodeIds": [ids], "reason": "answered" | "timeout", ...}
                                                        (an answer arrived; the run is
                                                         dispatched again; no second
                                                         EXECUTION_STARTED follows)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class EventType(enum.StrEnum):
    EXECUTION_STARTED = "EXECUTION_STARTED"
    NODE_STARTED = "NODE_STARTED"
    NODE_COMPLETED = "NODE_COMPLETED"
    NODE_FAILED = "NODE_FAILED"
    NODE_SKIPPED = "NODE_SKIPPED"
    TOKEN = "TOKEN"
    LOG = "LOG"
    NODE_WAITING = "NODE_WAITING"
    EXECUTION_WAITING = "EXECUTION_WAITING"
    EXECUTION_RESUMED = "EXECUTION_RESUMED"
    EXECUTION_COMPLETED = "EXECUTION_COMPLETED"
    EXECUTION_FAILED = "EXECUTION_FAILED"
    EXECUTION_CANCELLED = "EXECUTION_CANCELLED"


TERMINAL_EVENTS: frozenset[EventType] = frozenset(
    {EventType.EXECUTION_COMPLETED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
)


# Events and node results are values: nothing mutates one once it is made. They are not
# `frozen` because a frozen dataclass's `__init__` goes through `object.__setattr__` per
# field, about three times the cost, and the engine makes several of them per node.
@dataclass(slots=True)
class ExecutionEvent:
    execution_id: str
    sequence: int
    type: EventType
    node_id: str | None
    at: datetime
    data: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


@dataclass(slots=True)
class NewEvent:
    """An event to append: the store gives it the next sequence of its execution."""

    type: EventType
    node_id: str | None
    at: datetime
    data: dict[str, Any] | None = None
