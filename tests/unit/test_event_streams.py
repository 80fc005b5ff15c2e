"""domain.executions.streams.follow: replay, then live, no gap, no duplicate (no services)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from domain.executions.events import EventType, ExecutionEvent
from domain.executions.streams import FeedInterrupted, follow

EID = "e1"


def ev(seq: int, type: EventType = EventType.LOG) -> ExecutionEvent:
    return ExecutionEvent(EID, seq, type, None, datetime(2026, 1, 1, tzinfo=UTC), {"n": seq})


class Log:
    def __init__(self, events: list[ExecutionEvent] | None = None) -> None:
        self.events = list(events or [])
        self.reads = 0

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        self.reads += 1
        out = [
            e for e in self.events if e.sequence > after and (before is None or e.sequence < before)
        ]
        return out[:limit]

    async def head(self, execution_id: str) -> tuple[int, bool]:
        if not self.events:
            return 0, False
        return self.events[-1].sequence, self.events[-1].is_terminal


class Sub:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[ExecutionEvent | Exception] = asyncio.Queue()

    async def next(self, timeout: float | None = None) -> ExecutionEvent | None:
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, Exception):
            raise item
        return item


class Feed:
    def __init__(self) -> None:
        self.subs: list[Sub] = []
        self.opened = asyncio.Event()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Sub]:
        sub = Sub()
        self.subs.append(sub)
        self.opened.set()
        yield sub

    def publish(self, event: ExecutionEvent | Exception) -> None:
        self.subs[-1].queue.put_nowait(event)


async def take(stream: AsyncIterator[ExecutionEvent], n: int | None = None) -> list[int]:
    out: list[int] = []
    async for e in stream:
        out.append(e.sequence)
        if n is not None and len(out) == n:
            break
    return out


async def test_replay_then_live_skips_what_was_replayed() -> None:
    log, feed = Log([ev(1), ev(2), ev(3)]), Feed()

    async def writer() -> None:
        await feed.opened.wait()
        # Published during the replay: 3 is a duplicate of the stored one.
        log.events.append(ev(4))
        for e in (ev(3), ev(4), ev(5)):
            if e.sequence == 5:
                log.events.append(e)
            feed.publish(e)
        log.events.append(ev(6, EventType.EXECUTION_COMPLETED))
        feed.publish(log.events[-1])

    task = asyncio.create_task(writer())
    assert await take(follow(log, feed, EID, 0)) == [1, 2, 3, 4, 5, 6]
    await task


async def test_holes_in_the_live_stream_are_filled_from_the_log() -> None:
    log, feed = Log([ev(1)]), Feed()
    stream = follow(log, feed, EID, 0, idle_poll=5)
    assert await take(stream, 1) == [1]
    log.events += [ev(2), ev(3), ev(4)]
    feed.publish(ev(4))  # 2 and 3 were published out of order / lost
    feed.publish(ev(2))
    feed.publish(ev(3))
    log.events.append(ev(5, EventType.EXECUTION_FAILED))
    feed.publish(log.events[-1])
    assert await take(stream) == [2, 3, 4, 5]


async def test_interrupted_feed_resubscribes_and_catches_up() -> None:
    log, feed = Log([ev(1)]), Feed()
    stream = follow(log, feed, EID, 0, idle_poll=5)
    assert await take(stream, 1) == [1]
    log.events += [ev(2), ev(3)]
    feed.publish(FeedInterrupted("slow consumer"))
    rest = asyncio.create_task(take(stream))
    while len(feed.subs) < 2:
        await asyncio.sleep(0.01)
    log.events.append(ev(4, EventType.EXECUTION_CANCELLED))
    feed.publish(log.events[-1])
    assert await rest == [2, 3, 4]


async def test_a_quiet_bus_falls_back_to_polling_the_log() -> None:
    log, feed = Log([ev(1)]), Feed()
    stream = follow(log, feed, EID, 0, idle_poll=0.05)
    assert await take(stream, 1) == [1]
    log.events += [ev(2), ev(3, EventType.EXECUTION_COMPLETED)]  # never published
    assert await asyncio.wait_for(take(stream), 2) == [2, 3]


async def test_tail_mode_starts_at_the_head_and_reports_it() -> None:
    log, feed = Log([ev(1), ev(2)]), Feed()
    seen: list[int] = []

    async def subscribed(sequence: int) -> None:
        seen.append(sequence)
        log.events.append(ev(3, EventType.EXECUTION_COMPLETED))
        feed.publish(log.events[-1])

    assert await take(follow(log, feed, EID, None, on_subscribed=subscribed)) == [3]
    assert seen == [2]


async def test_tail_of_a_finished_run_ends_at_once() -> None:
    log, feed = Log([ev(1), ev(2, EventType.EXECUTION_COMPLETED)]), Feed()
    assert await take(follow(log, feed, EID, None)) == []


async def test_replay_only_reads_the_log_once_and_stops() -> None:
    log = Log([ev(i) for i in range(1, 8)])
    assert await take(follow(log, None, EID, 4, live=False)) == [5, 6, 7]
    with pytest.raises(ValueError):
        await take(follow(log, None, EID, 0))


async def test_replay_stops_at_the_terminal_event_and_pages() -> None:
    events = [ev(i) for i in range(1, 1200)] + [ev(1200, EventType.EXECUTION_COMPLETED)]
    log, feed = Log(events), Feed()
    assert await take(follow(log, feed, EID, 0)) == list(range(1, 1201))
    assert log.reads >= 3  # pages of 500
