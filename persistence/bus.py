"""Redis pub/sub for execution events, status changes and cancel signals.

Channels (every name starts with the deployment's `CREWGRAPH_REDIS_PREFIX`):

    <prefix>:t:<tenant id>:exec:<execution id>   the events of one execution
    <prefix>:t:<tenant id>:executions           status changes of the tenant's executions
    <prefix>:cancel                              cancel signals for the workers

Why `redis.asyncio` directly and not `broadcaster` 0.3.1 (the design's first choice): a
gap-free "subscribe, then replay the log" needs to know when the subscription is active
on the server, which broadcaster does not expose; its per-subscriber queues are unbounded
and filled with an awaited `put` (one slow subscriber stalls everyone); and its listener
stops for good when `listen()` runs before the first SUBSCRIBE is registered. This bus
keeps the useful part of broadcaster: one Redis connection per process shared by all
local subscribers, one SUBSCRIBE per channel however many local subscribers it has.

- `subscribe(channel)` returns once Redis confirmed the subscription.
- Each local subscriber has a bounded queue. A subscriber that falls `queue_size`
  messages behind is dropped: its next read raises `FeedInterrupted`, and the stream
  layer resubscribes and catches up from the event log (domain.executions.streams).
- When the connection drops, the reader reconnects (redis-py resubscribes every channel)
  and interrupts every subscriber the same way, since messages may have been lost.
- Messages are decoded once per process, not once per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis

from domain.executions.events import EventType, ExecutionEvent
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus
from domain.executions.streams import FeedInterrupted
from domain.tasks import cancel_and_wait

log = logging.getLogger("crewgraph.bus")

T = TypeVar("T")

DEFAULT_QUEUE_SIZE = 1000
_RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)


class _Subscriber(Generic[T]):
    """A bounded queue fed by the bus reader."""

    __slots__ = ("_decode", "_items", "_waiter", "broken", "channel", "maxsize")

    def __init__(self, channel: str, decode: Callable[[Any], T], maxsize: int) -> None:
        self.channel = channel
        self._decode = decode
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.broken: str | None = None

    def push(self, raw: Any) -> bool:
        """False when the subscriber is full (the bus then drops it)."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(raw)
        self._wake()
        return True

    def interrupt(self, reason: str) -> None:
        self.broken = reason
        self._items.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float | None = None) -> T | None:
        while not self._items:
            if self.broken is not None:
                raise FeedInterrupted(self.broken)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                if timeout is None:
                    await self._waiter
                else:
                    try:
                        await asyncio.wait_for(self._waiter, timeout)
                    except TimeoutError:
                        return None
            finally:
                self._waiter = None
        return self._decode(self._items.popleft())


