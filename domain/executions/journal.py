"""The engine's store for one run: stored first, then published, in sequence order.

`RunJournal` is the `ExecutionStore` a worker hands to the engine, over the run's
`RunStore` (fenced writes) and the `ExecutionBus`:

- every event is committed before it is published, and the writes of the run are
  serialised, so events are published in sequence order (subscribers still cope with lost
  or reordered messages: streams.py);
- TOKEN and LOG events (the streaming kinds a node may emit by the hundred) are buffered
  and stored in batches: when `token_batch` of them wait, when the oldest waited
  `token_delay` seconds, and always before the run's next other event (so a node's
  NODE_COMPLETED follows all of its tokens and logs) and before `finish`. A batch is one
  atomic append: its sequences are contiguous, and an event that was never stored never
  got a sequence, so the log stays gap-free and replay-then-live sees each one once, in
  order. Such an event costs a commit per batch instead of one each; a worker that dies
  loses at most the last `token_delay` of them (the run resumes from its checkpoints);
- a background flush that failed (lease lost, database down) is raised by the next call,
  so the run stops as it does on any store failure (it stays RUNNING and resumes
  elsewhere from its checkpoints);
- a publish that fails is logged and skipped: what is stored counts, and subscribers poll
  the log when the bus is quiet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from domain.executions.approvals import Approval, ApprovalRequest
from domain.executions.events import EventType, ExecutionEvent, NewEvent
from domain.executions.ports import (
    Clock,
    ExecutionBus,
    NodeResult,
    RunOutcome,
    RunStore,
    SystemClock,
)
from domain.executions.records import Execution
from domain.executions.state import ExecutionStatus, transition
from domain.tasks import cancel_and_wait

log = logging.getLogger("crewgraph.executions")

DEFAULT_TOKEN_BATCH = 64
DEFAULT_TOKEN_DELAY = 0.05
_BATCHED = frozenset({EventType.TOKEN, EventType.LOG})


class RunJournal:
    """`ExecutionStore` for one run of one tenant; see the module docstring."""

    def __init__(
        self,
        store: RunStore,
        bus: ExecutionBus,
        tenant_id: str,
        *,
        clock: Clock | None = None,
        token_batch: int = DEFAULT_TOKEN_BATCH,
        token_delay: float = DEFAULT_TOKEN_DELAY,
    ) -> None:
        self._store = store
        self._bus = bus
        self._tenant_id = tenant_id
        self._clock: Clock = clock or SystemClock()
        self._token_batch = max(1, token_batch)
        self._token_delay = token_delay
        self._lock = asyncio.Lock()
        self._tokens: list[NewEvent] = []
        self._tokens_of = ""
        self._flusher: asyncio.Task[None] | None = None
        self._failure: Exception | None = None

    async def load_node_results(self, execution_id: str) -> Mapping[str, NodeResult]:
        return await self._store.load_node_results(execution_id)

    async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
        self._raise_failure()
        await self._store.save_node_result(execution_id, result)

    async def append_event(
        self,
        execution_id: str,
        type: EventType,
        node_id: str | None,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent | None:
        self._raise_failure()
        event = NewEvent(type, node_id, self._clock.now(), data)
        if type in _BATCHED and self._token_batch > 1:
            await self._buffer(execution_id, event)
            return None
        async with self._lock:
            stored = await self._write(execution_id, [*self._take_tokens(execution_id), event])
        return stored[-1]

    async def record_node(
        self,
        execution_id: str,
        result: NodeResult,
        type: EventType,
        data: dict[str, Any] | None,
    ) -> ExecutionEvent:
        """The node's row and its event (after the buffered ones) in one write."""
        self._raise_failure()
        event = NewEvent(type, result.node_id, self._clock.now(), data)
        async with self._lock:
            tokens = self._take_tokens(execution_id)
            stored = await self._write(execution_id, [*tokens, event], node=result)
        return stored[-1]

    async def finish(self, execution_id: str, outcome: RunOutcome) -> None:
        transition(ExecutionStatus.RUNNING, outcome.status)
        self._raise_failure()
        async with self._lock:
            tokens = self._take_tokens(execution_id)
            if tokens:
                await self._write(execution_id, tokens)
            record = await self._store.finish(execution_id, outcome)
        await publish_status(self._bus, self._tenant_id, record)

    async def request_approval(self, execution_id: str, request: ApprovalRequest) -> Approval:
        self._raise_failure()
        return await self._store.request_approval(execution_id, request)

    async def approval_answers(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval]:
        return await self._store.approval_answers(execution_id, node_ids)

    async def expire_approval(self, execution_id: str, node_id: str) -> None:
        await self._store.expire_approval(execution_id, node_id)

    async def suspend(self, execution_id: str, node_ids: Sequence[str]) -> list[Approval] | None:
        """Stop the run as WAITING (tokens stored first), or the answers that arrived."""
        self._raise_failure()
        async with self._lock:
            tokens = self._take_tokens(execution_id)
            if tokens:
                await self._write(execution_id, tokens)
            done = await self._store.suspend(execution_id, node_ids)
        if done.cancel_requested:
            return None
        if done.answered:
            return done.answered
        if done.execution is not None:
            await publish_status(self._bus, self._tenant_id, done.execution)
        if done.event is not None:
            await publish_event(self._bus, self._tenant_id, done.event)
        return []

    async def close(self) -> None:
        """The run is over (or abandoned): stop the timer; unstored tokens are dropped."""
        flusher, self._flusher = self._flusher, None
        await cancel_and_wait(flusher)
        self._tokens = []

    # ---- tokens

    async def _buffer(self, execution_id: str, event: NewEvent) -> None:
        if self._tokens and self._tokens_of != execution_id:
            await self._flush()
        self._tokens.append(event)
        self._tokens_of = execution_id
        if len(self._tokens) >= self._token_batch:
            await self._flush()  # the emitter waits: back-pressure on a fast stream
        elif self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._token_delay)
        self._flusher = None
        try:
            await self._flush()
        except Exception as exc:
            self._failure = exc

    async def _flush(self) -> None:
        async with self._lock:
            execution_id = self._tokens_of
            tokens = self._take_tokens(execution_id)
            if tokens:
                await self._write(execution_id, tokens)

    def _take_tokens(self, execution_id: str) -> list[NewEvent]:
        if not self._tokens or self._tokens_of != execution_id:
            return []
        tokens, self._tokens = self._tokens, []
        return tokens

    # ---- writes (the caller holds the lock)

    async def _write(
        self, execution_id: str, events: list[NewEvent], node: NodeResult | None = None
    ) -> list[ExecutionEvent]:
        stored = await self._store.append_events(execution_id, events, node)
        await publish_events(self._bus, self._tenant_id, stored)
        return stored

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


async def publish_status(bus: ExecutionBus, tenant_id: str, execution: Execution) -> None:
    """Announce a committed status change; a failure only delays dashboards."""
    try:
        await bus.publish_status(tenant_id, execution)
    except Exception:
        log.exception("publishing a status change failed")


async def publish_events(
    bus: ExecutionBus, tenant_id: str, events: Sequence[ExecutionEvent]
) -> None:
    """Announce committed events in order, in one round trip when the bus can batch."""
    batch = getattr(bus, "publish_events", None)
    if batch is None or len(events) < 2:
        for event in events:
            await publish_event(bus, tenant_id, event)
        return
    try:
        await batch(tenant_id, events)
    except Exception:
        log.exception("publishing events failed")


async def publish_event(bus: ExecutionBus, tenant_id: str, event: ExecutionEvent) -> None:
    """Announce a committed event; subscribers find it in the log if this fails."""
    try:
        await bus.publish_event(tenant_id, event)
    except Exception:
        log.exception("publishing an event failed")
