"""Flow executions: state machines, events, ports and the engine (pure asyncio)."""

from domain.executions.builtins import (
    evaluate_async,
    missing_executor_message,
    render_value,
    render_value_async,
)
from domain.executions.engine import FlowEngine, NodeTimeout, RunOutcome
from domain.executions.events import TERMINAL_EVENTS, EventType, ExecutionEvent
from domain.executions.memory import InMemoryExecutionStore
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
    "InMemoryExecutionStore",
    "NodeContext",
    "NodeExecutor",
    "NodeResult",
    "NodeStatus",
    "NodeTimeout",
    "RunOutcome",
    "SystemClock",
    "evaluate_async",
    "is_terminal",
    "missing_executor_message",
    "render_value",
    "render_value_async",
    "transition",
]
