"""Graceful shutdown of `crewgraph serve`: SIGTERM and SIGINT alike.

On the first signal the process drains:

1. `/readyz` answers 503 `{"status": "draining"}` (a load balancer stops sending), new
   GraphQL requests get 503 `SERVICE_UNAVAILABLE` with `Connection: close` and
   `Retry-After: 1` (a new WebSocket is refused the same way), while the listener stays
   open so the probes keep answering. Other paths (the probes, the scripted local model
   that running executions may be calling) are still served. `on_drain` callbacks run
   (`crewgraph serve` pauses its sweeper: executions handed back by other processes go
   to one that stays).
2. Every open WebSocket is closed with 1001 ("going away"); clients reconnect elsewhere
   and resume their subscriptions with `afterSequence`.
3. HTTP requests already under way finish, for up to `CREWGRAPH_SHUTDOWN_GRACE_SECONDS`.
4. uvicorn closes the listener and idle connections, then the application's lifespan
   ends: the runner stops its runs without a terminal write and releases their leases,
   so another process resumes them at once (`ExecutionRuntime.stop(release=True)`).
5. `crewgraph serve` stops the embedded services it started and exits 0.

A second signal stops waiting (as a second Ctrl-C does with uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("crewgraph.lifecycle")

GOING_AWAY = 1001  # WebSocket close code: the server is going down
PROBES = frozenset({"/healthz", "/readyz"})


def _refusal(scope: Scope) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """503 for a GraphQL request arriving while the process drains."""
    extensions: dict[str, str] = {"code": "SERVICE_UNAVAILABLE"}
    request_id = (scope.get("state") or {}).get("request_id")
    if isinstance(request_id, str):
        extensions["requestId"] = request_id
    error = {"message": "the server is shutting down; retry the request", "extensions": extensions}
    body = json.dumps({"data": None, "errors": [error]}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    return headers, body


class Lifecycle:
    """The draining state of one API process, shared by `LifecycleGuard` (the ASGI
    side), `/readyz` and `GracefulServer` (the signal side)."""

    def __init__(self, refused_path: str = "/graphql") -> None:
        self.refused_path = refused_path
        self.draining = False
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._sockets: dict[int, Callable[[], Any]] = {}
        self._next_socket = 0
        self._force = False
        self._on_drain: list[Callable[[], Any]] = []

    @property
    def in_flight(self) -> int:
        """HTTP requests of this process under way (probes not counted)."""
        return self._in_flight

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    def guard(self, app: ASGIApp) -> LifecycleGuard:
        return LifecycleGuard(app, self)

    def on_drain(self, callback: Callable[[], Any]) -> None:
        """Call `callback` when draining begins (e.g. stop taking new executions)."""
        self._on_drain.append(callback)

    def force(self) -> None:
        """Stop waiting for in-flight requests (a second signal)."""
        self._force = True
        if self._idle is not None:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new work, close WebSockets with 1001, and wait up to `grace` seconds
        for in-flight HTTP requests; True when none is left."""
        self.draining = True
        for callback in self._on_drain:
            try:
                callback()
            except Exception:
                log.exception("a drain callback failed")
        for close in list(self._sockets.values()):
            close()
        if self._in_flight == 0 or self._force:
            return self._in_flight == 0
        self._idle = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        left = self._in_flight
        if left:
            log.warning("shutdown grace of %.1f s over, %d request(s) still under way", grace, left)
        return left == 0

    # ---- bookkeeping for the guard

    def _enter(self) -> None:
        self._in_flight += 1

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def _add_socket(self, close: Callable[[], Any]) -> int:
        self._next_socket += 1
        self._sockets[self._next_socket] = close
        return self._next_socket

    def _remove_socket(self, ident: int) -> None:
        self._sockets.pop(ident, None)


class LifecycleGuard:
    """ASGI middleware: counts in-flight requests, refuses new GraphQL work while
    draining, and closes open WebSockets with 1001 when draining begins.

    Sits inside `RequestLimits`, so the `send` a WebSocket scope gets here is still
    the server's own (server/ws.py writes shared frames through it)."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        lifecycle = self.lifecycle
        path = scope.get("path", "")
        if path in PROBES:
            await self.app(scope, receive, send)
            return
        if lifecycle.draining and path == lifecycle.refused_path:
            headers, body = _refusal(scope)
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        lifecycle._enter()
        try:
            await self.app(scope, receive, send)
        finally:
            lifecycle._leave()

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        lifecycle = self.lifecycle
        if lifecycle.draining:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.close", "code": GOING_AWAY})
            return
        closed = False
        pending: set[asyncio.Task[None]] = set()

        async def close_going_away() -> None:
            with contextlib.suppress(Exception):
                await send(
                    {"type": "websocket.close", "code": GOING_AWAY, "reason": "server shutdown"}
                )

        def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            task = asyncio.get_running_loop().create_task(close_going_away())
            pending.add(task)
            task.add_done_callback(pending.discard)

        async def guarded_send(message: Message) -> None:
            # After our close the application's own frames (a final `complete`, its
            # close) have nowhere to go; the server would raise on them.
            if not closed:
                await send(message)

        ident = lifecycle._add_socket(close)
        try:
            await self.app(scope, receive, guarded_send)
        finally:
            lifecycle._remove_socket(ident)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining through `Lifecycle` before its own shutdown.

    uvicorn re-raises a captured signal once it is done; SIGTERM's default action
    would then kill the process before `crewgraph serve` stops the embedded services it
    started (and exit 143). This server records no signal: the process ends normally."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace = grace
        self.signals: list[int] = []  # received, in order (for the log and tests)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        if self.should_exit:  # a second signal: stop waiting
            self.force_exit = True
            self.lifecycle.force()
        else:
            self.should_exit = True

    async def main_loop(self) -> None:
        await super().main_loop()
        if self.force_exit:
            return
        name = signal.Signals(self.signals[0]).name if self.signals else "request"
        log.warning(
            "shutdown (%s): draining %d request(s), %d WebSocket(s), up to %.1f s",
            name,
            self.lifecycle.in_flight,
            self.lifecycle.open_sockets,
            self.grace,
        )
        await self.lifecycle.drain(self.grace)


def serve(
    app: ASGIApp, options: dict[str, Any], lifecycle: Lifecycle, grace: float
) -> GracefulServer:
    """Run `app` with uvicorn `options` until a signal has drained it; the server."""
    # What is still open once the drain is over (requests past the grace, WebSockets
    # whose clients do not answer the close) gets one more second, then is cancelled.
    config = uvicorn.Config(app, timeout_graceful_shutdown=1, **options)
    server = GracefulServer(config, lifecycle, grace)
    server.run()
    return server