class RedisBus:
    """One pub/sub connection per process; see the module docstring."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.queue_size = queue_size
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: dict[str, set[_Subscriber[Any]]] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._control = f"{prefix}:bus:{uuid.uuid4().hex}"
        self.dropped = 0  # slow subscribers dropped so far (for tests and metrics)

    # ---- channel names

    def execution_channel(self, tenant_id: str, execution_id: str) -> str:
        return f"{self.prefix}:t:{tenant_id}:exec:{execution_id}"

    def tenant_channel(self, tenant_id: str) -> str:
        return f"{self.prefix}:t:{tenant_id}:executions"

    @property
    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    # ---- publishing

    async def publish(self, channel: str, message: dict[str, Any]) -> int:
        return int(await self.redis.publish(channel, _dumps(message)))

    async def publish_event(self, tenant_id: str, event: ExecutionEvent) -> None:
        await self.publish(
            self.execution_channel(tenant_id, event.execution_id), encode_event(event)
        )

    async def publish_events(self, tenant_id: str, events: Sequence[ExecutionEvent]) -> None:
        """Several events of one run, in order, in one round trip (a pipeline, not a
        MULTI: each PUBLISH stands alone, and Redis runs them in the order sent)."""
        if len(events) == 1:
            await self.publish_event(tenant_id, events[0])
            return
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.publish(
                self.execution_channel(tenant_id, event.execution_id),
                _dumps(encode_event(event)),
            )
        await pipe.execute()

    async def publish_status(self, tenant_id: str, execution: Execution) -> None:
        await self.publish(self.tenant_channel(tenant_id), encode_execution(execution))

    async def publish_cancel(self, ref: ExecutionRef) -> None:
        await self.publish(
            self.cancel_channel,
            {"t": ref.tenant_id, "s": ref.tenant_schema, "e": ref.execution_id},
        )

    # ---- subscribing

    def events(self, tenant_id: str, execution_id: str) -> Any:
        return self.subscribe(self.execution_channel(tenant_id, execution_id), decode_event)

    def statuses(self, tenant_id: str) -> Any:
        return self.subscribe(self.tenant_channel(tenant_id), decode_execution)

    def cancels(self) -> Any:
        return self.subscribe(self.cancel_channel, _decode_cancel)

    @asynccontextmanager
    async def subscribe(
        self, channel: str, decode: Callable[[Any], T] = lambda m: m
    ) -> AsyncIterator[_Subscriber[T]]:
        """A subscriber of `channel`, active on the Redis server when this returns."""
        await self._ensure_reader()
        subscriber: _Subscriber[T] = _Subscriber(channel, decode, self.queue_size)
        async with self._lock:
            local = self._subscribers.setdefault(channel, set())
            local.add(subscriber)
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                confirmed = asyncio.get_running_loop().create_future()
                self._confirmed[channel] = confirmed
                await self._pubsub.subscribe(channel)
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), 10.0)
            yield subscriber
        finally:
            await self._remove(subscriber)

    async def _remove(self, subscriber: _Subscriber[Any]) -> None:
        channel = subscriber.channel
        async with self._lock:
            local = self._subscribers.get(channel)
            if local is None:
                return
            local.discard(subscriber)
            if not local:
                del self._subscribers[channel]
                self._confirmed.pop(channel, None)
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(channel)

    async def _ensure_reader(self) -> None:
        loop = asyncio.get_running_loop()
        if self._reader is not None and not self._reader.done() and self._loop is loop:
            return
        async with self._lock:
            if self._reader is not None and not self._reader.done() and self._loop is loop:
                return
            self._loop = loop
            self._subscribers.clear()
            self._confirmed.clear()
            self._pubsub = self.redis.pubsub()
            # A channel nobody else uses keeps the connection subscribed (and readable)
            # while no real channel is.
            await self._pubsub.subscribe(self._control)
            self._reader = asyncio.create_task(self._read(), name="redis-bus-reader")

    async def _read(self) -> None:
        failures = 0
        while True:
            try:
                message = await self._pubsub.parse_response(block=True)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = _RECONNECT_DELAYS[min(failures, len(_RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("redis pub/sub connection lost (%s); reconnecting", exc)
                self._interrupt_all("the Redis connection was reset")
                await asyncio.sleep(delay)
                with contextlib.suppress(Exception):
                    await self._pubsub.connect()  # resubscribes every channel
                continue
            if message is None:
                continue
            self._handle(message)

    def _handle(self, response: Any) -> None:
        kind = response[0]
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "message":
            channel = response[1].decode() if isinstance(response[1], bytes) else response[1]
            local = self._subscribers.get(channel)
            if not local:
                return
            try:
                decoded = json.loads(response[2])
            except ValueError:
                log.warning("undecodable message on %s", channel)
                return
            for subscriber in list(local):
                if not subscriber.push(decoded):
                    self._drop(subscriber)
        elif kind == "subscribe":
            channel = response[1].decode() if isinstance(response[1], bytes) else response[1]
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _drop(self, subscriber: _Subscriber[Any]) -> None:
        self.dropped += 1
        local = self._subscribers.get(subscriber.channel)
        if local is not None:
            local.discard(subscriber)
        subscriber.interrupt(f"slow consumer: more than {subscriber.maxsize} messages behind")

    def _interrupt_all(self, reason: str) -> None:
        for local in self._subscribers.values():
            for subscriber in list(local):
                subscriber.interrupt(reason)

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        await cancel_and_wait(reader)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        self._interrupt_all("the bus was closed")
        self._subscribers.clear()
        self._confirmed.clear()


# --------------------------------------------------------------------------- encoding


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), default=str)


def encode_event(event: ExecutionEvent) -> dict[str, Any]:
    return {
        "e": event.execution_id,
        "s": event.sequence,
        "t": event.type.value,
        "n": event.node_id,
        "a": event.at.isoformat(),
        "d": event.data,
    }


def decode_event(m: dict[str, Any]) -> ExecutionEvent:
    return ExecutionEvent(
        execution_id=m["e"],
        sequence=int(m["s"]),
        type=EventType(m["t"]),
        node_id=m.get("n"),
        at=datetime.fromisoformat(m["a"]),
        data=m.get("d"),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def encode_execution(e: Execution) -> dict[str, Any]:
    """A status change: the record without its inputs (read the execution for those)."""
    return {
        "id": e.id,
        "status": e.status.value,
        "flowId": e.flow_id,
        "flowVersion": e.flow_version,
        "crewId": e.crew_id,
        "outputs": e.outputs,
        "error": e.error,
        "cancelRequested": e.cancel_requested,
        "attempts": e.attempts,
        "createdBy": e.created_by,
        "createdAt": e.created_at.isoformat(),
        "startedAt": _iso(e.started_at),
        "finishedAt": _iso(e.finished_at),
    }


def decode_execution(m: dict[str, Any]) -> Execution:
    return Execution(
        id=m["id"],
        status=ExecutionStatus(m["status"]),
        inputs=None,
        created_at=datetime.fromisoformat(m["createdAt"]),
        flow_id=m.get("flowId"),
        flow_version=m.get("flowVersion"),
        crew_id=m.get("crewId"),
        outputs=m.get("outputs"),
        error=m.get("error"),
        cancel_requested=bool(m.get("cancelRequested")),
        attempts=int(m.get("attempts") or 0),
        created_by=m.get("createdBy"),
        started_at=_dt(m.get("startedAt")),
        finished_at=_dt(m.get("finishedAt")),
    )


def _decode_cancel(m: dict[str, Any]) -> ExecutionRef:
    return ExecutionRef(tenant_id=m["t"], tenant_schema=m["s"], execution_id=m["e"])
