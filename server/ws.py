"""graphql-transport-ws with multiplexed execution subscriptions.

Stock Strawberry resolves and serialises every event once per subscriber (~90 µs of CPU
per event per subscriber here), so 1,000 dashboards on one execution fall seconds behind.
This handler groups identical subscriptions and does that work once per group
(Hasura-style multiplexing), without patching Strawberry (pinned: 0.341.2; this subclass
uses `run_operation`, `_send_result_stream`, `Operation` and `forget_id`):

- Eligible: a subscription whose only root field is `executionEvents` or
  `executionUpdates`. Everything else (queries over the socket, `heartbeat`, documents
  with several root fields) runs the stock way.
- Per subscriber: the document runs through the stock pipeline (validation, limits,
  permission classes, argument parsing, error codes) in *replay* mode (see
  `resolvers/multiplex.py`). The resolver checks access (another tenant's execution is
  NOT_FOUND) and only then joins its group; errors reach the subscriber exactly as on
  the stock path. Its stored events after `afterSequence` are sent from that run.
- Per group, keyed by (document, operation name, variables except the one feeding
  `afterSequence`, tenant, role): one upstream run of the same document in *tail* mode
  follows the live events; each result is encoded to JSON once and sent to every live
  member as `{"id": <member's id>, "type": "next", "payload": <shared bytes>}`.
- A member buffers the group's frames from the moment it joins until its replay is done,
  then sends the buffered frames with sequences above the last replayed one (or above
  its `afterSequence`, which may be ahead of the run), and from then on is fed by the
  group directly, with the same filter: no gap, no duplicate.
- All frames of a connection go through one bounded writer queue (ordering per
  connection). The group never waits for a socket: a connection more than
  `queue_size` frames behind is closed with 1013 ("try again later"; resubscribe with
  `afterSequence`). Operations of the connection itself (replay, stock operations) wait
  for room instead.
- Per-message deflate stays off (uvicorn `ws_per_message_deflate=False`), so a shared
  frame costs no per-connection compression.
- Fast path: when a connection has nothing queued and runs on uvicorn's
  websockets-sansio protocol (pinned uvicorn 0.54) without extensions, shared frames
  (a text frame header + the member's id prefix + the shared payload bytes, built once
  per event and id) go to the connection's *cork*, and when the loop turns each corked
  connection gets one `transport.write`: one system call per connection per turn, for all
  its subscriptions and for every event of a backlog (a group fans out up to
  `BATCH_EVENTS` events before it lets the loop turn), with no ASGI send chain and no task
  switch per delivery. Anything else sent on the connection writes its cork first
  (order). Uvicorn's own flow control still applies (`writable`); otherwise frames take
  the queue.
- A live member has no task of its own: its operation's task ends once the replay is
  done and the group feeds it; `complete` from the client, the group's end or the
  connection's end take it out of the group.

Revoked credentials (both protocols, multiplexed or not): each connection registers its
credentials with the process's `SocketRegistry` (server/sockets.py) once acknowledged.
A revocation announced by any process, or the access token's expiry, closes it with
4403 (as a bad `connection_init` is) and marks its context revoked, so nothing more runs
or is delivered on it (the fan-out checks `_closing`, one attribute per delivery); the
client reconnects with fresh credentials. Every operation start re-checks the
credentials through the context's bounded-age principal cache (server/context.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import struct
import sys
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage,
    ErrorMessage,
    Message,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ErrorMessage as LegacyErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import (
    OperationMessage,
    StartMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.unset import UnsetType
from strawberry.utils.aio import aclosing

from domain.errors import DomainError
from domain.tasks import cancel_and_wait
from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    VariableNode,
    parse,
)
from resolvers.multiplex import MUX, Replay, Tail
from server.context import authenticate
from server.persisted_queries import PersistedQueries, PersistedQueryError
from server.responses import encode_capped
from server.sockets import SocketRegistry

log = logging.getLogger("crewgraph.ws")

MULTIPLEXED_FIELDS = frozenset({"executionEvents", "executionUpdates"})
SLOW_CONSUMER_CODE = 1013
REVOKED_CODE = 4403  # the code of a refused connection_init: reconnect with fresh credentials
GROUP_READY_TIMEOUT = 30.0
BATCH_EVENTS = 32  # events a group fans out before it lets the loop turn (a backlog)
ASGI_SEND_KEY = "crewgraph.asgi_send"  # scope["state"] key set by server.app.RequestLimits


@lru_cache(maxsize=4096)
def _text_frame_header(length: int) -> bytes:
    """Header of an unmasked, final, uncompressed WebSocket text frame (server → client)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return b"\x81\x7e" + struct.pack("!H", length)
    return b"\x81\x7f" + struct.pack("!Q", length)


