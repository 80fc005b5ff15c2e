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
whole job per subscriber.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field


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
