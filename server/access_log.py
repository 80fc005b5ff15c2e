"""The access log: one structured line per HTTP request and per WebSocket operation.

HTTP (`AccessLog`, the outermost middleware): event `http.request` with the request id,
method, path (never the query string: a GET request carries its document and variables
there), status, duration in ms, client address, the GraphQL operation name(s), the
caller's tenant and user or API key id, and the `extensions.code` of every error. The
GraphQL part is filled in by `AccessRecorder`, a schema extension that runs last on the
way out of each operation (so it sees the final error codes). Health probes are logged
only when they do not answer 200.

WebSocket (the handler mixins below): `ws.subscribe` when an operation starts and
`ws.complete` when it ends, with the connection's request id, the operation id and name,
tenant, user or key id, duration, outcome (`completed`, `error`, `stopped` when the
client or the server ended it) and error codes.

What is never logged: credentials (headers, `connection_init` payloads), documents,
variables, inputs and results.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from graphql import OperationDefinitionNode, parse
from server.lifecycle import PROBES
from server.ws import MultiplexingHandler, RevocableLegacyWSHandler, RevocableTransportWSHandler

log = structlog.get_logger("crewgraph.access")

_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,127}")
_MAX_PARSED = 20_000  # longer anonymous documents are not parsed again just for a log name


@dataclass
class AccessRecord:
    """What the GraphQL layer learnt about one HTTP request."""

    operations: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    tenant_id: str | None = None
    user_id: str | None = None
    api_key_id: str | None = None

    def add_principal(self, context: Any) -> None:
        principal = getattr(context, "cached_principal", None)
        if principal is None:
            return
        self.tenant_id = principal.tenant_id
        self.user_id = principal.user_id
        self.api_key_id = principal.api_key_id


_RECORD: ContextVar[AccessRecord | None] = ContextVar("crewgraph_access_record", default=None)


def safe_name(name: object) -> str | None:
    """A GraphQL name as given by the client, or None: anything else is not logged."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return name
    return None


@lru_cache(maxsize=256)
def _document_name(query: str) -> str | None:
    """The name of a document's only operation (anonymous WebSocket operations)."""
    try:
        document = parse(query, no_location=True)
    except Exception:
        return None
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) == 1 and operations[0].name is not None:
        return operations[0].name.value
    return None


def operation_name(query: object, name: object) -> str | None:
    if name is not None:
        return safe_name(name)
    if isinstance(query, str) and len(query) <= _MAX_PARSED:
        return _document_name(query)
    return None


def error_codes(errors: Any) -> list[str]:
    """`extensions.code` of formatted errors (dicts) or GraphQLErrors."""
    codes: list[str] = []
    if not isinstance(errors, list):
        errors = [errors] if errors else []
    for error in errors:
        extensions = (
            error.get("extensions")
            if isinstance(error, dict)
            else getattr(error, "extensions", None)
        )
        code = extensions.get("code") if isinstance(extensions, dict) else None
        codes.append(code if isinstance(code, str) else "UNKNOWN")
    return codes


class AccessRecorder(SchemaExtension):
    """Notes each HTTP operation's name, caller and error codes on the request's record.
    Listed first among the schema's extensions: it leaves an operation last, once the
    errors carry their final codes."""

    def on_operation(self) -> Iterator[None]:
        yield
        record_access(self.execution_context)


def record_access(ec: Any) -> None:
    """`AccessRecorder`'s note of a finished operation (`ec`: its execution context)."""
    record = _RECORD.get()
    if record is None:  # a WebSocket operation: the handler logs it
        return
    try:
        name = safe_name(ec.operation_name)
    except Exception:
        name = None
    record.operations.append(name)
    result = ec.result
    if result is not None and getattr(result, "errors", None):
        record.errors.extend(error_codes(result.errors))
    record.add_principal(ec.context)