class _DirectWriter:
    """Writes text frames straight to uvicorn's websockets-sansio transport."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    @classmethod
    def of(cls, websocket: Any) -> _DirectWriter | None:
        scope = getattr(getattr(websocket, "ws", None), "scope", None) or {}
        send = (scope.get("state") or {}).get(ASGI_SEND_KEY)
        protocol = getattr(send, "__self__", None)
        if type(protocol).__name__ != "WebSocketsSansIOProtocol":
            return None
        conn = getattr(protocol, "conn", None)
        if conn is None or getattr(conn, "extensions", None):  # e.g. permessage-deflate
            return None
        needed = ("transport", "writable", "close_sent", "handshake_complete")
        if not all(hasattr(protocol, name) for name in needed):
            return None
        return cls(protocol)

    def write(self, *parts: bytes) -> bool:
        """False when the frame must take the regular path (flow control, closing)."""
        p = self.protocol
        if not p.handshake_complete or p.close_sent or not p.writable.is_set():
            return False
        transport = p.transport
        if transport is None or transport.is_closing():
            return False
        length = sum(len(part) for part in parts)
        transport.write(b"".join((_text_frame_header(length), *parts)))
        return True


@dataclass(frozen=True, slots=True)
class _Plan:
    field: str
    after_variable: str | None  # the variable feeding afterSequence, kept out of the key


@lru_cache(maxsize=1024)
def plan(query: str, operation_name: str | None) -> _Plan | None:
    """Whether (and how) a document is multiplexed; None runs it the stock way."""
    try:
        return _plan(query, operation_name)
    except Exception:  # whatever it is, the stock path reports it properly
        return None


def _plan(query: str, operation_name: str | None) -> _Plan | None:
    try:
        document = parse(query)
    except GraphQLError:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return None
    operation = operations[0]
    if operation.operation != OperationType.SUBSCRIPTION or operation.directives:
        return None
    selections = operation.selection_set.selections
    if len(selections) != 1 or not isinstance(selections[0], FieldNode):
        return None
    field = selections[0]
    if field.name.value not in MULTIPLEXED_FIELDS or field.directives:
        return None
    after: str | None = None
    for argument in field.arguments or ():
        if argument.name.value == "afterSequence" and isinstance(argument.value, VariableNode):
            after = argument.value.name.value
    return _Plan(field.name.value, after)


@lru_cache(maxsize=1024)
def is_mutation(query: str, operation_name: str | None) -> bool:
    """Whether the operation to run is a mutation (unparsable: False, the stock path
    reports it)."""
    try:
        document = parse(query)
    except Exception:
        return False
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    return len(operations) == 1 and operations[0].operation == OperationType.MUTATION


def _encode_payload(result: ExecutionResult, max_bytes: int) -> str:
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [e.formatted for e in result.errors]
    if result.extensions:
        payload["extensions"] = result.extensions
    return encode_capped(payload, max_bytes)  # a frame over the cap: LIMIT_EXCEEDED instead


class _Member:
    """One subscriber (one operation of one connection) in a group."""

    __slots__ = ("after", "buffer", "group", "handler", "operation", "prefix")

    def __init__(self, handler: MultiplexingHandler, operation: Operation[Any, Any]) -> None:
        self.handler = handler
        self.operation = operation
        self.prefix = _next_prefix(operation.id)
        self.buffer: list[tuple[int, bytes]] | None = []
        self.after = 0  # frames up to this sequence were replayed (or not asked for)
        self.group: _Group | None = None

    def send(self, payload: bytes) -> None:
        self.handler.push_parts(self.prefix, payload, b"}")

    def complete(self) -> None:
        operation = self.operation
        handler = self.handler
        if handler._live.get(operation.id) is self:
            del handler._live[operation.id]
        if not operation.completed:
            operation.completed = True
            handler.operations.pop(operation.id, None)
            handler.push_parts(
                ('{"id":' + json.dumps(operation.id) + ',"type":"complete"}').encode()
            )


@lru_cache(maxsize=1024)
def _next_prefix(operation_id: str) -> bytes:
    """`{"id":<id>,"type":"next","payload":` (shared: most clients number from "1")."""
    return ('{"id":' + json.dumps(operation_id) + ',"type":"next","payload":').encode()


def _fan_out(members: set[_Member], sequence: int, tail: bytes, mux: Multiplexer) -> int:
    """Send one encoded result to every live member; the hot loop of the multiplexer.

    Members whose ids are equal (most clients use "1") get the very same frame bytes,
    built once per event. A connection that can be written to directly collects its
    frames in its cork, and the multiplexer writes each cork with one `transport.write`
    when the loop turns: one system call per connection however many of its
    subscriptions, and however many events arrived in the same turn (a backlog)."""
    frames: dict[bytes, bytes] = {}
    delivered = 0
    dirty = mux.dirty
    for member in list(members):
        if sequence <= member.after:
            continue
        delivered += 1
        handler = member.handler
        cork = handler._cork
        if cork is None:
            proto = handler._proto
            if (
                proto is None
                or handler._out
                or handler._sending
                or handler._closing
                or not proto.writable.is_set()
            ):
                handler.push_parts(member.prefix, tail)
                continue
            cork = handler._cork = []
            dirty.append(handler)
        prefix = member.prefix
        frame = frames.get(prefix)
        if frame is None:
            body = prefix + tail
            frame = frames[prefix] = _text_frame_header(len(body)) + body
        cork.append(frame)
    if dirty:
        mux.flush_soon()
    return delivered


class _Group:
    """One upstream tail run shared by every identical subscription."""

    def __init__(
        self,
        mux: Multiplexer,
        key: tuple[Any, ...],
        operation: Operation[Any, Any],
        context: Any,
        root_value: Any,
    ) -> None:
        self.mux = mux
        self.key = key
        self.query = operation.query
        self.variables = operation.variables
        self.operation_name = operation.operation_name
        self.context = context
        self.root_value = root_value
        self.members: set[_Member] = set()
        self.pending: set[_Member] = set()
        self.ready = asyncio.Event()
        self.done = False
        self.failed: str | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"mux:{self.key[0]}")

    async def _on_ready(self, sequence: int) -> None:
        self.ready.set()

    async def _run(self) -> None:
        tail = Tail(ready=self._on_ready)
        MUX.set(tail)
        mux = self.mux
        burst = 0
        try:
            stream = await self.mux.schema.stream(
                self.query,
                variable_values=self.variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=self.operation_name,
            )
            async with aclosing(stream):
                async for result in stream:
                    if isinstance(result, PreExecutionError) or not isinstance(
                        result, ExecutionResult
                    ):
                        self.failed = "the shared subscription could not start"
                        break
                    payload = _encode_payload(result, self.mux.max_frame_bytes).encode()
                    self.mux.encoded += 1
                    sequence = tail.sequences.popleft() if tail.sequences else 0
                    if result.errors and not sequence:
                        # The stream failed (e.g. Redis went away): every member must see
                        # the error, not a bare `complete` that reads as "run finished".
                        sequence = sys.maxsize
                    for member in self.pending:
                        if member.buffer is not None:
                            member.buffer.append((sequence, payload))
                    self.mux.delivered += _fan_out(self.members, sequence, payload + b"}", mux)
                    # The stream suspends (and the corks are written) once the bus has
                    # nothing more; a backlog is sent in runs of BATCH_EVENTS events.
                    burst += 1
                    if burst >= BATCH_EVENTS:
                        burst = 0
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed = f"the shared subscription failed: {type(exc).__name__}"
            log.exception("multiplexed subscription failed")
        finally:
            self.done = True
            self.ready.set()
            if self.mux.groups.get(self.key) is self:
                del self.mux.groups[self.key]
            for member in list(self.members):
                member.complete()  # after the frames corked for it (push_parts flushes)
            self.members.clear()

    def go_live(self, member: _Member, after: int) -> None:
        """Flush what the member buffered past its replay, then feed it directly."""
        self.pending.discard(member)
        member.after = after
        buffered, member.buffer = member.buffer or [], None
        for sequence, payload in buffered:
            if sequence > after:
                member.send(payload)
        if self.done:
            member.complete()
        else:
            self.members.add(member)

    def leave(self, member: _Member) -> None:
        self.pending.discard(member)
        self.members.discard(member)
        if not self.members and not self.pending and self.task is not None and not self.done:
            self.task.cancel()
            if self.mux.groups.get(self.key) is self:
                del self.mux.groups[self.key]


class Multiplexer:
    """The groups of one process (one per GraphQL view)."""

    def __init__(
        self, schema: Any, queue_size: int = 1000, max_frame_bytes: int = 10_000_000
    ) -> None:
        self.schema = schema
        self.queue_size = queue_size
        self.max_frame_bytes = max_frame_bytes
        self.groups: dict[tuple[Any, ...], _Group] = {}
        self.encoded = 0  # results encoded (once per group per event)
        self.delivered = 0  # frames handed to connections
        self.dirty: list[MultiplexingHandler] = []  # connections with corked frames
        self._flush_handle: asyncio.Handle | None = None

    def flush_soon(self) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every corked connection's frames (one write per connection)."""
        self._flush_handle = None
        dirty, self.dirty = self.dirty, []
        for handler in dirty:
            handler._flush_cork()

    def key(
        self, p: _Plan, operation: Operation[Any, Any], tenant_id: str, role: str
    ) -> tuple[Any, ...]:
        variables = dict(operation.variables or {})
        if p.after_variable is not None:
            variables.pop(p.after_variable, None)
        canonical = json.dumps(variables, sort_keys=True, separators=(",", ":"), default=str)
        return (p.field, operation.query, operation.operation_name, canonical, tenant_id, role)

    async def join(
        self,
        key: tuple[Any, ...],
        member: _Member,
        operation: Operation[Any, Any],
        context: Any,
        root_value: Any,
    ) -> None:
        group = self.groups.get(key)
        if group is None or group.done:
            # The group's own context: same principal (tenant and role are in the key),
            # fresh loaders, no reference to the first subscriber's socket.
            # Pinned: members' credentials are checked (and revoked) one by one instead.
            group_context = dataclasses.replace(
                context, request=None, response=None, _loaders=None, principal_max_age=None
            )
            group = _Group(self, key, operation, group_context, root_value)
            self.groups[key] = group
            group.start()
        member.group = group
        group.pending.add(member)
        try:
            await asyncio.wait_for(group.ready.wait(), GROUP_READY_TIMEOUT)
        except TimeoutError:
            raise RuntimeError("the live event stream did not start in time") from None
        if group.failed:
            raise RuntimeError(group.failed)

    def leave(self, member: _Member) -> None:
        if member.group is not None:
            member.group.leave(member)


