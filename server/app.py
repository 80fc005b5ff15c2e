"""The ASGI application: GraphQL (HTTP + WebSocket) at /graphql, health probes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET

from domain.audit import bind_origin
from domain.errors import DomainError
from server.access_log import (
    AccessLog,
    LoggedLegacyHandler,
    LoggedMultiplexingHandler,
    LoggedTransportHandler,
)
from server.bootstrap import Container
from server.context import Context, Credentials, authenticate
from server.dashboard import dashboard_routes
from server.graphiql import graphiql_page, static_routes
from server.graphql_schema import build_schema
from server.http_streams import HttpStreams
from server.lifecycle import Lifecycle
from server.metrics import ObservedRequests, metrics_endpoint
from server.persisted_queries import PersistedQueries, PersistedQueryError, RedisDocumentStore
from server.responses import encode_capped
from server.ws import Multiplexer

log = structlog.get_logger("crewgraph.http")


def _error_body(message: str, code: str, request_id: str | None = None) -> dict[str, Any]:
    extensions = {"code": code, **({"requestId": request_id} if request_id else {})}
    return {"data": None, "errors": [{"message": message, "extensions": extensions}]}


def _request_id(scope: Scope) -> str | None:
    """The id `RequestLimits` gave this request (its `X-Request-ID` response header)."""
    rid = (scope.get("state") or {}).get("request_id")
    return rid if isinstance(rid, str) else None


class CrewgraphGraphQL(GraphQL[Context, None]):
    # Execution subscriptions are multiplexed: one upstream per identical subscription.
    graphql_transport_ws_handler_class: type[BaseGraphQLTransportWSHandler[Context, None]] = (
        LoggedMultiplexingHandler
    )
    # Both protocols end a connection whose credentials are revoked (server/sockets.py).
    graphql_ws_handler_class = LoggedLegacyHandler

    def __init__(self, container: Container, **kwargs: Any) -> None:
        s = container.settings
        production = s.env == "production"
        protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL]
        if s.http_subscriptions:  # the same subscriptions as streaming HTTP responses
            protocols += [MULTIPART_SUBSCRIPTION_PROTOCOL, GRAPHQL_SSE_PROTOCOL]
        kwargs.setdefault("subscription_protocols", protocols)
        super().__init__(
            build_schema(
                max_depth=s.max_query_depth,
                max_aliases=s.max_aliases,
                max_tokens=s.max_tokens,
                introspection=not production,
                max_cost=s.max_query_cost,
                page_size_max=s.page_size_max,
            ),
            graphql_ide=None if production else "graphiql",  # no GraphiQL in production
            **kwargs,
        )
        self.container = container
        self.services = container.services()
        self.persisted_queries = PersistedQueries(
            RedisDocumentStore(
                container.redis,
                s.redis_prefix,
                s.persisted_query_ttl_seconds,
                s.persisted_query_max_entries,
            )
            if s.persisted_queries
            else None,
            trusted=s.trusted_document_map,
            max_bytes=s.persisted_query_max_bytes,
        )
        self.multiplexer = Multiplexer(
            self.schema,
            queue_size=s.subscription_queue_size,
            max_frame_bytes=s.max_response_bytes,
        )
        container.extras["multiplexer"] = self.multiplexer  # counters for tests and benches
        self.sockets = container.sockets
        self.http_streams = HttpStreams(s, self.sockets)
        container.extras["http_streams"] = self.http_streams  # counters for tests
        self.principals = container.principals
        if not s.subscription_multiplex:
            self.graphql_transport_ws_handler_class = LoggedTransportHandler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        try:
            # The request's units of work share one pooled connection (persistence/db.py).
            async with self.container.db.request_scope():
                response = await self.run(Request(scope, receive))
        except HTTPException as exc:
            # Strawberry answers plain text here; clients expect a GraphQL error body.
            code = "BAD_USER_INPUT" if exc.status_code == 400 else "NOT_FOUND"
            if exc.status_code == 405:
                code = "BAD_USER_INPUT"
            response = JSONResponse(
                _error_body(exc.reason, code, _request_id(scope)), status_code=exc.status_code
            )
        except PersistedQueryError as exc:
            body = {"data": None, "errors": [exc.error(_request_id(scope))]}
            response = JSONResponse(body, status_code=exc.status)
        if not isinstance(response, StreamingResponse):
            await response(scope, receive, send)
            return
        # A subscription over HTTP (server/http_streams.py). Streamed after the request
        # scope above: an hours-long stream holds no pooled connection.
        timeout = self.container.settings.http_stream_send_timeout_seconds
        try:
            await response(scope, receive, _bounded_send(send, timeout))
        except _ClientStalled:
            log.warning("HTTP stream closed: the client took nothing for %s s", timeout)
        finally:
            iterator = response.body_iterator
            if isinstance(iterator, AsyncGenerator):
                await iterator.aclose()  # its slot and its event subscription, now

    async def run(  # type: ignore[override]
        self,
        request: Request | WebSocket,
        context: Any = UNSET,
        root_value: Any = UNSET,
    ) -> Response:
        if (
            isinstance(request, Request)
            and context is UNSET
            and root_value is UNSET
            and request.method == "POST"
            and _plain_json(request.headers)
        ):
            response = await self._run_plain(request)
            if response is not None:
                return response
        return await super().run(request, context, root_value)  # type: ignore[return-value]

    async def _run_plain(self, request: Request) -> Response | None:
        """A POST of one JSON operation, answered as JSON (nearly every request): what
        Strawberry's `run` does for it, without the steps that only other requests need
        (transport negotiation, batches, uploads, the IDE); None for anything else, which
        takes the general path (the body is kept by the request, read only once)."""
        try:
            data = self.decode_json(await request.body())
        except json.JSONDecodeError:
            raise HTTPException(400, "Unable to parse request body as JSON") from None
        if not isinstance(data, dict):
            return None  # a batch, or a body Strawberry refuses with its own message
        query = data.get("query")
        variables = data.get("variables")
        extensions = data.get("extensions")
        if not (
            isinstance(query, str | None)
            and isinstance(variables, dict | None)
            and isinstance(extensions, dict | None)
        ):
            return None
        resolved = await self.persisted_queries.resolve(query, extensions)
        sub_response = await self.get_sub_response(request)
        context = await self.get_context(request, response=sub_response)
        try:
            result = await self.schema.execute(
                resolved if isinstance(resolved, str) else None,
                variable_values=variables,
                context_value=context,
                operation_name=data.get("operationName"),
                allowed_operation_types=_POST_OPERATIONS,
                operation_extensions=extensions,
            )
        except CannotGetOperationTypeError as e:
            raise HTTPException(400, e.as_http_error_reason()) from e
        except InvalidOperationTypeError as e:
            raise HTTPException(400, e.as_http_error_reason("POST")) from e
        except MissingQueryError as e:
            raise HTTPException(400, "No GraphQL query found in the request") from e
        response_data = await self.process_result(request, result)
        return self.create_response(response_data=response_data, sub_response=sub_response)

    async def create_streaming_response(
        self,
        request: Request | WebSocket,
        stream: Callable[[], AsyncIterator[str]],
        sub_response: Response,
        headers: Mapping[str, str],
    ) -> Response:
        transport = self._get_stream_transport_from_headers(request.headers)
        context = request.scope.get("state", {}).get(_CONTEXT_KEY)
        if transport is not None and isinstance(context, Context):
            stream = self.http_streams.guard(context, transport, stream, self.encode_json_string)
        return await super().create_streaming_response(request, stream, sub_response, headers)

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        # A GET carrying only a persisted-query hash is an operation, not a browser visit.
        params = request.query_params
        return super().should_render_graphql_ide(request) and params.get("extensions") is None

    async def render_graphql_ide(self, request: Request) -> Response:
        # Our GraphiQL: every file from this server (server/graphiql.py), not Strawberry's
        # page, which loads React and GraphiQL from a public CDN.
        return graphiql_page()

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        # The document a persisted-query hash stands for (or the refusal), before parsing.
        parsed = await super().parse_http_body(request)
        for data in parsed if isinstance(parsed, list) else [parsed]:
            query = await self.persisted_queries.resolve(data.query, data.extensions)
            data.query = query if isinstance(query, str) else None
        return parsed

    def decode_json(self, data: str | bytes) -> object:
        try:
            return json.loads(data)
        except RecursionError:  # nested deeper than the parser's stack: a bad body, not a 500
            raise json.JSONDecodeError("JSON nested too deeply", "", 0) from None

    def encode_json(self, data: object) -> str:
        # Every HTTP body and WebSocket frame: over the cap, one LIMIT_EXCEEDED error instead.
        return encode_capped(data, self.container.settings.max_response_bytes)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        client = request.client.host if request.client else "?"
        rid = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        creds = (
            Credentials()
            if isinstance(request, WebSocket)
            else Credentials.from_headers(request.headers)
        )
        # Audit entries recorded by this request's use cases carry where it came from.
        bind_origin(request.client.host if request.client else None, rid)
        context = Context(
            services=self.services,
            request=request,
            response=response,
            credentials=creds,
            client_ip=client,
            request_id=rid,
            principal_cache=None if isinstance(request, WebSocket) else self.principals,
        )
        if not isinstance(request, WebSocket):  # for create_streaming_response
            request.scope.setdefault("state", {})[_CONTEXT_KEY] = context
        return context

    async def on_ws_connect(self, context: Context) -> dict[str, object] | None:
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        context.credentials = Credentials.from_params(params)
        try:
            context.set_principal(await authenticate(self.services, context.credentials))
        except DomainError as exc:
            raise ConnectionRejectionError(
                {
                    **exc.extensions,
                    "message": exc.message,
                    "code": exc.code,
                    "requestId": context.request_id,
                }
            )
        return None


_CONTEXT_KEY = "crewgraph.context"  # scope["state"] key: an HTTP request's GraphQL context
_POST_OPERATIONS = OperationType.from_http("POST")
# Accept values that ask for a streamed answer (multipart subscriptions, SSE).
_STREAM_ACCEPTS = ("multipart/mixed", "text/event-stream")


def _plain_json(headers: Mapping[str, str]) -> bool:
    """A JSON body, and no streamed answer asked for: `CrewgraphGraphQL._run_plain`'s."""
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/json":
        return False
    accept = headers.get("accept", "").lower()
    return not any(kind in accept for kind in _STREAM_ACCEPTS)


