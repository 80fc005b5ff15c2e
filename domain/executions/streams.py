"""Live event streams: replay the stored log, then follow the bus, with no gap and no duplicate.

The bus (Redis pub/sub) is fast but lossy: a message published while nobody listens, while
the connection is being re-established, or to a subscriber that fell too far behind is
gone. The event log (PostgreSQL) is complete: every event is committed *before* it is
published. So a stream:

1. subscribes to the bus and waits until the subscription is confirmed (from then on every
   published event reaches the subscription's bounded queue);
2. replays the log after `after` (everything committed so far, including anything
   published before step 1);
3. follows the bus, skipping sequences it already yielded and filling any hole from the log
   (an event published during the replay, publishes of two writers arriving out of order,
   a dropped message); when the bus is quiet for `idle_poll` seconds it polls the log, so
   even a lost terminal event ends the stream;
4. when the subscription is interrupted (slow consumer dropped, connection reset), it
   subscribes again and catches up from the log.

The stream ends right after the terminal event (EXECUTION_COMPLETED / _FAILED / _CANCELLED).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from domain.executions.events import ExecutionEvent

T_co = TypeVar("T_co", covariant=True)

DEFAULT_IDLE_POLL = 5.0
REPLAY_PAGE = 500


class FeedInterrupted(Exception):
    """Messages may have been lost on this subscription: subscribe again and resync."""


class Subscription(Protocol[T_co]):
    async def next(self, timeout: float | None = None) -> T_co | None:
        """The next message; None when `timeout` passed first.

        Raises FeedInterrupted when messages may have been lost.
        """
        ...


class EventLog(Protocol):
    """The stored events of the executions of one tenant."""

    async def events_after(
        self, execution_id: str, after: int, limit: int, before: int | None = None
    ) -> list[ExecutionEvent]:
        """Events with after < sequence (< before), in sequence order, at most `limit`."""
        ...

    async def head(self, execution_id: str) -> tuple[int, bool]:
        """(last sequence, whether the event with that sequence is terminal)."""
        ...


EventFeed = Callable[[], AbstractAsyncContextManager[Subscription[ExecutionEvent]]]


async def replay(
    log: EventLog, execution_id: str, after: int, before: int | None = None
) -> AsyncIterator[ExecutionEvent]:
    """Stored events after `after` (and before `before`), page by page, up to a terminal one."""
    last = after
    while True:
        page = await log.events_after(execution_id, last, REPLAY_PAGE, before)
        for event in page:
            yield event
            last = event.sequence
            if event.is_terminal:
                return
        if len(page) < REPLAY_PAGE:
            return


async def follow(
    log: EventLog,
    feed: EventFeed | None,
    execution_id: str,
    after: int | None,
    *,
    live: bool = True,
    idle_poll: float = DEFAULT_IDLE_POLL,
    on_subscribed: Callable[[int], Awaitable[None]] | None = None,
) -> AsyncIterator[ExecutionEvent]:
    """Events of one execution in sequence order, each once; see the module docstring.

    - `after`: replay the events after this sequence; None starts at the head of the log
      (live events only; used for a shared live tail).
    - `live=False`: replay only, no bus (`feed` may be None).
    - `on_subscribed(sequence)` runs once the bus subscription is confirmed, with the
      sequence the stream continues after.
    """
    last = after
    if not live:
        async for event in replay(log, execution_id, last or 0):
            yield event
        return
    if feed is None:
        raise ValueError("a live stream needs a feed")
    first = True
    while True:
        try:
            async with feed() as subscription:
                if last is None:
                    head, done = await log.head(execution_id)
                    if done:
                        return
                    last = head
                if first and on_subscribed is not None:
                    await on_subscribed(last)
                first = False
                async for event in replay(log, execution_id, last):
                    yield event
                    last = event.sequence
                    if event.is_terminal:
                        return
                while True:
                    message = await subscription.next(idle_poll)
                    if message is None:  # quiet bus: lost messages are in the log
                        async for event in replay(log, execution_id, last):
                            yield event
                            last = event.sequence
                            if event.is_terminal:
                                return
                        continue
                    if message.sequence <= last:
                        continue  # already yielded (from the log, or a duplicate)
                    if message.sequence > last + 1:  # a hole: the log has it
                        async for event in replay(log, execution_id, last, message.sequence):
                            yield event
                            last = event.sequence
                            if event.is_terminal:
                                return
                        if message.sequence != last + 1:
                            continue  # still a hole: the next poll of the log fills it
                    yield message
                    last = message.sequence
                    if message.is_terminal:
                        return
        except FeedInterrupted:
            continue  # subscribe again; the replay above catches up from the log
