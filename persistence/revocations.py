"""Credential revocations on Redis: a pub/sub signal to every API process, a deny-list.

    <prefix>:revocations        one message per revocation (domain.ports.Revocation)
    <prefix>:deny:<key>         a denied session (`s:<id>`), expiring with its last token

The use cases decide what is revoked (domain/auth.py); this adapter only carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import redis.asyncio as aioredis

from domain.ports import Revocation
from persistence.bus import RedisBus, _Subscriber


class RedisRevocations:
    def __init__(self, redis: aioredis.Redis, bus: RedisBus, prefix: str) -> None:
        self.redis = redis
        self.bus = bus
        self.prefix = prefix
        self.channel = f"{prefix}:revocations"

    def _deny_key(self, key: str) -> str:
        return f"{self.prefix}:deny:{key}"

    async def announce(self, revocation: Revocation) -> None:
        await self.bus.publish(self.channel, encode_revocation(revocation))

    async def deny(self, key: str, ttl_seconds: int) -> None:
        await self.redis.set(self._deny_key(key), b"1", ex=max(1, ttl_seconds))

    async def denied(self, keys: Sequence[str]) -> bool:
        if not keys:
            return False
        return int(await self.redis.exists(*(self._deny_key(k) for k in keys))) > 0

    def listen(self) -> AbstractAsyncContextManager[_Subscriber[Revocation]]:
        """The revocations announced by any process, from when this returns."""
        return self.bus.subscribe(self.channel, decode_revocation)


def encode_revocation(r: Revocation) -> dict[str, Any]:
    return {
        "t": r.tenant_id,
        "u": r.user_id,
        "k": r.api_key_id,
        "s": r.session_id,
        "r": r.reason,
        "w": r.tenant_wide,
    }


def decode_revocation(m: dict[str, Any]) -> Revocation:
    def text(name: str) -> str | None:
        value = m.get(name)
        return value if isinstance(value, str) and value else None

    return Revocation(
        tenant_id=str(m.get("t") or ""),
        user_id=text("u"),
        api_key_id=text("k"),
        session_id=text("s"),
        reason=text("r") or "credentials revoked",
        tenant_wide=m.get("w") is True,
    )
