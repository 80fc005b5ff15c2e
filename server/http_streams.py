"""Subscriptions over plain HTTP: Apollo's multipart protocol and `graphql-sse`.

Some networks (corporate proxies) let no WebSocket through, so the same subscriptions
are served as one streaming HTTP response too: a POST (or GET) to `/graphql` with
`Accept: multipart/mixed;subscriptionSpec="1.0"` (Apollo Client's HttpLink, `gql`'s
HTTP transports) or `Accept: text/event-stream` (graphql-sse's distinct-connections
mode). Strawberry parses, validates and runs the operation through the same schema
extensions as any request (limits, cost, rate limits, error codes); the resolvers do
replay-then-live as they do on a socket that is not multiplexed. This module adds what
a WebSocket connection gets elsewhere:

- Authentication before anything streams: the `Authorization` / `X-API-Key` header is
  checked first, and a refusal is one GraphQL error (`extensions.code`) in the
  protocol's own framing, then the end of the stream: never a 500 or a cut connection.
  So is anything that goes wrong later (INTERNAL_SERVER_ERROR, logged).
- Concurrency: the WebSocket multiplexer does not see these streams, so they have their
  own bound, per caller (a user, or an API key) and per team, in this process; one over
  either is LIMIT_EXCEEDED.
- Revocation: an open stream registers with the process's `SocketRegistry` like a
  socket; a revoked credential or the access token's expiry ends it with
  UNAUTHENTICATED (resubscribe with fresh credentials and `afterSequence`). Draining
  (shutdown) ends every stream with SERVICE_UNAVAILABLE.
- Slow clients: the response is pulled, not pushed. The ASGI server sends a chunk only
  when the socket has room, the generator is asked for the next one only after that,
  the execution's bus subscription holds a bounded queue (a subscriber too far behind
  is dropped and catches up from the event log), so a stalled client holds a bounded
  amount of memory. A chunk that cannot be written for `send_timeout` seconds ends the
  response and closes the connection (`server.app` enforces it), freeing its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from strawberry.http import GraphQLHTTPResponse
from strawberry.http.streaming import HTTPStreamTransport

from domain.errors import DomainError
from domain.identity import TENANT_SUSPENDED, Principal, tenant_suspended
from schema.errors import INTERNAL_MESSAGE
from server.sockets import SocketRegistry

log = logging.getLogger("crewgraph.http")

SHUTDOWN_MESSAGE = "the server is shutting down; subscribe again (with afterSequence)"


class StreamLimits(Protocol):
    http_streams_per_caller: int
    http_streams_per_tenant: int


class StreamContext(Protocol):
    request_id: str

    async def principal(self) -> Principal: ...

    def expire_principal(self) -> None: ...

    def revoke(self, reason: str) -> None: ...


def caller_of(principal: Principal) -> str:
    """Whose stream it is: an API key counts on its own, apart from its creator."""
    if principal.api_key_id:
        return f"key:{principal.api_key_id}"
    return f"user:{principal.user_id}"


def error_payload(
    message: str, code: str, request_id: str | None, more: dict[str, Any] | None = None
) -> dict[str, Any]:
    extensions: dict[str, Any] = {**(more or {}), "code": code}
    if request_id:
        extensions["requestId"] = request_id
    return {"data": None, "errors": [{"message": message, "extensions": extensions}]}


class _Stream:
    """One open HTTP stream: its slot, and how it is ended from outside."""

    def __init__(self, streams: HttpStreams, context: StreamContext, principal: Principal):
        self.streams = streams
        self.context = context
        self.tenant = principal.tenant_id
        self.caller = caller_of(principal)
        self.principal = principal
        self.ended = asyncio.Event()
        self.code = ""
        self.reason = ""
        self.extensions: dict[str, Any] = {}
        self._expiry: asyncio.TimerHandle | None = None

    def end(self, reason: str, code: str) -> None:
        if not self.ended.is_set():
            self.code, self.reason = code, reason
            self.ended.set()

    # ---- what SocketRegistry calls (server/sockets.py)

    def revoke(self, reason: str) -> None:
        self.context.revoke(reason)
        if reason == TENANT_SUSPENDED:  # a tenant-wide revocation: as any request is told
            suspended = tenant_suspended()
            self.extensions = dict(suspended.extensions)
            self.end(suspended.message, suspended.code)
            return
        self.end(reason, "UNAUTHENTICATED")

    async def recheck(self) -> None:
        if self.ended.is_set():
            return
        self.context.expire_principal()
        try:
            await self.context.principal()
        except DomainError as exc:
            self.context.revoke(exc.message)
            self.extensions = dict(exc.extensions)
            self.end(exc.message, exc.code)

    async def watch(self, registry: SocketRegistry | None) -> None:
        if registry is not None:
            await registry.start()  # listens from the first stream (or socket) on
            registry.add(self, self.principal.revocation_keys())
        expires = self.principal.expires_at
        if expires is not None:
            delay = (expires - datetime.now(UTC)).total_seconds()
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.revoke, "access token expired"
            )

    def release(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.streams._release(self)


class HttpStreams:
    """The open HTTP subscription streams of this process, bounded per caller and team."""

    def __init__(self, limits: StreamLimits, registry: SocketRegistry | None = None) -> None:
        self.limits = limits  # read at every open: operators (and tests) may change them
        self.registry = registry
        self._by_caller: Counter[str] = Counter()
        self._by_tenant: Counter[str] = Counter()
        self._open: set[_Stream] = set()
        self.refused = 0  # streams refused for a limit (tests, metrics)

    def __len__(self) -> int:
        return len(self._open)

    def _acquire(self, context: StreamContext, principal: Principal) -> _Stream | str:
        """The stream's slot, or why there is none."""
        caller, tenant = caller_of(principal), principal.tenant_id
        per_caller = self.limits.http_streams_per_caller
        per_tenant = self.limits.http_streams_per_tenant
        if self._by_caller[caller] >= per_caller:
            self.refused += 1
            return (
                f"too many open HTTP subscription streams for this caller (at most "
                f"{per_caller}); close one, or use one WebSocket for many subscriptions"
            )
        if self._by_tenant[tenant] >= per_tenant:
            self.refused += 1
            return f"too many open HTTP subscription streams for this team (at most {per_tenant})"
        stream = _Stream(self, context, principal)
        self._by_caller[caller] += 1
        self._by_tenant[tenant] += 1
        self._open.add(stream)
        return stream

    def _release(self, stream: _Stream) -> None:
        if stream not in self._open:
            return
        self._open.discard(stream)
        if self.registry is not None:
            self.registry.remove(stream)
        for counter, key in ((self._by_caller, stream.caller), (self._by_tenant, stream.tenant)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def end_all(self, reason: str = SHUTDOWN_MESSAGE, code: str = "SERVICE_UNAVAILABLE") -> None:
        """End every open stream (draining): each gets one error, then its end."""
        for stream in list(self._open):
            stream.end(reason, code)

    def guard(
        self,
        context: StreamContext,
        transport: HTTPStreamTransport,
        stream: Callable[[], AsyncIterator[str]],
        encode_json: Callable[[object], str],
    ) -> Callable[[], AsyncGenerator[str, None]]:
        """`stream` (Strawberry's encoded chunks) behind the checks above."""

        def fail(message: str, code: str, more: dict[str, Any] | None = None) -> list[str]:
            payload = cast(
                GraphQLHTTPResponse, error_payload(message, code, context.request_id, more)
            )
            return [transport.encode_next(payload, encode_json), transport.encode_complete()]

        async def guarded() -> AsyncGenerator[str, None]:
            try:
                principal = await context.principal()
            except DomainError as exc:
                for chunk in fail(exc.message, exc.code, exc.extensions):
                    yield chunk
                return
            slot = self._acquire(context, principal)
            if isinstance(slot, str):
                for chunk in fail(slot, "LIMIT_EXCEEDED"):
                    yield chunk
                return
            try:
                await slot.watch(self.registry)
                async for chunk in _until_ended(stream(), slot, fail):
                    yield chunk
            finally:
                slot.release()

        return guarded


async def _until_ended(
    source: AsyncIterator[str], slot: _Stream, fail: Callable[[str, str, dict[str, Any]], list[str]]
) -> AsyncGenerator[str, None]:
    """The chunks of `source` until it ends, fails, or the stream is ended from outside.

    Each chunk is awaited in a task of its own, raced against the end signal. When the
    response is cancelled (the client went away) that task is cancelled, and the source
    generator, running in it, closes there; it must not be closed from here meanwhile
    (an async generator cannot be closed while it runs)."""
    ended = asyncio.ensure_future(slot.ended.wait())
    step: asyncio.Future[str] | None = None
    finished = False
    tail: list[str] = []
    try:
        while True:
            step = asyncio.ensure_future(source.__anext__())
            await asyncio.wait((step, ended), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
                finished = True
                tail = fail(slot.reason, slot.code, slot.extensions)
                break
            try:
                chunk = step.result()
            except StopAsyncIteration:
                finished = True
                return
            except Exception:
                finished = True
                log.exception("an HTTP subscription stream failed")
                tail = fail(INTERNAL_MESSAGE, "INTERNAL_SERVER_ERROR", {})
                break
            yield chunk
    finally:
        ended.cancel()
        if step is not None and not step.done():
            step.cancel()
        elif not finished and isinstance(source, AsyncGenerator):
            with contextlib.suppress(Exception):
                await source.aclose()  # suspended at a chunk the client did not take
    for chunk in tail:
        yield chunk
