"""PrincipalCache on its own: what it stores, for how long, and what drops it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.executions.streams import FeedInterrupted
from domain.identity import Principal
from domain.ports import Revocation
from domain.rbac import Role
from server.principal_cache import PrincipalCache, RevokingFirst, credential_key


class _Feed:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def next(self, timeout: float | None = None) -> Any:
        item = await self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item


class _Signals:
    """Stands in for the Redis subscription: revocations and disconnects on demand."""

    def __init__(self) -> None:
        self.feed = _Feed()
        self.opened = 0

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[_Feed]:
        self.opened += 1
        self.feed = _Feed()
        yield self.feed


def _principal(tenant: str = "t1", user: str = "u1", **kw: Any) -> Principal:
    return Principal(tenant, "tenant_000000000000", Role.MEMBER, user_id=user, **kw)


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def _cache(ttl: float = 5.0, **kw: Any) -> tuple[PrincipalCache, _Signals]:
    signals = _Signals()
    cache = PrincipalCache(ttl, signals.listen, **kw)
    await cache.start()
    assert cache.listening
    return cache, signals


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_entries_live_ttl_seconds_and_never_past_the_credentials() -> None:
    clock = _Clock()
    cache, _ = await _cache(clock=clock)
    cache.put("a", _principal(), cache.generation())
    soon = datetime.now(UTC) + timedelta(seconds=1)
    cache.put("b", _principal(user="u2", expires_at=soon), cache.generation())
    assert cache.get("a") is not None and cache.get("b") is not None
    clock.now += 1.5
    assert cache.get("a") is not None
    assert cache.get("b") is None  # its token expired before the cache's ttl
    clock.now += 4
    assert cache.get("a") is None
    await cache.stop()


async def test_revocations_drop_their_credentials_only() -> None:
    cache, signals = await _cache()
    g = cache.generation()
    cache.put("user", _principal(user="u1", session_id="s1"), g)
    cache.put("other", _principal(user="u2"), g)
    cache.put("key", Principal("t1", "tenant_000000000000", Role.VIEWER, api_key_id="k1"), g)
    cache.put("foreign", _principal(tenant="t2", user="u9"), g)
    await signals.feed.queue.put(Revocation("t1", session_id="s1"))
    await _settle()
    assert cache.get("user") is None and cache.get("other") is not None
    await signals.feed.queue.put(Revocation("t1", api_key_id="k1"))
    await _settle()
    assert cache.get("key") is None and cache.get("other") is not None
    await signals.feed.queue.put(Revocation("t1", user_id="u2"))
    await _settle()
    assert cache.get("other") is None and cache.get("foreign") is not None
    await cache.stop()


async def test_a_revocation_without_user_key_or_session_drops_the_whole_tenant() -> None:
    cache, _ = await _cache()
    g = cache.generation()
    cache.put("a", _principal(user="u1"), g)
    cache.put("b", _principal(user="u2"), g)
    cache.put("c", _principal(tenant="t2", user="u3"), g)
    assert cache.revoke(Revocation("t1")) == 2
    assert cache.get("c") is not None
    cache.put("d", _principal(tenant="t2", user="u4"), cache.generation())
    assert cache.revoke(Revocation("t2", reason="tenant suspended", tenant_wide=True)) == 2
    assert len(cache) == 0
    await cache.stop()


async def test_an_authentication_overtaken_by_a_revocation_is_not_stored() -> None:
    cache, _ = await _cache()
    since = cache.generation()  # authentication starts, reads the user ...
    cache.revoke(Revocation("t1", user_id="u1"))  # ... and the user is revoked meanwhile
    cache.put("a", _principal(), since)
    assert cache.get("a") is None
    await cache.stop()


async def test_a_lost_signal_connection_empties_the_cache_and_stops_it() -> None:
    cache, signals = await _cache()
    cache.put("a", _principal(), cache.generation())
    await signals.feed.queue.put(FeedInterrupted("connection reset"))
    await _settle()
    assert not cache.listening and len(cache) == 0
    cache.put("a", _principal(), cache.generation())  # not stored while deaf
    assert len(cache) == 0
    for _ in range(100):  # it subscribes again by itself
        if cache.listening:
            break
        await asyncio.sleep(0.02)
    assert cache.listening and signals.opened == 2
    await cache.stop()


async def test_disabled_and_bounded() -> None:
    off = PrincipalCache(0, _Signals().listen)
    off.put("a", _principal(), off.generation())
    assert not off.enabled and off.get("a") is None
    cache, _ = await _cache(max_entries=3)
    for i in range(5):
        cache.put(f"k{i}", _principal(user=f"u{i}"), cache.generation())
    assert len(cache) == 3 and cache.get("k0") is None and cache.get("k4") is not None
    await cache.stop()


async def test_revoking_first_drops_locally_before_announcing() -> None:
    cache, _ = await _cache()
    cache.put("a", _principal(), cache.generation())
    seen: list[int] = []

    class Inner:
        async def announce(self, revocation: Revocation) -> None:
            seen.append(len(cache))

        async def deny(self, key: str, ttl_seconds: int) -> None: ...

        async def denied(self, keys: Any) -> bool:
            return False

    await RevokingFirst(Inner(), cache).announce(Revocation("t1", user_id="u1"))
    assert seen == [0]
    await cache.stop()


def test_keys_hold_no_secret() -> None:
    key = credential_key("b", "eyJ.secret.token")
    assert "secret" not in key and key.startswith("b:")
    assert key != credential_key("k", "eyJ.secret.token")
