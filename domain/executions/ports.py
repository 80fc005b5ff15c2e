"""Ports of the executions area: what the engine, the worker and the use cases need.

Engine side
- `ExecutionStore`: checkpoints (node results), the event log, the final status, as the
  engine sees them. `journal.RunJournal` implements it over a `RunStore` and the bus;
  `memory.InMemoryExecutionStore` is the reference implementation for unit tests and
  benchmarks.
- `NodeExecutor` / `NodeContext`: runs one AGENT / CREW / LLM / TOOL node (runtime adapters).
- `Clock`: timestamps. `CancelToken`: a user cancel, set by the worker from a Redis signal
  or the DB flag.

Adapter side (persistence implements these; they decide nothing)
- `RunStore`: the fenced writes of one run (a worker that lost its lease cannot write).
- `LeaseStore`: claims (applying `claims.ClaimPolicy`), renewals, the sweeper's queries.
- `ExecutionRepository`: executions of one tenant inside a unit of work.
- `ExecutionBus`: Redis pub/sub (events, status changes, cancel signals).
- `Dispatcher`: "look at execution X" (in-process, or a task queue).

Contract of the store, as the engine uses it (see also engine.py):

- `load_node_results` is called once at the start of `FlowEngine.run` and must return the
  checkpointed nodes: those whose last saved status is COMPLETED or SKIPPED (the engine
  ignores any other status it is given, so returning every row is harmless).
- `save_node_result` is called with status RUNNING when a node starts (attempts=1,
  finished_at None) and once more with its final status: COMPLETED, FAILED, SKIPPED or
  CANCELLED. It is an upsert keyed by (execution_id, node_id). A final result is always
  saved before the matching NODE_COMPLETED / NODE_FAILED / NODE_SKIPPED event is appended.
- `record_node` is `save_node_result` followed by `append_event` of the node's event
  (NODE_STARTED with RUNNING, NODE_COMPLETED / NODE_FAILED / NODE_WAITING with the final
  status), in one write where the store can: the engine's per-node round trips.
- `append_event` assigns the next gap-free per-execution sequence, stamps `at`, persists,
  publishes, and returns the event; or returns None when it buffered the event (TOKEN
  events are written in small batches, always before the next other event of the run).
  The engine never cancels one half-way through a write (calls made from node tasks are
  shielded and awaited before the run ends), and never appends anything after the
  terminal event of a run.
- `finish` records the terminal status, outputs and error (and finished_at). It is called
  exactly once per run that reaches a terminal status, *before* the terminal event is
  appended, so a client that sees EXECUTION_COMPLETED and then reads the execution sees
  the final record.
- Any exception raised by the store propagates out of `FlowEngine.run` (running nodes are
  cancelled first): the execution stays RUNNING and is resumed from its checkpoints once
  its lease expires.
- APPROVAL nodes (approvals.py): `request_approval` stores the request once (a second call
  returns the stored one, possibly answered); `approval_answers` reads the answered ones;
  `expire_approval` answers an expired one as the system, unless someone answered first;
  `suspend` is called when only unanswered approvals are left: it returns the answers
  that arrived meanwhile (the run goes on), or, when there are none, stops the run in one
  step (status WAITING, the lease given up, EXECUTION_WAITING appended) and returns [];
  None when a cancel was requested meanwhile (the run ends CANCELLED instead).
  `load_node_results` also returns the WAITING nodes (approvals asked in an earlier run).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from domain.executions.approvals import Approval, ApprovalAnswer, ApprovalRequest
from domain.executions.events import EventType, ExecutionEvent, NewEvent
from domain.executions.records import ClaimOutcome, Execution, ExecutionRef, LeaseState
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.executions.streams import Subscription
from domain.flows.model import FlowGraph, FlowNode

if TYPE_CHECKING:
    from domain.executions.claims import ClaimPolicy
    from domain.ports import Page


class LeaseLost(Exception):
    """A fenced write found that this worker no longer holds the execution's lease."""