class _ClientStalled(Exception):
    pass


def _bounded_send(send: Send, timeout: float) -> Send:
    """`send` for a streamed response: a chunk the client does not take in time ends it."""

    async def bounded(message: Message) -> None:
        if message["type"] != "http.response.body" or not message.get("more_body"):
            await send(message)
            return
        try:
            await asyncio.wait_for(send(message), timeout)
        except TimeoutError:
            raise _ClientStalled from None

    return bounded


class RequestLimits:
    """Request ids into logs, and a body-size cap before anything parses the body."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        if scope["type"] == "websocket":
            # The server's own send: server/ws.py writes shared frames through it.
            scope["state"]["crewgraph.asgi_send"] = send

            async def accept_with_id(message: Message) -> None:
                if message["type"] == "websocket.accept":
                    message["headers"] = [
                        *message.get("headers", ()),
                        (b"x-request-id", rid.encode()),
                    ]
                await send(message)

            await self.app(scope, receive, accept_with_id)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send_with_id)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send_with_id)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _error_body(
            f"request body larger than {self.max_bytes} bytes", "LIMIT_EXCEEDED", _request_id(scope)
        )
        await JSONResponse(body, status_code=413)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


# HTML pages that bring no policy of their own load nothing (GraphiQL's is in server/graphiql.py).
_HTML_CSP = b"default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
_API_CSP = b"default-src 'none'; frame-ancestors 'none'"


class SecurityHeaders:
    """Headers on every HTTP response: no MIME sniffing, no referrer, no framing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"] = list(message.get("headers") or [])
                present = {k.lower() for k, _ in headers}
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers
                )
                for name, value in (
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", _HTML_CSP if html else _API_CSP),
                ):
                    if name not in present:
                        headers.append((name, value))
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    container: Container,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    lifecycle: Lifecycle | None = None,
) -> ASGIApp:
    """`lifecycle`: the draining state `crewgraph serve` switches on at SIGTERM / SIGINT
    (server/lifecycle.py); a fresh one, never draining, when not given."""
    lifecycle = lifecycle or Lifecycle()
    graphql = CrewgraphGraphQL(container, keep_alive=True, keep_alive_interval=15)
    # Like WebSockets (closed with 1001), HTTP subscription streams end when draining.
    lifecycle.on_drain(graphql.http_streams.end_all)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        if lifecycle.draining:  # shutting down: send new work elsewhere
            return JSONResponse({"status": "draining"}, 503)
        checks: dict[str, str] = {}
        try:
            await container.db.ping()
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"error: {type(exc).__name__}"
        try:
            await container.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        if container.mongo.configured:
            try:
                await container.mongo.ping()
                checks["mongodb"] = "ok"
            except Exception as exc:
                cause = exc.__cause__ or exc
                checks["mongodb"] = f"error: {type(cause).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if on_startup:
            await on_startup()
        await container.start()  # after migrations: sweeper, in-process runner
        try:
            yield
        finally:
            if on_shutdown:
                await on_shutdown()
            await container.aclose()

    extra_routes: list[Mount] = []
    if container.settings.local_llm_enabled:  # the scripted local model (runtime/scripted.py)
        from runtime.scripted import scripted_app

        extra_routes.append(
            Mount(
                "/local-llm/v1",
                app=scripted_app(request_log=container.settings.local_llm_request_log),
            )
        )
    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=["GET", "POST"]),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(
                "/metrics",
                metrics_endpoint(container.settings, container.metrics, container.db),
                methods=["GET"],
            ),
            *extra_routes,
            *dashboard_routes(),  # the live dashboard (server/static/dashboard)
            *static_routes(),  # GraphiQL's page files and the locked npm packages' files
        ],
        lifespan=lifespan,
    )
    guarded: ASGIApp = SecurityHeaders(app)
    # Cross-origin browser calls only from the configured origins (none by default).
    if origins := container.settings.cors_origin_list:
        guarded = CORSMiddleware(
            guarded,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
            max_age=600,
        )
    # Inside RequestLimits: refused requests get a request id, and a WebSocket's `send`
    # there is still the server's own (server/ws.py writes shared frames through it).
    guarded = lifecycle.guard(guarded)
    # Latency, open WebSockets and the server span of each request.
    guarded = ObservedRequests(guarded, container.metrics, container.tracing)
    limited = RequestLimits(guarded, container.settings.max_request_bytes)
    return AccessLog(limited, enabled=container.settings.access_log)
