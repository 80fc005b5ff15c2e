"""Authenticated principals, remembered across HTTP requests for a few seconds.

Authenticating costs two SELECTs (and, for a user token of a session, a Redis look-up)
on every request; a client sending the same credentials many times a second gets the
same answer. An entry lives `ttl` seconds at most (never past the credentials' own
expiry), and goes AT ONCE when its credentials are revoked:

- `IdentityService` announces every revocation (domain/ports.Revocation) through the
  `CredentialRevocations` port; `RevokingFirst` wraps that port so this process drops
  the entries before the announcement leaves (the very next request is checked again);
- every process listens to the announcements on Redis (persistence/revocations.py) and
  drops the matching entries: by user, API key or session, or every entry of a tenant
  for a tenant-wide revocation (no user, key or session named);
- the cache is used only while that listener is subscribed: before it is, and from the
  moment it loses its connection (announcements may be lost), nothing is served from it
  and everything it held is forgotten;
- an authentication that was under way when a revocation or a reset happened is not
  stored (it may have read the credentials just before they were revoked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from domain.executions.streams import FeedInterrupted
from domain.identity import Principal
from domain.ports import CredentialRevocations, Revocation
from domain.tasks import cancel_and_wait

log = logging.getLogger("crewgraph.auth")

Listen = Callable[[], AbstractAsyncContextManager[Any]]
"""Opens a subscription to announced revocations (`next(timeout)` → Revocation | None)."""

DEFAULT_MAX_ENTRIES = 10_000


def credential_key(kind: str, secret: str) -> str:
    """What an entry is filed under: a digest, so the cache holds no usable secret."""
    return kind + ":" + hashlib.blake2b(secret.encode(), digest_size=20).hexdigest()


class _Entry:
    __slots__ = ("deadline", "keys", "principal")

    def __init__(self, principal: Principal, deadline: float, keys: list[str]) -> None:
        self.principal = principal
        self.deadline = deadline
        self.keys = keys


def _tenant_wide(revocation: Revocation) -> bool:
    """A tenant-wide revocation (suspension), or one naming no user, key or session."""
    return getattr(revocation, "tenant_wide", False) is True or not revocation.keys()


class PrincipalCache:
    def __init__(
        self,
        ttl: float,
        listen: Listen | None,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.listen = listen
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_key: dict[str, set[str]] = {}  # revocation key / "t:<tenant>" → entries
        self._generation = 0  # bumped by every drop and reset
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listening = False
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.listen is not None

    def __len__(self) -> int:
        return len(self._entries)

    # ---- lookups

    def generation(self) -> int:
        """Taken before authenticating; `put` stores only if nothing was dropped since."""
        return self._generation

    def get(self, key: str) -> Principal | None:
        if not self.enabled:
            return None
        self._ensure_listening()
        if not self.listening:
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if self._clock() >= entry.deadline or _expired(entry.principal):
            self._remove(key)
            self.misses += 1
            return None
        self.hits += 1
        return entry.principal

    def put(self, key: str, principal: Principal, since: int) -> None:
        if not self.enabled or not self.listening or since != self._generation:
            return
        deadline = self._clock() + self.ttl
        if principal.expires_at is not None:
            left = (principal.expires_at - datetime.now(UTC)).total_seconds()
            if left <= 0:
                return
            deadline = min(deadline, self._clock() + left)
        self._remove(key)
        keys = [*principal.revocation_keys(), f"t:{principal.tenant_id}"]
        self._entries[key] = _Entry(principal, deadline, keys)
        for k in keys:
            self._by_key.setdefault(k, set()).add(key)
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))

    # ---- dropping

    def revoke(self, revocation: Revocation) -> int:
        """Forget every entry the revocation covers; how many."""
        self._generation += 1
        keys: Sequence[str] = (
            [f"t:{revocation.tenant_id}"] if _tenant_wide(revocation) else revocation.keys()
        )
        doomed: set[str] = set()
        for k in keys:
            doomed |= self._by_key.get(k, set())
        for key in doomed:
            self._remove(key)
        return len(doomed)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_key.clear()

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for k in entry.keys:
            holders = self._by_key.get(k)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._by_key[k]

    # ---- the listener

    def _ensure_listening(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._stopped()
        self._task = loop.create_task(self._run(), name="principal-cache-revocations")

    async def start(self) -> None:
        """Listen now and wait (briefly) until subscribed; requests start it otherwise."""
        if not self.enabled:
            return
        self._ensure_listening()
        for _ in range(200):
            if self.listening:
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopped()
        if task is not None and self._loop is asyncio.get_running_loop():
            await cancel_and_wait(task)

    def _stopped(self) -> None:
        self.listening = False
        self.clear()

    async def _run(self) -> None:
        assert self.listen is not None
        try:
            while True:
                try:
                    async with self.listen() as feed:
                        self.clear()  # whatever was stored before the subscription
                        self.listening = True
                        while True:
                            revocation = await feed.next(timeout=None)
                            if isinstance(revocation, Revocation):
                                self.revoke(revocation)
                except asyncio.CancelledError:
                    raise
                except FeedInterrupted as exc:
                    log.warning("revocation signals interrupted (%s); principal cache off", exc)
                except Exception:
                    log.exception("principal cache listener failed")
                finally:
                    self._stopped()
                await asyncio.sleep(0.5)
        finally:
            self._stopped()


def _expired(principal: Principal) -> bool:
    expires = principal.expires_at
    return expires is not None and expires <= datetime.now(UTC)


class RevokingFirst:
    """`CredentialRevocations` that drops this process's cached principals before the
    announcement goes out, so no request of this process is served from them after it."""

    def __init__(self, inner: CredentialRevocations, cache: PrincipalCache) -> None:
        self.inner = inner
        self.cache = cache

    async def announce(self, revocation: Revocation) -> None:
        self.cache.revoke(revocation)
        await self.inner.announce(revocation)

    async def deny(self, key: str, ttl_seconds: int) -> None:
        await self.inner.deny(key, ttl_seconds)

    async def denied(self, keys: Sequence[str]) -> bool:
        return await self.inner.denied(keys)

    def __getattr__(self, name: str) -> Any:  # listen(), channel, ... of the adapter
        return getattr(self.inner, name)


if TYPE_CHECKING:  # mypy: the wrapper is the port
    _port: type[CredentialRevocations] = RevokingFirst
