"""The flow execution engine: pure asyncio orchestration over the ports in `ports.py`.

One call of `FlowEngine.run` drives one execution from its checkpoints to a terminal
status. The worker owns everything around it: claiming the execution and moving it
PENDING -> RUNNING, renewing the lease, turning the Redis cancel signal / DB flag into
`CancelSignal.set()`. The engine owns the rest, through the `ExecutionStore`.

Scheduling (topological readiness, dead-path elimination)
    Every edge is resolved exactly once, as *live* or *dead*:
    - when its source COMPLETES, the edge is live, except an edge leaving a CONDITION
      node whose `branch` ("true" / "false") is not the branch taken; that one is dead
      (pruned). An edge without a branch is always live;
    - when its source is SKIPPED, the edge is dead.
    A node settles when all of its in-edges are resolved. Then it runs if at least one
    in-edge is live, and is SKIPPED (NODE_SKIPPED event, data
    {"reason": "branch not taken", "condition": <id of the condition that pruned it>})
    if every in-edge is dead. Nodes without in-edges run at once.
    So a node only reachable through pruned edges is skipped, and a node with at least one
    live in-edge runs once all of its live predecessors completed (and the others are
    known to be skipped); its `ctx.predecessors` / the OUTPUT default then cover only the
    predecessors that completed. A node starts the moment it settles (not level by
    level): independent branches run concurrently as asyncio tasks, optionally capped by
    `max_concurrency`. Bookkeeping is O(out-degree) per completion, O(V+E) per run.
    A node that is the only one able to progress (nothing else ready, running or waiting
    for an approval, as along a chain) runs in the run's own task instead, in a copy of
    the context like a task: the same outcome without a task's two trips through the
    event loop. A cancel or the flow timeout interrupts it by cancelling the run's task
    (that cancel is taken back; a node that ignores it goes on in a task of its own,
    like any stubborn node task), and the run gives the loop a turn every
    `INLINE_YIELD_EVERY` such nodes.

Node kinds
    INPUT (output = the execution inputs, validated against `config.schema`), OUTPUT
    (`config.value` rendered, else the single completed predecessor's output, else a
    dict {predecessor id: output}) and CONDITION (`config.expression` evaluated to a
    bool) are built in (`builtins.py`). AGENT / CREW / LLM / TOOL run the executor
    registered for the kind in `executors` (an entry for a built-in kind overrides it);
    without one the node FAILS with NotConfigured, e.g. "LLM nodes need an LLM runtime,
    which is not configured". An unknown kind fails the node with BadUserInput.

Timeouts and retries (per node, from `node.config`)
    `timeoutSeconds` (else `default_node_timeout`, None = no limit) bounds each attempt.
    `retries` (default 0, at most 10) extra attempts after a failure or timeout, waiting
    `retryBackoffSeconds * 2 ** (attempt - 1)` (default 1.0 s, at most 300 s) between
    them. When retries are configured, every failed attempt appends a LOG event (level
    "warning", data `attempt`, `error`, and the delay in the message) before the next
    attempt or the NODE_FAILED event. BadUserInput and NotConfigured are not retried (a
    retry cannot fix them).

Ending a run (the terminal event is always the last event of the run)
    - all nodes COMPLETED or SKIPPED -> COMPLETED, EXECUTION_COMPLETED {"outputs"}.
    - a node fails after its retries -> NODE_FAILED, the other running nodes are cancelled,
      FAILED with error "node '<id>' failed: <message>", EXECUTION_FAILED (node_id = the
      failed node, data {"error", "nodeId"}).
    - flow timeout (`flow_timeout`, default 3600 s, counted from the start of this `run`
      call; pass `budget=` to `run` for the remaining budget of a resumed run) -> FAILED
      with "flow timed out after N s", EXECUTION_FAILED with node_id None.
    - cancel signal -> running node tasks are cancelled and given `cancel_grace` (0.5 s)
      to finish; anything they produce later is ignored. EXECUTION_CANCELLED
      {"cancelledNodes": [the nodes that were running]}.
    In the three last cases every node not yet COMPLETED / SKIPPED / FAILED is saved as
    CANCELLED (running or never started) and there is no event per cancelled node.
    `RunOutcome.outputs` (returned, and recorded by `finish`) always maps each OUTPUT node reached
    (COMPLETED) to its value, also on failure and cancel (possibly `{}`).

APPROVAL nodes (approvals.py)
    An APPROVAL node renders its `prompt`, stores its request (`request_approval`: once;
    a resumed run gets the stored one back) and, unless it is answered already, WAITS:
    NODE_STARTED, then NODE_WAITING {"prompt", "inputSchema", "requestedAt",
    "expiresAt"}, node status WAITING. Other branches keep running; every `approval_poll`
    seconds meanwhile the run reads the answers (`approval_answers`) and answers the
    expired requests as the system (`expire_approval`). An answer completes the node
    (NODE_COMPLETED, output `{approved, input, comment, by, at}`; out-edges with `branch`
    "true" / "false" are taken by `approved`, like a CONDITION's); a request that
    expired with `"onTimeout": "fail"` fails it (NODE_FAILED, code TIMEOUT).
    When nothing runs and only unanswered approvals are left, the run `suspend`s: the
    store makes the execution WAITING and appends EXECUTION_WAITING in one step, and
    `run` returns a WAITING outcome (nothing is cancelled, `finish` is not called). An
    answer makes it PENDING again; the next `run` is passed `wake=True` and emits no
    EXECUTION_STARTED (the answer's EXECUTION_RESUMED is in the log already).

Resume
    `run` first loads the checkpoints (`load_node_results`: COMPLETED / SKIPPED nodes).
    Those nodes are not run again and their events are not re-emitted: their outputs feed
    their successors and OUTPUT values, and a checkpointed CONDITION prunes as before.
    A node that was RUNNING when the previous worker died runs again from its first
    attempt; an APPROVAL node that was WAITING waits on (no second NODE_STARTED /
    NODE_WAITING). EXECUTION_STARTED is emitted on every run but a `wake`, with data
    {"resumed": <any checkpoint found>, "checkpointedNodes": <how many>}, so the event
    log shows each (re)start.

Cancelling the task that awaits `run` (worker shutdown) is not a user cancel: node tasks
are cancelled, nothing terminal is written, the execution stays RUNNING and resumes
elsewhere when its lease expires. The same holds when the store raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import types
from collections import deque
from collections.abc import Coroutine, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import CoroutineType, MappingProxyType
from typing import Any, Final, TypeVar

from domain.errors import BadUserInput, DomainError, NotConfigured
from domain.executions.approvals import Approval, request_for
from domain.executions.builtins import (
    missing_executor_message,
    render_value_async,
    run_condition,
    run_input,
    run_output,
)
from domain.executions.events import EventType
from domain.executions.ports import (
    Cancellation,
    CancelSignal,
    CancelToken,
    Clock,
    ExecutionStore,
    NodeContext,
    NodeExecutor,
    NodeResult,
    RunOutcome,
    SystemClock,
)
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.flows.expressions import build_scope
from domain.flows.expressions.pool import evaluation_tenant
from domain.flows.graph import predecessors, successors
from domain.flows.model import FlowEdge, FlowGraph, FlowNode, NodeKind

T = TypeVar("T")

DEFAULT_FLOW_TIMEOUT: Final = 3600.0
DEFAULT_RETRY_BACKOFF: Final = 1.0
MAX_RETRIES: Final = 10
MAX_BACKOFF_SECONDS: Final = 300.0
CANCEL_GRACE_SECONDS: Final = 0.5
APPROVAL_POLL_SECONDS: Final = 1.0
# A run whose nodes complete without suspending would otherwise keep the event loop from
# everything else (other runs, the cancel watcher) for its whole length.
INLINE_YIELD_EVERY: Final = 32

_KNOWN_KINDS: Final = frozenset(k.value for k in NodeKind)
# read per node: module globals are cheaper than the enum class attributes
_RUNNING: Final = NodeStatus.RUNNING
_COMPLETED: Final = NodeStatus.COMPLETED
_NODE_STARTED: Final = EventType.NODE_STARTED
_NODE_COMPLETED: Final = EventType.NODE_COMPLETED
_SPECIAL_KINDS: Final = frozenset({NodeKind.OUTPUT, NodeKind.CONDITION, NodeKind.APPROVAL})
_NOT_RETRIED: Final = (BadUserInput, NotConfigured)
_CHECKPOINT_STATUSES: Final = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})
_FINAL_NODE_STATUSES: Final = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.SKIPPED, NodeStatus.FAILED}
)


class NodeTimeout(DomainError):
    """One attempt of a node ran past its `timeoutSeconds`."""

    code = "TIMEOUT"


class FlowEngine:
    """Runs flow graphs; one instance serves any number of concurrent runs."""

    def __init__(
        self,
        store: ExecutionStore,
        executors: Mapping[str, NodeExecutor] | None = None,
        clock: Clock | None = None,
        default_node_timeout: float | None = None,
        flow_timeout: float | None = DEFAULT_FLOW_TIMEOUT,
        *,
        max_concurrency: int | None = None,
        cancel_grace: float = CANCEL_GRACE_SECONDS,
        approval_poll: float = APPROVAL_POLL_SECONDS,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.store = store
        builtin: dict[str, NodeExecutor] = {
            NodeKind.INPUT.value: run_input,
            NodeKind.OUTPUT.value: run_output,
            NodeKind.CONDITION.value: run_condition,
        }
        self.executors: dict[str, NodeExecutor] = {**builtin, **(executors or {})}
        self.clock: Clock = clock or SystemClock()
        self.default_node_timeout = _positive(default_node_timeout)
        self.flow_timeout = _positive(flow_timeout)
        self.max_concurrency = max_concurrency
        self.cancel_grace = cancel_grace
        self.approval_poll = max(approval_poll, 0.01)
        # Node tasks that ignored cancellation past the grace period: referenced until they
        # end so they are not garbage-collected mid-flight; their results are discarded.
        self._abandoned: set[asyncio.Future[Any]] = set()

    async def run(
        self,
        execution_id: str,
        tenant_id: str,
        graph: FlowGraph,
        inputs: Mapping[str, Any],
        cancel: CancelToken | None = None,
        *,
        budget: float | None = None,
        tenant_schema: str = "",
        wake: bool = False,
    ) -> RunOutcome:
        """Run (or resume) one execution to a terminal status; see the module docstring.

        `budget` (seconds) overrides `flow_timeout` for this run, e.g. the time left of
        the flow timeout when resuming; 0 or less times out at once. `tenant_schema` is
        passed on to executors (`NodeContext.tenant_schema`). `wake`: the run resumes
        after an approval (no EXECUTION_STARTED).
        """
        limit = self.flow_timeout if budget is None else budget
        run = _Run(self, execution_id, tenant_id, graph, inputs, cancel or CancelSignal(), limit)
        run.tenant_schema = tenant_schema
        run.wake = wake
        with evaluation_tenant(tenant_id):  # templates and expressions use its pool share
            return await run.execute()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.add(task)
        task.add_done_callback(_discard_from(self._abandoned))


def _discard_from(tasks: set[asyncio.Future[Any]]) -> Any:
    def done(task: asyncio.Future[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late failure is ignored like a late result

    return done


def _positive(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return None
    if value <= 0:
        raise ValueError("timeouts must be positive (or None for no limit)")
    return float(value)


# --------------------------------------------------------------------------- the plan


@dataclass(slots=True)
class _Plan:
    nodes: dict[str, FlowNode]
    out_edges: dict[str, list[FlowEdge]]
    preds: dict[str, list[str]]  # direct predecessors, in edge order
    in_count: dict[str, int]  # number of in-edges
    # OUTPUT / CONDITION / APPROVAL nodes: their completion does more than mark edges live
    special: frozenset[str] = frozenset()

    @classmethod
    def build(cls, graph: FlowGraph) -> _Plan:
        """The structure the scheduler walks, from `domain.flows.graph`'s helpers.

        Graphs are validated before they are run; the engine still refuses the two
        defects those helpers would paper over (duplicate node ids, edges to unknown
        nodes). Self-loops and repeated edges are dropped by the helpers, like validation
        reports them.
        """
        nodes: dict[str, FlowNode] = {}
        for node in graph.nodes:
            if node.id in nodes:
                raise BadUserInput(f"duplicate node id {node.id!r}")
            nodes[node.id] = node
        for edge in graph.edges:
            if edge.source not in nodes or edge.target not in nodes:
                missing = edge.source if edge.source not in nodes else edge.target
                raise BadUserInput(
                    f"edge {edge.source}->{edge.target} names unknown node {missing!r}"
                )
        out_edges = successors(graph)
        preds = predecessors(graph)
        in_count = {nid: len(p) for nid, p in preds.items()}
        special = frozenset(nid for nid, node in nodes.items() if node.kind in _SPECIAL_KINDS)
        return cls(nodes, out_edges, preds, in_count, special)


# ----------------------------------------------------------------------------- messages


@dataclass(slots=True)
class _Done:
    node_id: str
    output: Any
    error: BaseException | None
    attempts: int


@dataclass(slots=True)
class _Crash:
    error: Exception


@dataclass(slots=True)
class _Parked:
    """An APPROVAL node whose request is stored and unanswered."""

    approval: Approval


class _Tick:
    """Time to look for answers (and expiries) of the waiting APPROVAL nodes."""


_TICK: Final = _Tick()


class _Wake:
    """Cancel signal or flow deadline: re-check the flags."""


_WAKE: Final = _Wake()


class _Mailbox:
    """The run loop's inbox: an `asyncio.Queue` cut down to one consumer.

    The loop takes every message already there without suspending and only waits on a
    future when the box is empty; a put wakes it at most once per wait.
    """

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: deque[_Done | _Crash | _Wake | _Parked | _Tick] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, msg: _Done | _Crash | _Wake | _Parked | _Tick) -> None:
        self.items.append(msg)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> _Done | _Crash | _Wake | _Parked | _Tick:
        items = self.items
        while not items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return items.popleft()


class _RunClosed(asyncio.CancelledError):
    """Raised into late emitters once the run has ended."""


# ----------------------------------------------------------------------------- one run


class _Attempt:
    """Sinks for one attempt of one node; closed when the attempt ends."""

    __slots__ = ("attempt", "node_id", "open", "run")

    def __init__(self, run: _Run, node_id: str, attempt: int) -> None:
        self.run = run
        self.node_id = node_id
        self.attempt = attempt
        self.open = True

    async def token(self, text: str) -> None:
        if not self.open:
            return
        run = self.run
        index = run.token_index.get(self.node_id, 0)
        run.token_index[self.node_id] = index + 1
        await run.write(
            run.store.append_event(
                run.execution_id, EventType.TOKEN, self.node_id, {"delta": text, "index": index}
            )
        )

    async def log(self, message: str, level: str, data: dict[str, Any]) -> None:
        if not self.open:
            return
        run = self.run
        payload = {**data, "message": message, "level": level}
        await run.write(
            run.store.append_event(run.execution_id, EventType.LOG, self.node_id, payload)
        )


class _Run:
    def __init__(
        self,
        engine: FlowEngine,
        execution_id: str,
        tenant_id: str,
        graph: FlowGraph,
        inputs: Mapping[str, Any],
        cancel: CancelToken,
        timeout: float | None,
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.clock = engine.clock
        self.execution_id = execution_id
        self.tenant_id = tenant_id
        self.tenant_schema = ""
        self.graph = graph
        self.inputs = inputs
        self.cancel = cancel
        self.timeout = timeout
        self.timed_out = False
        self.closed = False

        self.wake = False
        self.queue = _Mailbox()
        self.running: dict[str, asyncio.Future[None]] = {}
        # Inline nodes (see `_run_inline`): the run's task, the node running in it now,
        # whether the run task was cancelled to interrupt it, and the interrupted nodes'
        # leftovers in `running` that `_end` must not cancel a second time.
        self.task: asyncio.Task[Any] | None = None
        self.loop = asyncio.get_running_loop()
        self.inline: str | None = None
        self.interrupting = False
        self.cancelled_already: set[asyncio.Future[None]] = set()
        self.inline_streak = 0
        self.inflight: set[asyncio.Task[Any]] = set()
        self.ready: deque[str] = deque()
        self.status: dict[str, NodeStatus] = {}  # final statuses (and RUNNING)
        self.started_at: dict[str, datetime] = {}
        self.results: dict[str, Any] = {}  # completed node id -> output
        self.upstream = MappingProxyType(self.results)
        self.outputs: dict[str, Any] = {}
        self.token_index: dict[str, int] = {}
        self.skips: list[tuple[str, str | None]] = []  # to persist: (node id, condition id)
        self.settled: deque[str] = deque()
        self.checkpoint: dict[str, NodeResult] = {}
        self.waiting_before: dict[str, NodeResult] = {}  # APPROVAL nodes asked earlier
        self.parked: dict[str, Approval] = {}  # APPROVAL nodes waiting in this run
        self.unresolved = 0

        # filled by _prepare
        self.plan = _Plan({}, {}, {}, {})
        self.pending_in: dict[str, int] = {}
        self.live_in: dict[str, int] = {}
        self.dead_cause: dict[str, str | None] = {}
        # node id -> its executor, for the nodes that run one attempt without a time limit
        # (no retry loop, no timeout context): decided once per run, not per node start
        self.single_shot: dict[str, NodeExecutor] = {}

    # ---- store access

    async def emit(self, type: EventType, node_id: str | None, data: dict[str, Any] | None) -> None:
        await self.store.append_event(self.execution_id, type, node_id, data)

    async def write(self, aw: Coroutine[Any, Any, T]) -> T:
        """A store call from a node task: never interrupted half-way by a cancel."""
        if self.closed:
            aw.close()
            raise _RunClosed
        task = asyncio.ensure_future(aw)
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        return await asyncio.shield(task)

    # ---- main

    async def execute(self) -> RunOutcome:
        try:
            plan = _Plan.build(self.graph)
        except BadUserInput as exc:
            await self.emit(
                EventType.EXECUTION_STARTED, None, {"resumed": False, "checkpointedNodes": 0}
            )
            return await self._end(
                ExecutionStatus.FAILED, f"invalid flow graph: {exc.message}", None, []
            )
        loaded = await self.store.load_node_results(self.execution_id)
        self.checkpoint = {
            nid: res
            for nid, res in loaded.items()
            if nid in plan.nodes and NodeStatus(res.status) in _CHECKPOINT_STATUSES
        }
        self.waiting_before = {
            nid: res
            for nid, res in loaded.items()
            if nid in plan.nodes
            and NodeStatus(res.status) == NodeStatus.WAITING
            and plan.nodes[nid].kind == NodeKind.APPROVAL
        }
        if not self.wake:
            await self.emit(
                EventType.EXECUTION_STARTED,
                None,
                {"resumed": bool(self.checkpoint), "checkpointedNodes": len(self.checkpoint)},
            )
        self._prepare(plan)

        loop = self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        watcher = loop.create_task(self._watch_cancel())
        ticker = None
        if any(n.kind == NodeKind.APPROVAL for n in plan.nodes.values()):
            ticker = loop.create_task(self._tick())
        deadline = (
            None
            if self.timeout is None
            else loop.call_later(max(self.timeout, 0.0), self._on_deadline)
        )
        try:
            return await self._loop()
        finally:
            watcher.cancel()
            if ticker is not None:
                ticker.cancel()
            if deadline is not None:
                deadline.cancel()
            for task in self.running.values():  # only left on an exception / outer cancel
                task.cancel()
                self.engine._abandon(task)
            for task in list(self.inflight):
                self.engine._abandon(task)

    async def _watch_cancel(self) -> None:
        await self.cancel.wait()
        self.queue.put_nowait(_WAKE)
        self._interrupt_inline()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.engine.approval_poll)
            if self.parked and self.running:  # with nothing running the loop suspends
                self.queue.put_nowait(_TICK)

    def _on_deadline(self) -> None:
        self.timed_out = True
        self.queue.put_nowait(_WAKE)
        self._interrupt_inline()

    def _interrupt_inline(self) -> None:
        """A node running inline holds the run's task: cancel that task to stop it, as
        a node task would be cancelled (`_run_inline` tells this cancel from others)."""
        if self.inline is not None and not self.interrupting and self.task is not None:
            self.interrupting = True
            self.task.cancel()

    async def _loop(self) -> RunOutcome:
        inbox = self.queue.items
        is_cancelled = self.cancel.is_set
        while True:
            if self.skips:
                await self._flush_skips()
            if is_cancelled():
                interrupted = [*self.running, *self.parked]
                return await self._end(ExecutionStatus.CANCELLED, None, None, interrupted)
            if self.timed_out:
                assert self.timeout is not None
                error = f"flow timed out after {max(self.timeout, 0.0):g} s"
                return await self._end(ExecutionStatus.FAILED, error, None, list(self.running))
            if self.ready:
                await self._start_ready()
                if self.timed_out or is_cancelled():
                    continue  # ended at the top, before a result that arrived meanwhile
            if not self.running and not inbox:  # (an inline node's result is in the inbox)
                if self.ready:  # the start batch stopped early for a cancel / timeout
                    continue
                if self.unresolved == 0:
                    return await self._end(ExecutionStatus.COMPLETED, None, None, [])
                if self.parked:
                    outcome = await self._suspend()
                    if outcome is not None:
                        return outcome
                    continue
                stuck = sorted(n for n in self.plan.nodes if n not in self.status)
                error = "flow graph cannot complete: nodes on a cycle or behind one: " + ", ".join(
                    stuck
                )
                return await self._end(ExecutionStatus.FAILED, error, None, [])
            msg = inbox.popleft() if inbox else await self.queue.get()
            if type(msg) is _Done:
                self.running.pop(msg.node_id, None)  # not there when it ran inline
                if msg.error is not None:
                    return await self._node_failed(msg)
                await self._node_completed(msg)
            elif type(msg) is _Parked:
                del self.running[msg.approval.node_id]
                await self._park(msg.approval)
            elif type(msg) is _Tick:
                outcome = await self._check_parked(None)
                if outcome is not None:
                    return outcome
            elif type(msg) is _Crash:
                raise msg.error

    # ---- graph bookkeeping (synchronous, O(out-degree) per node)

    def _prepare(self, plan: _Plan) -> None:
        self.plan = plan
        executors = self.engine.executors
        if self.engine.default_node_timeout is None:
            for nid, node in plan.nodes.items():
                executor = executors.get(node.kind)
                config = node.config
                if executor is not None and (
                    not config or ("timeoutSeconds" not in config and "retries" not in config)
                ):
                    self.single_shot[nid] = executor
        self.pending_in = dict(plan.in_count)
        self.live_in = dict.fromkeys(plan.nodes, 0)
        self.dead_cause = {}
        self.unresolved = len(plan.nodes)
        for nid, count in plan.in_count.items():
            if count == 0:
                self.live_in[nid] = 1
                self.settled.append(nid)
        self._drain()

    def _drain(self) -> None:
        settled = self.settled
        checkpoint = self.checkpoint
        while settled:
            nid = settled.popleft()
            if self.live_in[nid]:
                saved = checkpoint.get(nid)
                if saved is not None and saved.status == NodeStatus.COMPLETED:
                    self._complete(nid, saved.output)
                else:
                    self.ready.append(nid)
            else:
                self._skip(nid)

    def _complete(self, nid: str, output: Any) -> None:
        self.status[nid] = _COMPLETED
        self.results[nid] = output
        self.unresolved -= 1
        taken = None
        if nid in self.plan.special:
            kind = self.plan.nodes[nid].kind
            if kind == NodeKind.OUTPUT:
                self.outputs[nid] = output
            elif kind == NodeKind.CONDITION:
                taken = "true" if output else "false"
            elif kind == NodeKind.APPROVAL:
                approved = isinstance(output, Mapping) and output.get("approved") is True
                taken = "true" if approved else "false"
        if taken is None:  # every out-edge is live: `_arrive` inlined, the hot path
            live_in = self.live_in
            pending_in = self.pending_in
            for edge in self.plan.out_edges[nid]:
                target = edge.target
                live_in[target] += 1
                left = pending_in[target] - 1
                pending_in[target] = left
                if left == 0:
                    self.settled.append(target)
            return
        for edge in self.plan.out_edges[nid]:
            branch = edge.branch
            if branch is not None and branch.lower() != taken:
                self._arrive(edge.target, False, nid)
            else:
                self._arrive(edge.target, True, None)

    def _skip(self, nid: str) -> None:
        self.status[nid] = NodeStatus.SKIPPED
        self.unresolved -= 1
        cause = self.dead_cause.get(nid)
        saved = self.checkpoint.get(nid)
        if saved is None or saved.status != NodeStatus.SKIPPED:
            self.skips.append((nid, cause))
        for edge in self.plan.out_edges[nid]:
            self._arrive(edge.target, False, cause)

    def _arrive(self, target: str, live: bool, cause: str | None) -> None:
        if live:
            self.live_in[target] += 1
        elif target not in self.dead_cause:
            self.dead_cause[target] = cause
        left = self.pending_in[target] - 1
        self.pending_in[target] = left
        if left == 0:
            self.settled.append(target)

    # ---- node lifecycle

    async def _start_ready(self) -> None:
        """Start every ready node (up to `max_concurrency` running).

        The RUNNING row and NODE_STARTED are written here, by the run's own task, before
        the node task exists: the write is never interrupted by a node cancel, and a
        node's TOKEN / LOG events cannot precede its NODE_STARTED.
        """
        limit = self.engine.max_concurrency
        ready = self.ready
        record_node = self.store.record_node
        now = self.clock.now
        nodes = self.plan.nodes
        status = self.status
        running = self.running
        started_at = self.started_at
        waiting_before = self.waiting_before
        is_cancelled = self.cancel.is_set
        create_task = self.loop.create_task
        execution_id = self.execution_id
        single_shot = self.single_shot
        while ready and (limit is None or len(running) < limit):
            if is_cancelled() or self.timed_out:
                return  # the loop ends the run; a long start batch must not delay it
            nid = ready.popleft()
            node = nodes[nid]
            status[nid] = NodeStatus.RUNNING
            if waiting_before:
                asked = waiting_before.get(nid)
                if asked is not None:  # waiting since an earlier run: no second NODE_STARTED
                    started_at[nid] = asked.started_at or now()
                    running[nid] = create_task(self._approval_task(node), name=f"node:{nid}")
                    continue
            started = started_at[nid] = now()
            await record_node(
                execution_id,
                NodeResult(nid, _RUNNING, None, None, started, None, 1),
                _NODE_STARTED,
                {"kind": node.kind, "name": node.name},
            )
            executor = single_shot.get(nid)
            if executor is not None:
                body = self._single_shot(node, executor)
            elif node.kind == NodeKind.APPROVAL:
                running[nid] = create_task(self._approval_task(node), name=f"node:{nid}")
                continue
            else:
                body = self._node_task(node)
            if not running and not ready and not self.parked and self.task is not None:
                # The only node that can make progress: nothing runs beside it, so
                # awaiting it here is the same as a task, without the task's two trips
                # through the event loop (a chain of nodes runs this way).
                await self._run_inline(nid, body)
                continue
            self.inline_streak = 0
            running[nid] = create_task(body, name=f"node:{nid}")

    async def _run_inline(self, nid: str, body: Coroutine[Any, Any, None]) -> None:
        """Run a node's body in the run's task, in a copy of the context as a task would.

        A cancel or the flow deadline cancels the run's task while the node runs
        (`_interrupt_inline`); that cancel is taken back here and the node counts as
        interrupted, like a cancelled node task. A node that swallows the cancel and
        keeps going goes on in a task of its own, left to `_end` like a stubborn node
        task. Any other cancel (the worker stopping) propagates.
        """
        self.inline_streak += 1
        if self.inline_streak % INLINE_YIELD_EVERY == 0:
            try:
                await asyncio.sleep(0)
            except BaseException:
                body.close()
                raise
            if self.timed_out or self.cancel.is_set():
                body.close()  # started, never ran: CANCELLED by `_end` with the others
                self._leftover(nid, None)
                return
        self.inline = nid
        rest: asyncio.Task[None] | None = None
        try:
            rest = await _drive(self, body, contextvars.copy_context())
        except asyncio.CancelledError:
            if not self.interrupting:
                raise
        finally:
            self.inline = None
        task = self.task
        assert task is not None
        if self.interrupting:
            self.interrupting = False
            if task.uncancel() > 0:  # cancelled by someone else as well
                if rest is not None:
                    rest.cancel()
                    self.engine._abandon(rest)
                raise asyncio.CancelledError
            self._leftover(nid, rest)
        elif rest is not None:  # the body swallowed the cancel of the run's task
            self.engine._abandon(rest)
            raise asyncio.CancelledError

    def _leftover(self, nid: str, rest: asyncio.Task[None] | None) -> None:
        """An interrupted inline node, in `running` for `_end` (cancelled already)."""
        left: asyncio.Future[None]
        if rest is None:
            left = self.loop.create_future()
            left.cancel()
        else:
            left = rest
        self.running[nid] = left
        self.cancelled_already.add(left)

    # ---- approvals

    async def _approval_task(self, node: FlowNode) -> None:
        try:
            msg = await self._ask(node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed: the run cannot go on
            self.queue.put_nowait(_Crash(exc))
            return
        self.queue.put_nowait(msg)

    async def _ask(self, node: FlowNode) -> _Done | _Parked:
        """Store the node's request (once) and return its answer, or park the node."""
        try:
            scope = build_scope(self.inputs, self.upstream)
            prompt = await render_value_async(node.config.get("prompt") or "", scope)
        except Exception as exc:
            return _Done(node.id, None, exc, 1)
        request = request_for(node.id, dict(node.config), prompt, self.clock.now())
        approval = await self.write(self.store.request_approval(self.execution_id, request))
        if approval.answered:
            return _answered(approval)
        return _Parked(approval)

    async def _park(self, approval: Approval) -> None:
        nid = approval.node_id
        self.parked[nid] = approval
        self.status[nid] = NodeStatus.WAITING
        if nid in self.waiting_before:
            return  # stored and announced by an earlier run
        await self.store.record_node(
            self.execution_id,
            NodeResult(nid, NodeStatus.WAITING, started_at=self.started_at.get(nid), attempts=1),
            EventType.NODE_WAITING,
            {
                "prompt": approval.prompt,
                "inputSchema": approval.input_schema,
                "requestedAt": approval.requested_at.isoformat(),
                "expiresAt": approval.expires_at.isoformat() if approval.expires_at else None,
            },
        )

    async def _expire_due(self) -> None:
        now = self.clock.now()
        for nid, approval in list(self.parked.items()):
            if approval.expires_at is not None and approval.expires_at <= now:
                await self.store.expire_approval(self.execution_id, nid)

    async def _check_parked(self, answered: list[Approval] | None) -> RunOutcome | None:
        """Complete (or fail) the parked nodes that got an answer; `answered` None: read
        them from the store, expiring the due ones first."""
        if answered is None:
            await self._expire_due()
            answered = await self.store.approval_answers(self.execution_id, list(self.parked))
        for approval in answered:
            nid = approval.node_id
            if self.parked.pop(nid, None) is None:
                continue
            self.status[nid] = NodeStatus.RUNNING
            done = _answered(approval)
            if done.error is not None:
                return await self._node_failed(done)
            await self._node_completed(done)
        return None

    async def _suspend(self) -> RunOutcome | None:
        """Only unanswered approvals are left: stop as WAITING, unless answers arrived."""
        await self._expire_due()
        answered = await self.store.suspend(self.execution_id, sorted(self.parked))
        if answered is None:  # cancelled before the signal reached this worker
            return await self._end(ExecutionStatus.CANCELLED, None, None, list(self.parked))
        if answered:
            return await self._check_parked(answered)
        self.closed = True
        return RunOutcome(ExecutionStatus.WAITING, dict(self.outputs))

    async def _single_shot(self, node: FlowNode, executor: NodeExecutor) -> None:
        """The common case: one attempt without a time limit (same outcome as `_attempts`
        for that case, without its retry loop and timeout context)."""
        nid = node.id
        ctx, sinks = self._context(node, 1)
        try:
            output = executor(node, ctx)
            # a coroutine is the usual answer; the exact type test is cheaper than
            # `inspect.isawaitable`, which still covers the other awaitables
            if type(output) is CoroutineType or inspect.isawaitable(output):
                output = await output
            done = _Done(nid, output, None, 1)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # a real cancel: sibling failure, flow timeout, user cancel
            done = _Done(nid, None, RuntimeError("the executor raised CancelledError"), 1)
        except Exception as exc:
            done = _Done(nid, None, exc, 1)
        finally:
            sinks.open = False
            ctx.cancelled.set()
        self.queue.put_nowait(done)

    async def _node_task(self, node: FlowNode) -> None:
        try:
            done = await self._attempts(node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store failed (retry LOG event): the run cannot go on
            self.queue.put_nowait(_Crash(exc))
            return
        self.queue.put_nowait(done)

    def _context(self, node: FlowNode, attempt: int) -> tuple[NodeContext, _Attempt]:
        nid = node.id
        sinks = _Attempt(self, nid, attempt)
        preds = self.plan.preds[nid]
        if self.live_in[nid] == len(preds):  # every in-edge live: every predecessor completed
            completed = tuple(preds)
        else:
            results = self.results
            completed = tuple([p for p in preds if p in results])
        # positional: NodeContext's field order (cheaper than eleven keywords)
        ctx = NodeContext(
            self.execution_id,
            self.tenant_id,
            self.inputs,
            self.upstream,
            nid,
            completed,
            attempt,
            self.tenant_schema,
            Cancellation(),
            sinks.token,
            sinks.log,
        )
        return ctx, sinks

    async def _attempts(self, node: FlowNode) -> _Done:
        executor = self.engine.executors.get(node.kind)
        config = node.config
        timeout = self.engine.default_node_timeout
        total = 1
        backoff = DEFAULT_RETRY_BACKOFF
        if config:  # most nodes have no config: skip parsing it
            seconds = _number(config.get("timeoutSeconds"), minimum=0.0, exclusive=True)
            if seconds is not None:
                timeout = seconds
            retries = int(_number(config.get("retries"), minimum=0.0) or 0)
            total = min(retries, MAX_RETRIES) + 1
            configured = _number(config.get("retryBackoffSeconds"), minimum=0.0)
            if configured is not None:
                backoff = configured
        attempt = 0
        while True:
            attempt += 1
            error: BaseException
            if executor is None:
                error = (
                    NotConfigured(missing_executor_message(node.kind))
                    if node.kind in _KNOWN_KINDS
                    else BadUserInput(f"unknown node kind {node.kind!r}")
                )
            else:
                ctx, sinks = self._context(node, attempt)
                cancelled = ctx.cancelled
                try:
                    if timeout is None:
                        output = executor(node, ctx)
                        if inspect.isawaitable(output):
                            output = await output
                        return _Done(node.id, output, None, attempt)
                    limit = asyncio.timeout(timeout)
                    try:
                        async with limit:
                            output = executor(node, ctx)
                            if inspect.isawaitable(output):
                                output = await output
                        return _Done(node.id, output, None, attempt)
                    except TimeoutError as exc:
                        if not limit.expired():
                            raise
                        error = NodeTimeout(f"node timed out after {timeout:g} s")
                        error.__cause__ = exc
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # a real cancel: sibling failure, flow timeout, user cancel
                    error = RuntimeError("the executor raised CancelledError")
                except Exception as exc:
                    error = exc
                finally:
                    sinks.open = False
                    cancelled.set()
            message = error_message(error)
            retrying = attempt < total and not isinstance(error, _NOT_RETRIED)
            delay = min(backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS) if retrying else 0.0
            if total > 1:
                text = f"attempt {attempt}/{total} failed: {message}"
                if retrying:
                    text += f"; retrying in {delay:g} s"
                await self.write(
                    self.store.append_event(
                        self.execution_id,
                        EventType.LOG,
                        node.id,
                        {
                            "message": text,
                            "level": "warning",
                            "attempt": attempt,
                            "error": message,
                        },
                    )
                )
            if not retrying:
                return _Done(node.id, None, error, attempt)
            if delay > 0:
                await asyncio.sleep(delay)

    async def _node_completed(self, msg: _Done) -> None:
        nid = msg.node_id
        output = msg.output
        attempts = msg.attempts
        await self.store.record_node(
            self.execution_id,
            NodeResult(
                nid,
                _COMPLETED,
                output,
                None,
                self.started_at.get(nid),
                self.clock.now(),
                attempts,
            ),
            _NODE_COMPLETED,
            {"output": output, "attempts": attempts},
        )
        self._complete(nid, msg.output)
        self._drain()

    async def _node_failed(self, msg: _Done) -> RunOutcome:
        nid = msg.node_id
        assert msg.error is not None
        message = error_message(msg.error)
        self.status[nid] = NodeStatus.FAILED
        code = msg.error.code if isinstance(msg.error, DomainError) else None
        await self.store.record_node(
            self.execution_id,
            NodeResult(
                nid,
                NodeStatus.FAILED,
                error=message,
                started_at=self.started_at.get(nid),
                finished_at=self.clock.now(),
                attempts=msg.attempts,
            ),
            EventType.NODE_FAILED,
            {"error": message, "code": code, "attempts": msg.attempts},
        )
        return await self._end(
            ExecutionStatus.FAILED, f"node {nid!r} failed: {message}", nid, list(self.running)
        )

    async def _flush_skips(self) -> None:
        skips, self.skips = self.skips, []
        now = self.clock.now()
        for nid, cause in skips:
            await self.store.save_node_result(
                self.execution_id, NodeResult(nid, NodeStatus.SKIPPED, finished_at=now)
            )
            await self.emit(
                EventType.NODE_SKIPPED, nid, {"reason": "branch not taken", "condition": cause}
            )

    # ---- the end

    async def _end(
        self,
        status: ExecutionStatus,
        error: str | None,
        failed_node: str | None,
        interrupted: list[str],
    ) -> RunOutcome:
        tasks = list(self.running.values())
        for task in tasks:
            if task not in self.cancelled_already:
                task.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.engine.cancel_grace)
            for task in late:  # ignored cancellation: its result will be discarded
                self.engine._abandon(task)
            self.running.clear()
        self.closed = True  # from here on, emissions of node tasks are dropped
        if self.inflight:  # store writes started by node tasks: let them land first
            for task in list(self.inflight):
                await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # a failed write is not fatal here; finish() will tell
        if status != ExecutionStatus.COMPLETED:
            now = self.clock.now()
            for nid in self.plan.nodes:
                if self.status.get(nid) not in _FINAL_NODE_STATUSES:
                    await self.store.save_node_result(
                        self.execution_id,
                        NodeResult(
                            nid,
                            NodeStatus.CANCELLED,
                            started_at=self.started_at.get(nid),
                            finished_at=now if nid in self.started_at else None,
                        ),
                    )
        outputs = dict(self.outputs)
        outcome = RunOutcome(status, outputs, error, failed_node)
        await self.store.finish(self.execution_id, outcome)
        if status == ExecutionStatus.COMPLETED:
            await self.emit(EventType.EXECUTION_COMPLETED, None, {"outputs": outputs})
        elif status == ExecutionStatus.CANCELLED:
            await self.emit(EventType.EXECUTION_CANCELLED, None, {"cancelledNodes": interrupted})
        else:
            await self.emit(
                EventType.EXECUTION_FAILED, failed_node, {"error": error, "nodeId": failed_node}
            )
        return outcome


