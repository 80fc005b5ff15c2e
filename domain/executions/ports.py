"""What the execution engine needs from the outside world, as protocols.

- `ExecutionStore`: checkpoints (node results), the event log, the final status.
  Implemented by persistence (PostgreSQL + Redis publish); `memory.InMemoryExecutionStore`
  is the reference implementation used by unit tests and benchmarks.
- `NodeExecutor`: runs one AGENT / CREW / LLM / TOOL node (runtime adapters).
- `Clock`: timestamps of node results.
- `CancelToken`: a user cancel, set by the worker from a Redis signal or the DB flag.

Contract of the store, as the engine uses it (see also engine.py):

- `load_node_results` is called once at the start of `FlowEngine.run` and must return the
  checkpointed nodes: those whose last saved status is COMPLETED or SKIPPED (the engine
  ignores any other status it is given, so returning every row is harmless).
- `save_node_result` is called with status RUNNING when a node starts (attempts=1,
  finished_at None) and once more with its final status: COMPLETED, FAILED, SKIPPED or
  CANCELLED. It is an upsert keyed by (execution_id, node_id). A final result is always
  saved before the matching NODE_COMPLETED / NODE_FAILED / NODE_SKIPPED event is appended.
- `append_event` assigns the next gap-free per-execution sequence, stamps `at`, persists,
  publishes, and returns the event. The engine never cancels one half-way through a write
  (calls made from node tasks are shielded and awaited before the run ends), and never
  appends anything after the terminal event of a run.
- `finish` records the terminal status, outputs and error (and finished_at). It is called
  exactly once per run that reaches a terminal status, *before* the terminal event is
  appended, so a client that sees EXECUTION_COMPLETED and then reads the execution sees
  the final record.
- Any exception raised by the store propagates out of `FlowEngine.run` (running nodes are
  cancelled first): the execution stays RUNNING and is resumed from its checkpoints once
  its lease expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from domain.executions.events import EventType, ExecutionEvent
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.flows.model import FlowNode


@dataclass(frozen=True, slots=True)
class NodeResult:
    """One node of one execution: a checkpoint when COMPLETED or SKIPPED."""

    node_id: str
    status: NodeStatus
    output: Any = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0


class ExecutionStore(Protocol):
    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]: ...

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None: ...

    async def append_event(
        self,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent: ...

    async def finish(
        self,
        execution_id: str,
        status: ExecutionStatus,
        outputs: dict[str, Any] | None,
        error: str | None,
    ) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Timezone-aware UTC wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class CancelToken(Protocol):
    """Anything with `is_set()` and an awaitable `wait()`; `asyncio.Event` qualifies."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


class CancelSignal:
    """A user cancel request for one run, wrapping an `asyncio.Event`.

    The worker calls `set()` when the Redis cancel signal or the persisted flag arrives
    (from the event loop's thread; from another thread use
    `loop.call_soon_threadsafe(signal.set)`).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


TokenSink = Callable[[str], Awaitable[None]]
LogSink = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class NodeContext:
    """What a node executor sees of the run.

    - `inputs`: the execution inputs.
    - `upstream`: node id -> output of every node that has COMPLETED so far in this
      execution (a read-only live view; every ancestor of the node is in it; SKIPPED nodes
      are not).
    - `predecessors`: ids of the node's direct predecessors that completed (edge order).
    - `scope`: the variables templates and expressions see:
      `{"inputs": {...}, "nodes": {node id: {"output": ...}}}`.
    - `emit_token(text)` / `log(message, level=..., **data)`: append TOKEN / LOG events for
      this node. Calls after the attempt ended (timed out, cancelled) are dropped.

    Executors may build one directly in their own unit tests:
    `NodeContext(execution_id="e", tenant_id="t", inputs={...}, upstream={...})`.
    """

    execution_id: str
    tenant_id: str
    inputs: Mapping[str, Any]
    upstream: Mapping[str, Any] = field(default_factory=dict)
    node_id: str = ""
    predecessors: tuple[str, ...] = ()
    attempt: int = 1
    token_sink: TokenSink | None = field(default=None, repr=False)
    log_sink: LogSink | None = field(default=None, repr=False)
    _scope: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @property
    def scope(self) -> dict[str, Any]:
        if self._scope is None:
            from domain.flows.expressions import build_scope

            self._scope = build_scope(self.inputs, self.upstream)
        return self._scope

    async def emit_token(self, text: str) -> None:
        if self.token_sink is not None and text:
            await self.token_sink(text)

    async def log(self, message: str, *, level: str = "info", **data: Any) -> None:
        if self.log_sink is not None:
            await self.log_sink(message, level, data)


class NodeExecutor(Protocol):
    """Runs one node and returns its output (JSON-serialisable).

    Raise to fail the attempt (retried per `config.retries`); raise `BadUserInput` or
    `NotConfigured` for problems a retry cannot fix. Must be cancellable: the engine
    cancels the task on node timeout, flow timeout, user cancel and sibling failure, and
    ignores anything that arrives later. Blocking work belongs in a thread
    (`asyncio.to_thread`) or a process, never on the event loop.
    """

    def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Awaitable[Any]: ...