class _Revocable:
    """What both protocol handlers do about revoked or expiring credentials."""

    view: Any
    websocket: Any
    context: Any
    _revoked: str | None = None
    _registry: SocketRegistry | None = None
    _expiry: asyncio.TimerHandle | None = None

    async def _register(self) -> None:
        """Once the connection is acknowledged: hear revocations, end at token expiry."""
        principal = getattr(self.context, "cached_principal", None)
        if principal is None or self._registry is not None or self._revoked is not None:
            return
        registry = getattr(self.view, "sockets", None)
        if isinstance(registry, SocketRegistry):
            await registry.start()  # listens from the first socket of the process on
            if self._revoked is not None:
                return
            self._registry = registry
            registry.add(self, principal.revocation_keys())
        if principal.expires_at is not None:
            delay = (principal.expires_at - datetime.now(UTC)).total_seconds()
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, delay), self.revoke, "access token expired"
            )

    def _unregister(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._registry is not None:
            self._registry.remove(self)
            self._registry = None

    def revoke(self, reason: str) -> None:
        """Close with 4403; nothing more runs or is sent on this connection."""
        if self._revoked is not None:
            return
        self._revoked = reason
        revoke_context = getattr(self.context, "revoke", None)
        if revoke_context is not None:
            revoke_context(reason)
        self._unregister()
        self._stop_sending()
        log.info("closing a WebSocket: %s", reason)
        task = asyncio.create_task(self.websocket.close(code=REVOKED_CODE, reason=reason[:120]))
        task.add_done_callback(_ignore_result)

    def _stop_sending(self) -> None:
        pass

    async def recheck(self) -> None:
        """Check the credentials now (a revocation signal may have been missed).

        The periodic re-check of a process's sockets shares one check among the sockets
        holding the same credentials while it runs (a dashboard wall: a thousand
        sockets, one token), instead of a database round trip each."""
        if self._revoked is not None:
            return
        context = self.context
        creds = getattr(context, "credentials", None)
        services = getattr(context, "services", None)
        if creds is None or services is None or not (creds.bearer or creds.api_key):
            context.expire_principal()
            try:
                await context.principal()
            except DomainError as exc:
                self.revoke(_close_reason(exc))
            return
        try:
            principal = await _shared_check(services, creds)
        except DomainError as exc:
            self.revoke(_close_reason(exc))
            return
        if self._revoked is None and getattr(context, "revoked", None) is None:
            context.set_principal(principal)

    async def _persisted_document(self, message: Any) -> dict[str, Any] | None:
        """Put the document a persisted-query hash names into a subscribe / start payload
        (server/persisted_queries.py); the GraphQL error instead when that is refused."""
        payload = message.get("payload") if isinstance(message, dict) else None
        queries = getattr(self.view, "persisted_queries", None)
        if not isinstance(payload, dict) or not isinstance(queries, PersistedQueries):
            return None
        try:
            query = await queries.resolve(payload.get("query"), payload.get("extensions"))
        except PersistedQueryError as exc:
            return exc.error(getattr(self.context, "request_id", None))
        if isinstance(query, str):
            payload["query"] = query
        return None

    async def _admit(self, query: str = "", operation_name: str | None = None) -> bool:
        """At each operation start: are the credentials (still) good? A mutation checks
        them afresh (it may mint keys, ...); others trust a principal seconds old."""
        if self._revoked is not None:
            return False
        if query and is_mutation(query, operation_name):
            self.context.expire_principal()
        try:
            await self.context.principal()
        except DomainError as exc:
            self.revoke(_close_reason(exc))
            return False
        return True


_CHECKS: dict[tuple[int, str | None, str | None], asyncio.Future[Any]] = {}


async def _shared_check(services: Any, creds: Any) -> Any:
    """`authenticate(services, creds)`, joined by the identical checks started while it
    runs (none started after it completes reuses its answer)."""
    key = (id(services), creds.bearer, creds.api_key)
    check = _CHECKS.get(key)
    if check is None or check.get_loop() is not asyncio.get_running_loop():
        check = asyncio.ensure_future(authenticate(services, creds))
        _CHECKS[key] = check
        check.add_done_callback(lambda done: _forget_check(key, done))
    return await asyncio.shield(check)


def _forget_check(key: tuple[int, str | None, str | None], check: asyncio.Future[Any]) -> None:
    if _CHECKS.get(key) is check:
        del _CHECKS[key]
    if not check.cancelled():
        check.exception()  # retrieved: every waiter got it


def _close_reason(exc: DomainError) -> str:
    """A refusal with a machine-readable reason (TENANT_SUSPENDED) closes with that."""
    reason = exc.extensions.get("reason")
    return reason if isinstance(reason, str) and reason else exc.message


class RevocableTransportWSHandler(_Revocable, BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws, stock, ended when its credentials are revoked."""

    async def handle_connection_init(self, message: Any) -> None:
        payload = message.get("payload", {}) if isinstance(message, dict) else None
        if (
            self.connection_timed_out
            or self.connection_init_received
            or not isinstance(payload, dict)
        ):
            await super().handle_connection_init(message)  # strawberry's own refusals
            return
        # As strawberry's, except a refused init closes with the refusal's reason
        # (TENANT_SUSPENDED), as a revocation closes an open socket, not a bare
        # "Forbidden": the client tells a suspension from bad credentials.
        if self.connection_init_timeout_task:
            self.connection_init_timeout_task.cancel()
        self.connection_init_received = True
        self.context.connection_params = payload
        try:
            ack = await self.view.on_ws_connect(self.context)
        except ConnectionRejectionError as exc:
            reason = exc.payload.get("reason") if isinstance(exc.payload, dict) else None
            reason = reason if isinstance(reason, str) and reason else "Forbidden"
            await self.websocket.close(code=REVOKED_CODE, reason=reason[:120])
            return
        if isinstance(ack, UnsetType):
            await self.send_message({"type": "connection_ack"})
        else:
            await self.send_message({"type": "connection_ack", "payload": ack})
        self.connection_acknowledged = True
        await self._register()

    async def handle_subscribe(self, message: Any) -> None:
        if self.connection_acknowledged and self._revoked is None:
            error = await self._persisted_document(message)
            if error is not None:
                refused = ErrorMessage(id=message["id"], type="error", payload=[cast(Any, error)])
                await self.send_message(refused)
                return
        await super().handle_subscribe(message)

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        if not await self._admit(operation.query, operation.operation_name):
            self.operations.pop(operation.id, None)
            return
        await super().run_operation(operation)

    async def send_message(self, message: Message) -> None:
        if self._revoked is None:
            await super().send_message(message)

    async def shutdown(self) -> None:
        self._unregister()
        await super().shutdown()


class RevocableLegacyWSHandler(_Revocable, BaseGraphQLWSHandler[Any, Any]):
    """The legacy graphql-ws protocol, ended when its credentials are revoked."""

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            await self._register()

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged and self._revoked is None:
            error = await self._persisted_document(message)
            if error is not None:
                await self.send_message(
                    LegacyErrorMessage(id=message["id"], type="error", payload=cast(Any, error))
                )
                return
        payload = message.get("payload") or {}
        query = payload.get("query") if isinstance(payload, dict) else None
        name = payload.get("operationName") if isinstance(payload, dict) else None
        if self.connection_acknowledged and not await self._admit(
            query if isinstance(query, str) else "", name if isinstance(name, str) else None
        ):
            return
        await super().handle_start(message)

    async def send_message(self, message: OperationMessage) -> None:
        if self._revoked is None:
            await super().send_message(message)

    async def cleanup(self) -> None:
        self._unregister()
        await super().cleanup()


class MultiplexingHandler(RevocableTransportWSHandler):
    """graphql-transport-ws handler: one writer queue per connection, shared frames."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mux: Multiplexer | None = getattr(self.view, "multiplexer", None)
        self._max = self.mux.queue_size if self.mux is not None else 1000
        self._out: deque[str] = deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()  # set while the queue is empty
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._sending = False  # the writer task is between popping a frame and sending it
        self._direct = _DirectWriter.of(self.websocket)
        self._proto = self._direct.protocol if self._direct is not None else None
        self._cork: list[bytes] | None = None  # frames to write when the loop turns
        self._live: dict[str, _Member] = {}  # fed by their group, with no task of their own

    # ---- the writer

    def _ensure_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="ws-writer")

    async def _write(self) -> None:
        send_text = self.websocket.ws.send_text
        out = self._out
        while True:
            if not out:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            frame = out.popleft()
            if len(out) < self._max:
                self._room.set()
            self._sending = True
            try:
                await send_text(frame)
                self._sending = False
            except Exception:
                self._closing = True
                self._room.set()
                out.clear()
                self._idle.set()
                return

    def _flush_cork(self) -> None:
        """Write the corked frames (before anything else is sent: order)."""
        cork, self._cork = self._cork, None
        if not cork or self._closing:
            return
        proto = self._proto
        if (
            proto is not None
            and not self._out
            and not self._sending
            and proto.handshake_complete
            and not proto.close_sent
            and proto.writable.is_set()
        ):
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                transport.write(cork[0] if len(cork) == 1 else b"".join(cork))
                return
        for frame in cork:  # flow control kicked in meanwhile: the queue keeps the order
            self.push_frame(_frame_text(frame))

    def push_parts(self, *parts: bytes) -> None:
        """Send a frame made of `parts` without waiting (group fan-out)."""
        if self._closing:
            return
        if self._cork is not None:
            self._flush_cork()
        direct = self._direct
        if direct is not None and not self._out and not self._sending and direct.write(*parts):
            return
        self.push_frame(b"".join(parts).decode())

    def push_frame(self, frame: str) -> None:
        """Queue a frame without waiting (group fan-out); closes a connection that lags."""
        if self._closing:
            return
        if self._cork is not None:
            self._flush_cork()
        if len(self._out) >= self._max:
            self._slow_consumer()
            return
        self._out.append(frame)
        self._idle.clear()
        self._wake.set()
        self._ensure_writer()

    async def send_message(self, message: Message) -> None:
        """Stock messages go through the same queue (order), waiting for room."""
        if self._closing:
            return
        while len(self._out) >= self._max and not self._closing:
            self._room.clear()
            await self._room.wait()
        if self._closing:
            return
        if self._cork is not None:
            self._flush_cork()
        encoded = self.view.encode_json(message)
        self._out.append(encoded if isinstance(encoded, str) else encoded.decode())
        self._idle.clear()
        self._wake.set()
        self._ensure_writer()

    def _stop_sending(self) -> None:
        self._closing = True
        self._cork = None
        self._out.clear()
        self._room.set()

    def _slow_consumer(self) -> None:
        self._closing = True
        self._cork = None
        self._out.clear()
        self._room.set()
        log.warning("closing a slow WebSocket consumer")
        reason = f"slow consumer: more than {self._max} messages queued"
        task = asyncio.create_task(self.websocket.close(code=SLOW_CONSUMER_CODE, reason=reason))
        task.add_done_callback(_ignore_result)

    async def shutdown(self) -> None:
        await super().shutdown()
        writer, self._writer = self._writer, None
        if writer is not None:
            # Let queued frames (a final `complete`) go out before the task ends.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._drain(), 1.0)
            await cancel_and_wait(writer)

    async def _drain(self) -> None:
        if self._out and not self._closing:
            await self._idle.wait()

    # ---- operations

    async def run_operation(self, operation: Operation[Any, Any]) -> None:
        mux = self.mux
        shape = plan(operation.query, operation.operation_name) if mux is not None else None
        if mux is None or shape is None:
            await super().run_operation(operation)
            return
        if not await self._admit():
            self.operations.pop(operation.id, None)
            return
        try:
            principal = await self.context.principal()
        except Exception:
            await super().run_operation(operation)  # the stock path reports the error
            return
        key = mux.key(shape, operation, principal.tenant_id, principal.role.value)
        member = _Member(self, operation)

        async def join() -> None:
            await mux.join(key, member, operation, self.context, self.root_value)

        replay = Replay(join=join)
        MUX.set(replay)
        try:
            result_source = await self.schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )
            async with aclosing(result_source):
                await self._send_result_stream(operation, result_source)
            MUX.set(None)
            if replay.live and member.group is not None and not operation.completed:
                # From here on the group feeds the member, and `complete` (the client's,
                # the group's end, the connection's) ends it: the task can end now.
                self._live[operation.id] = member
                member.group.go_live(member, replay.sequence)
                return
            else:
                await operation.send_operation_message(
                    CompleteMessage(id=operation.id, type="complete")
                )
        except _OperationStreamClosed:
            return
        except Exception as error:
            await self.handle_task_exception(error)
            with contextlib.suppress(Exception):
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
            self.operations.pop(operation.id, None)
            raise
        finally:
            if self._live.get(operation.id) is not member:
                mux.leave(member)

    async def cleanup_operation(self, operation_id: str) -> None:
        member = self._live.pop(operation_id, None)
        if member is not None and self.mux is not None:
            self.mux.leave(member)
        await super().cleanup_operation(operation_id)

    def forget_id(self, id: str) -> None:
        self.operations.pop(id, None)


def _frame_text(frame: bytes) -> str:
    """The text of a server → client frame built by `_text_frame_header`."""
    length = frame[1] & 0x7F
    return frame[2 if length < 126 else 4 if length == 126 else 10 :].decode()


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
