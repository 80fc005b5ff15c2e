"""The open WebSockets of this process, ended when their credentials are revoked.

`IdentityService` announces every revocation (API key revoked, user deactivated, role
changed, logout), and `TenantAdminService` a tenant's suspension (tenant-wide: every socket
of the tenant, indexed under `t:<tenant>`), on Redis (persistence/revocations.py); each API
process listens and closes its sockets holding those credentials with 4403 (server/ws.py). Should the
signal connection drop (messages may be lost), every socket re-checks its credentials
once it is back, and all of them are re-checked every `recheck_seconds` anyway, so a
missed signal cannot keep revoked credentials alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from domain.executions.streams import FeedInterrupted
from domain.ports import Revocation
from domain.tasks import cancel_and_wait

log = logging.getLogger("crewgraph.ws")

RECHECK_SECONDS = 60.0
_RECHECK_CONCURRENCY = 8


class RevocableSocket(Protocol):
    def revoke(self, reason: str) -> None:
        """Close the socket (4403); nothing more runs on it."""

    async def recheck(self) -> None:
        """Check the socket's credentials again; revoke it when they no longer work."""


Listen = Callable[[], AbstractAsyncContextManager[Any]]
"""Opens a subscription to announced revocations (`next(timeout)` → Revocation | None)."""


class SocketRegistry:
    def __init__(self, listen: Listen | None, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self.listen = listen
        self.recheck_seconds = recheck_seconds
        self._by_key: dict[str, set[RevocableSocket]] = {}
        self._keys: dict[RevocableSocket, list[str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._recheck: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.revoked = 0  # sockets closed by a revocation (tests, metrics)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[RevocableSocket]:
        """The open sockets, as a snapshot: closing one meanwhile does not disturb it."""
        return iter(list(self._keys))

    def add(self, socket: RevocableSocket, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._keys[socket] = keys
        for key in keys:
            self._by_key.setdefault(key, set()).add(socket)

    def remove(self, socket: RevocableSocket) -> None:
        for key in self._keys.pop(socket, ()):
            local = self._by_key.get(key)
            if local is not None:
                local.discard(socket)
                if not local:
                    del self._by_key[key]

    def revoke(self, revocation: Revocation) -> int:
        """Close this process's sockets holding the revoked credentials; how many."""
        sockets: set[RevocableSocket] = set()
        for key in revocation.keys():
            sockets |= self._by_key.get(key, set())
        for socket in sockets:
            self.remove(socket)
            socket.revoke(revocation.reason)
        self.revoked += len(sockets)
        return len(sockets)

    async def recheck_all(self) -> None:
        gate = asyncio.Semaphore(_RECHECK_CONCURRENCY)

        async def one(socket: RevocableSocket) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await socket.recheck()

        await asyncio.gather(*(one(s) for s in list(self._keys)))

    def _recheck_soon(self) -> None:
        """Re-check every socket in the background (the listener keeps listening)."""
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.create_task(self.recheck_all(), name="ws-recheck")

    # ---- the listener

    async def start(self) -> None:
        if self.listen is None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._run(), name="ws-revocations")
        # Sockets opened from now on hear every revocation (tests rely on it, too).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 10.0)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        recheck, self._recheck = self._recheck, None
        await cancel_and_wait(recheck)

    async def _run(self) -> None:
        assert self.listen is not None
        loop = asyncio.get_running_loop()
        missed = False
        while True:
            try:
                async with self.listen() as feed:
                    self.listening.set()
                    if missed:  # signals may have been lost meanwhile
                        self._recheck_soon()
                        missed = False
                    due = loop.time() + self.recheck_seconds
                    while True:
                        revocation = await feed.next(timeout=max(0.0, due - loop.time()))
                        if isinstance(revocation, Revocation):
                            self.revoke(revocation)
                        if loop.time() >= due:
                            self._recheck_soon()
                            due = loop.time() + self.recheck_seconds
            except asyncio.CancelledError:
                raise
            except FeedInterrupted as exc:
                log.warning("revocation signals interrupted (%s); re-checking sockets", exc)
                missed = True
            except Exception:
                log.exception("revocation listener failed; re-checking sockets")
                missed = True
                await asyncio.sleep(1.0)
