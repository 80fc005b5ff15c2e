"""Chat tokens on Redis: a channel per session, a short-lived buffer per reply.

    <prefix>:t:<tenant>:chat:<session>       the tokens of every reply of the session
    <prefix>:t:<tenant>:chatbuf:<message>    the tokens of one reply so far (a list)
    <prefix>:chatcancel                      cancel signals for the workers

Each token is appended to its reply's buffer and published in one MULTI, so a subscriber
that reads the buffer after subscribing misses nothing: what it read is old, what comes
after arrives on the channel (duplicates are dropped by index). The buffer expires
`BUFFER_TTL_SECONDS` after the last token (`DONE_TTL_SECONDS` after the final one).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from domain.chat.model import ChatToken, ReplyRef
from domain.executions.streams import Subscription
from persistence.bus import RedisBus

BUFFER_TTL_SECONDS = 900
DONE_TTL_SECONDS = 120


def _decode_token(m: dict[str, Any]) -> ChatToken:
    return ChatToken.from_json(m)


def _decode_cancel(m: dict[str, Any]) -> ReplyRef:
    return ReplyRef(
        tenant_id=str(m["t"]),
        tenant_schema=str(m["c"]),
        session_id=str(m["s"]),
        message_id=str(m["m"]),
    )


class RedisChatTokens:
    """`domain.chat.ports.ChatTokenBus` over the process's `RedisBus`."""

    def __init__(self, bus: RedisBus) -> None:
        self._bus = bus
        self._redis = bus.redis
        self._prefix = bus.prefix

    def channel(self, tenant_id: str, session_id: str) -> str:
        return f"{self._prefix}:t:{tenant_id}:chat:{session_id}"

    def buffer_key(self, tenant_id: str, message_id: str) -> str:
        return f"{self._prefix}:t:{tenant_id}:chatbuf:{message_id}"

    @property
    def cancel_channel(self) -> str:
        return f"{self._prefix}:chatcancel"

    async def push(self, tenant_id: str, token: ChatToken) -> None:
        raw = json.dumps(token.to_json(), separators=(",", ":"))
        key = self.buffer_key(tenant_id, token.message_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, raw)
            pipe.expire(key, DONE_TTL_SECONDS if token.done else BUFFER_TTL_SECONDS)
            pipe.publish(self.channel(tenant_id, token.session_id), raw)
            await pipe.execute()

    async def buffered(
        self, tenant_id: str, message_id: str, start: int = 0, stop: int = -1
    ) -> list[ChatToken]:
        # A token's position in the list is at least its index (one writer appends them
        # in order; a late duplicate can only come after), so reading from `start` on
        # finds every index from `start`.
        pending = self._redis.lrange(self.buffer_key(tenant_id, message_id), start, -1)
        raw = await cast("Awaitable[list[bytes]]", pending)
        out: list[ChatToken] = []
        seen: set[int] = set()
        for item in raw:
            token = ChatToken.from_json(json.loads(item))
            if token.index < start or (stop >= 0 and token.index > stop):
                continue
            if token.index in seen:
                continue
            seen.add(token.index)
            out.append(token)
        out.sort(key=lambda t: t.index)
        return out

    def tokens(
        self, tenant_id: str, session_id: str
    ) -> AbstractAsyncContextManager[Subscription[ChatToken]]:
        return self._bus.subscribe(self.channel(tenant_id, session_id), _decode_token)

    async def signal_cancel(self, ref: ReplyRef) -> None:
        await self._bus.publish(
            self.cancel_channel,
            {"t": ref.tenant_id, "c": ref.tenant_schema, "s": ref.session_id, "m": ref.message_id},
        )

    def cancels(self) -> AbstractAsyncContextManager[Subscription[ReplyRef]]:
        return self._bus.subscribe(self.cancel_channel, _decode_cancel)
