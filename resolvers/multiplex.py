"""How a subscription resolver cooperates with the multiplexing WebSocket handler.

`server/ws.py` runs each multiplexed subscription in two parts, both through the stock
Strawberry pipeline (validation, limits, permissions, argument parsing, error codes):

- per subscriber, a *replay* run (`MUX` holds a `Replay`): the resolver checks access,
  calls `join()` (the subscriber joins its group and starts buffering the group's live
  frames), yields the stored events after the subscriber's `afterSequence`, records the
  sequence of each and sets `live` when the stream should continue live;
- per group, one *tail* run (`MUX` holds a `Tail`): the resolver follows live events
  only, calls `ready(sequence)` once its bus subscription is confirmed, and appends the
  sequence of each event to `sequences` before yielding it. The handler encodes each result once and
  sends it to every live member of the group.

Without a value in `MUX` (the legacy `graphql-ws` protocol, HTTP tests) resolvers do the
whole job per subscriber. Resolvers see none of this: they hand `multiplexed` a function
that opens their use case's stream from a `Follow`, and yield what it yields.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Replay:
    join: Callable[[], Awaitable[None]]
    sequence: int = 0  # last replayed sequence
    live: bool = False  # continue with the group's live frames after the replay


@dataclass(slots=True)
class Tail:
    ready: Callable[[int], Awaitable[None]]
    # Sequences of the yielded events, in order; the handler pops one per result.
    # (The pipeline may advance the resolver before the previous result is consumed.)
    sequences: deque[int] = field(default_factory=deque)


MUX: ContextVar[Replay | Tail | None] = ContextVar("crewgraph_multiplex", default=None)


@dataclass(frozen=True, slots=True)
class Follow:
    """How to open a use case's stream in the current mode."""

    after: int | None  # replay what is stored after this; None: live only (a group's tail)
    live: bool = True  # False: end after the replay (the group's frames take over)
    before_replay: Callable[[], Awaitable[None]] | None = None  # after the access checks
    on_subscribed: Callable[[int], Awaitable[None]] | None = None  # bus subscription ready

    def when_subscribed(self) -> Callable[[], Awaitable[None]] | None:
        """`on_subscribed` for a stream that is not numbered (it is ready at 0)."""
        hook = self.on_subscribed
        if hook is None:
            return None

        async def subscribed() -> None:
            await hook(0)

        return subscribed


def _never(_: object) -> bool:
    return False


async def multiplexed(
    open_stream: Callable[[Follow], AsyncIterator[T]],
    *,
    after: int = 0,
    sequence: Callable[[T], int] | None = None,
    is_terminal: Callable[[T], bool] = _never,
) -> AsyncIterator[T]:
    """What a subscription resolver yields, whatever the mode `server/ws.py` runs it in.

    `sequence` numbers the items (default: 1, 2, ... in the order they arrive); the replay
    ends at the first item for which `is_terminal` holds, with no live part after it."""
    mode = MUX.get()
    number = sequence if sequence is not None else _counter()
    if isinstance(mode, Replay):
        mode.sequence = after  # live frames continue after this (or after the replay)
        async for item in open_stream(Follow(after, live=False, before_replay=mode.join)):
            mode.sequence = number(item)
            yield item
            if is_terminal(item):
                return
        mode.live = True
        return
    if isinstance(mode, Tail):
        async for item in open_stream(Follow(None, on_subscribed=mode.ready)):
            mode.sequences.append(number(item))
            yield item
        return
    async for item in open_stream(Follow(after)):
        yield item


def _counter() -> Callable[[object], int]:
    numbers = itertools.count(1)
    return lambda _: next(numbers)
