"""Flow executions: state machines, events, ports and the engine (pure asyncio)."""

from domain.executions.engine import FlowEngine, NodeTimeout, RunOutcome
from domain.executions.events import TERMINAL_EVENTS, EventType, ExecutionEvent
from domain.executions.ports import (
    CancelSignal,
    CancelToken,
    Clock,
    ExecutionStore,
    NodeContext,
    NodeExecutor,
    NodeResult,
    SystemClock,
)
from domain.executions.state import (
    ExecutionStatus,
    IllegalTransition,
    NodeStatus,
    is_terminal,
    transition,
)

__all__ = [
    "TERMINAL_EVENTS",
    "CancelSignal",
    "CancelToken",
    "Clock",
    "EventType",
    "ExecutionEvent",
    "ExecutionStatus",
    "ExecutionStore",
    "FlowEngine",
    "IllegalTransition",
    "NodeContext",
    "NodeExecutor",
    "NodeResult",
    "NodeStatus",
    "NodeTimeout",
    "RunOutcome",
    "SystemClock",
    "is_terminal",
    "transition",
]