@dataclass(slots=True)
class NodeResult:
    """One node of one execution: a checkpoint when COMPLETED or SKIPPED.

    A value that nothing mutates; not `frozen`, whose `__init__` costs about three times
    as much, because the engine makes two per node (see events.ExecutionEvent)."""

    node_id: str
    status: NodeStatus
    output: Any = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: what the engine returns and what the store records (WAITING: it
    stopped at unanswered approvals; nothing is recorded by `finish` then)."""

    status: ExecutionStatus
    outputs: dict[str, Any]
    error: str | None = None
    failed_node_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions a list shows: those of one status and/or of one flow, or all."""

    status: ExecutionStatus | None = None
    flow_id: str | None = None


# --------------------------------------------------------------------------- engine side


class ExecutionStore(Protocol):
    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]: ...

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None: ...

    async def append_event(
        self,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent | None: ...

    async def record_node(
        self,
        execution_id: str,
        result: NodeResult,
        type: EventType,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent | None: ...

    async def finish(self, execution_id: str, outcome: RunOutcome) -> None: ...

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval: ...

    async def approval_answers(
        self, execution_id: str, node_ids: Sequence[str]
    ) -> list[Approval]: ...

    async def expire_approval(self, execution_id: str, node_id: str) -> None: ...

    async def suspend(
        self, execution_id: str, node_ids: Sequence[str]
    ) -> list[Approval] | None: ...


@dataclass(frozen=True, slots=True)
class Suspension:
    """What `RunStore.suspend` did: nothing but report `answered` approvals, or stopped
    the run (`execution` is the WAITING record, `event` its EXECUTION_WAITING)."""

    answered: list[Approval]
    execution: Execution | None = None
    event: ExecutionEvent | None = None
    cancel_requested: bool = False  # not suspended: the run is to end CANCELLED


@dataclass(frozen=True, slots=True)
class Resumed:
    """A WAITING execution made PENDING again (to dispatch), and its EXECUTION_RESUMED."""

    execution: Execution
    event: ExecutionEvent


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


class Cancellation:
    """Set once a node attempt is over, so work it started elsewhere can stop.

    A `CancelToken` that threads can read too: `is_set()` and `wait_blocking(timeout)` are
    safe from any thread (a CrewAI or model call running in `asyncio.to_thread` polls
    them between steps), `await wait()` works on the event loop. Only the engine sets it,
    on the loop's thread. One is made per attempt, so the events behind the waits are
    only created when someone waits.
    """

    __slots__ = ("_event", "_set", "_thread_event")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None
        self._thread_event: threading.Event | None = None

    def set(self) -> None:
        self._set = True  # before reading the events: a waiter that arrives now sees it
        if self._event is not None:
            self._event.set()
        if self._thread_event is not None:
            self._thread_event.set()

    def is_set(self) -> bool:
        return self._set

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """From a worker thread: block until set (True) or `timeout` passed (False)."""
        with _THREAD_EVENTS:
            if self._thread_event is None:
                self._thread_event = threading.Event()
            event = self._thread_event
        if self._set:
            return True
        return event.wait(timeout)

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()


_THREAD_EVENTS = threading.Lock()


# Called once when a run of this process reached its end (workspaces and the like).
RunFinished = Callable[[ExecutionRef], Awaitable[None]]
TokenSink = Callable[[str], Awaitable[None]]
LogSink = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class NodeContext:
    """What a node executor sees of the run.

    - `execution_id`, `tenant_id`, `tenant_schema`: the run and its tenant (the schema
      opens the tenant's unit of work without another lookup).
    - `inputs`: the execution inputs.
    - `upstream`: node id -> output of every node that has COMPLETED so far in this
      execution (a read-only live view; every ancestor of the node is in it; SKIPPED nodes
      are not).
    - `node_id`, `attempt` (1 on the first attempt, 2 on the first retry, ...).
    - `predecessors`: ids of the node's direct predecessors that completed (edge order).
    - `scope`: the variables templates and expressions see:
      `{"inputs": {...}, "nodes": {node id: {"output": ...}}}`.
    - `emit_token(text)` / `log(message, level=..., **data)`: append TOKEN / LOG events for
      this node. Calls after the attempt ended (timed out, cancelled) are dropped.
    - `cancelled`: set when this attempt is over (node timeout, user cancel, flow timeout,
      a sibling's failure, worker shutdown, or the executor returned). The engine cancels
      the executor's task anyway; this is for work the task cannot interrupt, e.g. a
      thread: check `ctx.cancelled.is_set()` there and stop.

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
    tenant_schema: str = ""
    cancelled: Cancellation = field(default_factory=Cancellation, repr=False)
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
    (`asyncio.to_thread`, watching `ctx.cancelled`) or a process, never on the event loop.
    """

    def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Awaitable[Any]: ...


# --------------------------------------------------------------------------- adapter side


class RunStore(Protocol):
    """The writes of one run, each fenced by the lease owner (else `LeaseLost`).

    No publishing here: `journal.RunJournal` publishes what this stored.
    """

    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]:
        """Checkpointed nodes (COMPLETED or SKIPPED)."""
        ...

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None: ...

    async def append_events(
        self, execution_id: str, events: Sequence[NewEvent], node: NodeResult | None = None
    ) -> list[ExecutionEvent]:
        """Store `events` in order under the next gap-free sequences, atomically, and
        `node`'s result (as `save_node_result` would) in the same write."""
        ...

    async def finish(self, execution_id: str, outcome: RunOutcome) -> Execution:
        """RUNNING -> `status`; returns the final record."""
        ...

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval:
        """Store the request unless one exists for the node; the stored one (fenced)."""
        ...

    async def approval_answers(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval]:
        """The answered approvals among those nodes'."""
        ...

    async def expire_approval(self, execution_id: str, node_id: str) -> None:
        """Answer it as the system (timed out) if it expired and nobody answered yet."""
        ...

    async def suspend(self, execution_id: str, node_ids: Sequence[str]) -> Suspension:
        """RUNNING -> WAITING with EXECUTION_WAITING, unless one of the nodes was answered
        or a cancel was requested."""
        ...


class RunStoreFactory(Protocol):
    def __call__(self, ref: ExecutionRef, owner: str) -> RunStore: ...


class LeaseStore(Protocol):
    """Leases on executions, in the database that is the source of truth for runs."""

    async def claim(
        self, ref: ExecutionRef, owner: str, lease_seconds: float, policy: ClaimPolicy
    ) -> ClaimOutcome:
        """Under the execution's lock, read its state, apply `policy.decide` to it."""
        ...

    async def renew(self, ref: ExecutionRef, owner: str, lease_seconds: float) -> LeaseState | None:
        """None when the lease is no longer `owner`'s."""
        ...

    async def release(self, ref: ExecutionRef, owner: str) -> Execution | None:
        """Give a RUNNING execution back (-> PENDING, not dispatched); None if not ours."""
        ...

    async def expired(self, limit: int) -> list[ExecutionRef]:
        """RUNNING executions whose lease expired, oldest expiry first."""
        ...

    async def requeue_expired(self, ref: ExecutionRef) -> Execution | None:
        """RUNNING -> PENDING (dispatched now) if its lease is still expired; else None."""
        ...

    async def stale_pending(self, redispatch_after: float, limit: int) -> list[ExecutionRef]:
        """PENDING executions dispatched longer ago than that, marked dispatched now."""
        ...

    async def next_pending(self, tenant_id: str, limit: int) -> list[ExecutionRef]:
        """The tenant's oldest PENDING executions."""
        ...

    async def expired_approvals(self, limit: int) -> list[ExecutionRef]:
        """WAITING executions with an approval past its expiry, oldest expiry first."""
        ...

    async def expire_waiting(self, ref: ExecutionRef) -> Resumed | None:
        """Answer its expired approvals as the system and resume it (-> PENDING); None
        when it is no longer WAITING or nothing expired (another process was first)."""
        ...


class ExecutionRepository(Protocol):
    """Executions of one tenant, inside the unit of work's transaction."""

    async def add(self, execution: Execution, ref: ExecutionRef, graph: FlowGraph | None) -> None:
        """Insert a PENDING execution (and its entry among the active executions)."""
        ...

    async def get(self, ident: str, *, for_update: bool = False) -> Execution | None: ...

    async def page(self, first: int, after: str | None, where: ExecutionFilter) -> Page[Execution]:
        """Newest first."""
        ...

    async def node_runs(self, ids: Sequence[str]) -> dict[str, list[NodeResult]]: ...

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]: ...

    async def head(self, execution_id: str) -> tuple[int, bool]: ...

    async def request_cancel(self, ident: str) -> None: ...

    async def end_pending(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        """A PENDING execution ends without running (its node runs become CANCELLED)."""
        ...

    async def append_event(
        self, ident: str, type: EventType, node_id: str | None, data: dict[str, Any] | None
    ) -> ExecutionEvent:
        """Next sequence under the execution's row lock (the caller holds it)."""
        ...

    async def count_active(self, tenant_id: str) -> int:
        """PENDING + RUNNING executions of the tenant (WAITING ones hold nothing)."""
        ...

    async def unfinished_ids(self) -> list[str]:
        """The ids of the tenant's PENDING, RUNNING and WAITING executions."""
        ...

    async def created_since(self, tenant_id: str, since: datetime) -> int:
        """Executions of the tenant created from `since` on, counted under a per-tenant
        lock held until the unit of work ends (the daily quota, domain/quotas.py)."""
        ...

    async def approvals(self, execution_id: str) -> list[Approval]:
        """Every approval requested by the execution, oldest first."""
        ...

    async def approvals_of(self, execution_ids: Sequence[str]) -> dict[str, list[Approval]]:
        """`approvals` of several executions at once (those with none: absent)."""
        ...

    async def answer_approval(
        self, execution_id: str, node_id: str, answer: ApprovalAnswer
    ) -> Approval | None:
        """Write the answer if none was written yet (the caller holds the execution's row
        lock); None when it was already answered."""
        ...

    async def resume(self, ident: str, data: dict[str, Any]) -> Resumed:
        """WAITING -> PENDING (dispatched now; the next claim is not a new attempt), with
        its EXECUTION_RESUMED event."""
        ...

    async def end_waiting(
        self, ident: str, status: ExecutionStatus, error: str | None
    ) -> Execution:
        """A WAITING execution ends (its waiting node runs become CANCELLED)."""
        ...


class ExecutionBus(Protocol):
    """Pub/sub namespaced per tenant; publishing happens after the write is committed."""

    async def publish_event(self, tenant_id: str, event: ExecutionEvent) -> None: ...

    async def publish_status(self, tenant_id: str, execution: Execution) -> None: ...

    async def publish_cancel(self, ref: ExecutionRef) -> None: ...

    def events(
        self, tenant_id: str, execution_id: str
    ) -> AbstractAsyncContextManager[Subscription[ExecutionEvent]]: ...

    def statuses(self, tenant_id: str) -> AbstractAsyncContextManager[Subscription[Execution]]: ...

    def cancels(self) -> AbstractAsyncContextManager[Subscription[ExecutionRef]]: ...


class Dispatcher(Protocol):
    async def dispatch(self, ref: ExecutionRef) -> None: ...


class CancelFeed(Protocol):
    def __call__(self) -> AbstractAsyncContextManager[Subscription[ExecutionRef]]: ...