@types.coroutine
def _drive(
    run: _Run, body: Coroutine[Any, Any, None], context: contextvars.Context
) -> Generator[Any, Any, asyncio.Task[None] | None]:
    """Step `body` in `context` from the awaiting task, as a task of its own would.

    What the body yields (futures, or None for a bare yield) goes up to the run's task
    unchanged; what comes back goes down. Returns the task that took over a body that
    went on after the cancel of an interrupt (None when the body ended).
    """
    step = context.run
    send = body.send
    try:
        yielded = step(send, None)
    except StopIteration:
        return None
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            body.close()
            raise
        except BaseException as exc:
            try:
                yielded = step(body.throw, exc)
            except StopIteration:
                return None
            task = run.task
            if (
                isinstance(exc, asyncio.CancelledError)
                and task is not None
                and task.cancelling() > 0
            ):
                # it swallowed a cancel of the run's task (not a node timeout's, which is
                # taken back by then) and waits on: the rest goes on in a task of its own
                return asyncio.get_running_loop().create_task(
                    _finish(body, context, yielded), name=f"node:{run.inline}"
                )
        else:
            try:
                yielded = step(send, value)
            except StopIteration:
                return None


async def _finish(
    body: Coroutine[Any, Any, None], context: contextvars.Context, yielded: Any
) -> None:
    await _go_on(body, context, yielded)


@types.coroutine
def _go_on(
    body: Coroutine[Any, Any, None], context: contextvars.Context, yielded: Any
) -> Generator[Any, Any, None]:
    """The rest of a body `_drive` gave up on, from where it waits (`yielded`)."""
    step = context.run
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            body.close()
            raise
        except BaseException as exc:
            try:
                yielded = step(body.throw, exc)
            except StopIteration:
                return
        else:
            try:
                yielded = step(body.send, value)
            except StopIteration:
                return


def _answered(approval: Approval) -> _Done:
    if approval.fails_run:
        return _Done(approval.node_id, None, approval.timeout_error(), 1)
    return _Done(approval.node_id, approval.output(), None, 1)


def error_message(error: BaseException) -> str:
    """The text a user sees for a node failure."""
    if isinstance(error, DomainError):
        return error.message
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _number(value: Any, *, minimum: float, exclusive: bool = False) -> float | None:
    """A config number, or None when absent or not a sensible number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value) or math.isinf(value):
        return None
    if value < minimum or (exclusive and value == minimum):
        return None
    return float(value)
