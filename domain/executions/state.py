"""Execution and node state machines.

Execution::

    PENDING ──> RUNNING ──> COMPLETED | FAILED | CANCELLED
       │           │
       │           ├──> PENDING   (the worker's lease expired; the sweeper re-dispatches)
       │           └──> WAITING   (only APPROVAL nodes are left, unanswered: no worker, no lease)
       │                  ├──> PENDING     (answered or timed out: dispatched again)
       │                  └──> CANCELLED   (cancelled while waiting)
       └──> CANCELLED | FAILED    (cancelled before a worker picked it up / could not start)

Node (one row per node of an execution)::

    PENDING ──> RUNNING ──> COMPLETED | FAILED | CANCELLED
       │           │
       │           ├──> PENDING   (the node was running on a worker that died; it runs again)
       │           └──> WAITING   (an APPROVAL node waits for its answer)
       │                  └──> COMPLETED | FAILED | CANCELLED
       └──> SKIPPED | CANCELLED   (branch not taken / the execution ended before it started)

Terminal states are final: any transition out of one raises `IllegalTransition`, and so
does a "transition" to the same state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from domain.errors import Conflict


class ExecutionStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    WAITING = "WAITING"


class NodeStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"
    WAITING = "WAITING"


EXECUTION_TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.PENDING: frozenset(
        {ExecutionStatus.RUNNING, ExecutionStatus.CANCELLED, ExecutionStatus.FAILED}
    ),
    ExecutionStatus.RUNNING: frozenset(
        {
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
            ExecutionStatus.PENDING,
            ExecutionStatus.WAITING,
        }
    ),
    ExecutionStatus.WAITING: frozenset({ExecutionStatus.PENDING, ExecutionStatus.CANCELLED}),
    ExecutionStatus.COMPLETED: frozenset(),
    ExecutionStatus.FAILED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}

NODE_TRANSITIONS: Mapping[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.PENDING: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED}),
    NodeStatus.RUNNING: frozenset(
        {
            NodeStatus.COMPLETED,
            NodeStatus.FAILED,
            NodeStatus.CANCELLED,
            NodeStatus.PENDING,
            NodeStatus.WAITING,
        }
    ),
    NodeStatus.WAITING: frozenset({NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.CANCELLED}),
    NodeStatus.COMPLETED: frozenset(),
    NodeStatus.FAILED: frozenset(),
    NodeStatus.SKIPPED: frozenset(),
    NodeStatus.CANCELLED: frozenset(),
}

TERMINAL_EXECUTION_STATUSES = frozenset(s for s, nxt in EXECUTION_TRANSITIONS.items() if not nxt)
TERMINAL_NODE_STATUSES = frozenset(s for s, nxt in NODE_TRANSITIONS.items() if not nxt)

Status = TypeVar("Status", ExecutionStatus, NodeStatus)


class IllegalTransition(Conflict):
    """A state change the state machine does not allow (GraphQL code CONFLICT)."""

    def __init__(self, current: enum.Enum, target: enum.Enum) -> None:
        kind = "execution" if isinstance(current, ExecutionStatus) else "node"
        super().__init__(
            f"illegal {kind} state transition {current.value} -> {target.value}",
            extensions={"from": current.value, "to": target.value},
        )
        self.current = current
        self.target = target


def can_transition(current: Status, target: Status) -> bool:
    """Whether `current -> target` is allowed (same-state moves are not)."""
    if isinstance(current, ExecutionStatus):
        return ExecutionStatus(target) in EXECUTION_TRANSITIONS[current]
    return NodeStatus(target) in NODE_TRANSITIONS[NodeStatus(current)]


def transition(current: Status, target: Status) -> Status:
    """Return `target` if the move from `current` is allowed, else raise `IllegalTransition`.

    Both arguments are members of the same enum (`ExecutionStatus` or `NodeStatus`); the
    table is chosen from the type of `current`, so the string-equal members of the two enums
    (both have "PENDING") never mix.
    """
    if isinstance(current, ExecutionStatus):
        exec_target = ExecutionStatus(target)
        if exec_target not in EXECUTION_TRANSITIONS[current]:
            raise IllegalTransition(current, exec_target)
        return target
    node_current = NodeStatus(current)
    node_target = NodeStatus(target)
    if node_target not in NODE_TRANSITIONS[node_current]:
        raise IllegalTransition(node_current, node_target)
    return target


def is_terminal(status: ExecutionStatus | NodeStatus) -> bool:
    """True for COMPLETED, FAILED, CANCELLED (and SKIPPED for nodes)."""
    if isinstance(status, ExecutionStatus):
        return status in TERMINAL_EXECUTION_STATUSES
    return NodeStatus(status) in TERMINAL_NODE_STATUSES