class AccessLog:
    """ASGI middleware writing the `http.request` line; WebSockets pass through."""

    def __init__(self, app: ASGIApp, *, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        token = _RECORD.set(record)
        status = 0
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500  # what the server answers for an escaped exception
            raise
        finally:
            _RECORD.reset(token)
            path = scope.get("path", "")
            if not (path in PROBES and status == 200):
                _log_http(scope, record, status, started)


def _log_http(scope: Scope, record: AccessRecord, status: int, started: float) -> None:
    state = scope.get("state") or {}
    client = scope.get("client")
    operations = record.operations
    log.info(
        "http.request",
        request_id=state.get("request_id"),
        method=scope.get("method"),
        path=scope.get("path"),
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        client=client[0] if client else None,
        operation=operations[0] if len(operations) == 1 else (operations or None),
        tenant_id=record.tenant_id,
        user_id=record.user_id,
        api_key_id=record.api_key_id,
        errors=record.errors or None,
    )


# --------------------------------------------------------------------------- WebSockets


@dataclass
class _WsOperation:
    id: str
    name: str | None
    started: float = field(default_factory=time.perf_counter)
    errors: list[str] = field(default_factory=list)


class _WsAccess:
    """What both protocols log per operation."""

    context: Any
    _ws_ops: dict[str, _WsOperation]

    def _ws_started(self, ident: str, query: object, name: object) -> _WsOperation:
        if not hasattr(self, "_ws_ops"):
            self._ws_ops = {}
        op = _WsOperation(str(ident)[:128], operation_name(query, name))
        self._ws_ops[op.id] = op
        self._ws_log("ws.subscribe", op)
        return op

    def _ws_errors(self, ident: object, errors: Any) -> None:
        op = getattr(self, "_ws_ops", {}).get(str(ident)[:128])
        if op is not None:
            op.errors.extend(error_codes(errors))

    def _ws_ended(self, op: _WsOperation, outcome: str) -> None:
        self._ws_ops.pop(op.id, None)
        self._ws_log(
            "ws.complete",
            op,
            outcome="error" if op.errors and outcome == "completed" else outcome,
            duration_ms=round((time.perf_counter() - op.started) * 1000, 2),
            errors=op.errors or None,
        )

    def _ws_log(self, event: str, op: _WsOperation, **extra: Any) -> None:
        context = self.context
        principal = getattr(context, "cached_principal", None)
        log.info(
            event,
            request_id=getattr(context, "request_id", None),
            operation_id=op.id,
            operation=op.name,
            tenant_id=principal.tenant_id if principal else None,
            user_id=principal.user_id if principal else None,
            api_key_id=principal.api_key_id if principal else None,
            **extra,
        )

    def _ws_outgoing(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "error":
            self._ws_errors(message.get("id"), message.get("payload"))
        elif kind in ("next", "data"):
            payload = message.get("payload")
            if isinstance(payload, dict) and payload.get("errors"):
                self._ws_errors(message.get("id"), payload["errors"])


class _TransportAccess(_WsAccess):
    """graphql-transport-ws: around each operation task, and its outgoing messages."""

    async def run_operation(self, operation: Any) -> None:
        op = self._ws_started(operation.id, operation.query, operation.operation_name)
        outcome = "completed"
        try:
            await super().run_operation(operation)  # type: ignore[misc]
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._ws_ended(op, outcome)

    async def send_message(self, message: Any) -> None:
        self._ws_outgoing(message)
        await super().send_message(message)  # type: ignore[misc]


class _LegacyAccess(_WsAccess):
    """The legacy graphql-ws protocol: the same, around `handle_async_results`."""

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        op = self._ws_started(operation_id, query, operation_name)
        outcome = "completed"
        try:
            await super().handle_async_results(  # type: ignore[misc]
                operation_id, query, operation_name, variables
            )
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        except Exception:
            outcome = "failed"
            raise
        finally:
            self._ws_ended(op, outcome)

    async def send_message(self, message: Any) -> None:
        self._ws_outgoing(message)
        await super().send_message(message)  # type: ignore[misc]


class LoggedMultiplexingHandler(_TransportAccess, MultiplexingHandler):
    pass


class LoggedTransportHandler(_TransportAccess, RevocableTransportWSHandler):
    pass


class LoggedLegacyHandler(_LegacyAccess, RevocableLegacyWSHandler):
    pass
