"""Prometheus metrics of one process, and the adapters that feed them.

Every process has its own registry (`Metrics.registry`): an API process serves it at
`/metrics` (guarded by `CREWGRAPH_METRICS_TOKEN`, see `metrics_endpoint`), a
`crewgraph worker` on `CREWGRAPH_METRICS_PORT` when set. Prometheus scrapes each process
and sums across them. The gauges read from PostgreSQL (`crewgraph_executions`, the queue
depth and the oldest PENDING age) describe the whole installation, not the process: they
are read by API processes only, at most once per `CREWGRAPH_METRICS_CACHE_SECONDS` (one
indexed query over `public.active_executions`), so aggregate them with `max`, not `sum`.

Label values are bounded: operation names (chosen by clients) are kept for the first
`max_operations` distinct names of the process, later ones count as `_other`; tenants
appear (by id) only on the LLM families, one series per tenant and provider or outcome.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from opentelemetry.trace import SpanKind
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import SchemaExtension

from domain.executions.ports import NodeContext, NodeExecutor
from domain.executions.records import Execution
from domain.flows.model import FlowNode
from domain.observability import LlmCallObserved, SpanAttributes
from domain.sandbox import Sandbox, SandboxRequest, SandboxResult
from persistence.bus import RedisBus
from persistence.db import Database
from server.access_log import error_codes, safe_name
from server.tracing import Tracing

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("crewgraph.metrics")

#: seconds; request latency buckets (GraphQL over HTTP)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: seconds; sandbox runs and LLM calls last longer
_LONG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OTHER = "_other"
#: statuses with a row in public.active_executions
_ACTIVE = ("PENDING", "RUNNING", "WAITING")

_SNAPSHOT = sa.text(
    "SELECT status, count(*) AS n, "
    "EXTRACT(EPOCH FROM now() - min(created_at)) AS age "
    "FROM public.active_executions GROUP BY status"
)


class Metrics:
    """The metric families of one process, in their own registry."""

    def __init__(self, *, max_operations: int = 200, cache_seconds: float = 5.0) -> None:
        r = self.registry = CollectorRegistry()
        self.max_operations = max_operations
        self.cache_seconds = cache_seconds
        self._operations: set[str] = set()
        self.requests = Histogram(
            "crewgraph_http_request_duration_seconds",
            "GraphQL requests over HTTP, by operation name and HTTP status.",
            ["operation", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "crewgraph_graphql_errors",
            "GraphQL errors returned (HTTP and WebSocket), by extensions.code.",
            ["code"],
            registry=r,
        )
        self.websockets = Gauge(
            "crewgraph_websockets_active", "WebSocket connections open.", registry=r
        )
        self.subscriptions = Gauge(
            "crewgraph_subscriptions_active",
            "GraphQL operations under way on authenticated WebSockets.",
            registry=r,
        )
        self.transitions = Counter(
            "crewgraph_execution_transitions",
            "Execution status changes, by the status entered.",
            ["status"],
            registry=r,
        )
        self.executions = Gauge(
            "crewgraph_executions",
            "Executions PENDING, RUNNING or WAITING now (all tenants, from PostgreSQL).",
            ["status"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "crewgraph_execution_queue_depth",
            "Executions PENDING (waiting for a worker or a slot), from PostgreSQL.",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "crewgraph_execution_oldest_pending_age_seconds",
            "Age of the oldest PENDING execution (0 when none), from PostgreSQL.",
            registry=r,
        )
        self.sandbox_runs = Counter(
            "crewgraph_sandbox_runs",
            "Sandbox runs, by backend and outcome.",
            ["backend", "outcome"],
            registry=r,
        )
        self.sandbox_seconds = Histogram(
            "crewgraph_sandbox_run_duration_seconds",
            "Sandbox run durations, by backend and outcome.",
            ["backend", "outcome"],
            buckets=_LONG_BUCKETS,
            registry=r,
        )
        self.llm_calls = Counter(
            "crewgraph_llm_calls",
            "Calls to LLM providers, by tenant id, provider and outcome.",
            ["tenant", "provider", "outcome"],
            registry=r,
        )
        self.llm_seconds = Histogram(
            "crewgraph_llm_call_duration_seconds",
            "LLM call durations, by provider and outcome.",
            ["provider", "outcome"],
            buckets=_LONG_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "crewgraph_llm_tokens",
            "LLM tokens, by tenant id and kind (prompt, completion).",
            ["tenant", "kind"],
            registry=r,
        )
        self.llm_cost = Counter(
            "crewgraph_llm_cost_usd",
            "LLM cost in US dollars where the price is known, by tenant id.",
            ["tenant"],
            registry=r,
        )
        self.chat_streaming = Gauge(
            "crewgraph_chat_replies_streaming",
            "Chat replies being generated in this process.",
            registry=r,
        )
        self._refreshed = 0.0
        self._refresh_lock = asyncio.Lock()

    # ---- labels

    def operation_label(self, names: list[str | None]) -> str:
        if not names:
            return "_none"  # refused before an operation ran (bad body, persisted query)
        if len(names) > 1:
            return "_batch"
        name = names[0]
        if name is None:
            return "_anonymous"
        if name in self._operations:
            return name
        if len(self._operations) >= self.max_operations:
            return _OTHER
        self._operations.add(name)
        return name

    # ---- observations

    def status_changed(self, status: str) -> None:
        self.transitions.labels(status).inc()

    def llm_call(self, call: LlmCallObserved) -> None:
        self.llm_calls.labels(call.tenant_id, call.provider, call.outcome).inc()
        self.llm_seconds.labels(call.provider, call.outcome).observe(call.seconds)
        usage = call.usage
        if usage.prompt_tokens:
            self.llm_tokens.labels(call.tenant_id, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.llm_tokens.labels(call.tenant_id, "completion").inc(usage.completion_tokens)
        if usage.cost_usd:
            self.llm_cost.labels(call.tenant_id).inc(usage.cost_usd)

    def sandbox_run(self, backend: str, outcome: str, seconds: float) -> None:
        self.sandbox_runs.labels(backend, outcome).inc()
        self.sandbox_seconds.labels(backend, outcome).observe(seconds)

    # ---- scrape-time values

    def watch(
        self,
        *,
        sockets: Callable[[], Iterable[object]] | None = None,
        chat_running: Callable[[], int] | None = None,
    ) -> None:
        """Gauges computed when scraped: operations on this process's authenticated
        WebSockets (`sockets()` returns its socket registry) and chat replies running."""
        if sockets is not None:
            self.subscriptions.set_function(lambda: float(_operations_on(sockets())))
        if chat_running is not None:
            self.chat_streaming.set_function(lambda: float(chat_running()))

    async def refresh(self, db: Database) -> None:
        """The PostgreSQL gauges, read again when older than `cache_seconds`; a failed
        read keeps the previous values (logged)."""
        if time.monotonic() - self._refreshed < self.cache_seconds:
            return
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed < self.cache_seconds:
                return
            try:
                async with db.connect() as conn:
                    rows = (await conn.execute(_SNAPSHOT)).all()
            except Exception as exc:
                log.warning("metrics: reading active executions failed: %s", exc)
                return
            counts = {status: 0 for status in _ACTIVE}
            oldest = 0.0
            for status, n, age in rows:
                counts[str(status)] = int(n)
                if status == "PENDING" and age is not None:
                    oldest = max(float(age), 0.0)
            for status, n in counts.items():
                self.executions.labels(status).set(n)
            self.queue_depth.set(counts.get("PENDING", 0))
            self.oldest_pending.set(oldest)
            self._refreshed = time.monotonic()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _operations_on(sockets: Iterable[object]) -> int:
    """Operations under way on the open sockets (a `SocketRegistry`; both protocols)."""
    total = 0
    for socket in sockets:
        ops = getattr(socket, "operations", None)
        if ops is None:
            ops = getattr(socket, "subscriptions", None)
        total += len(ops) if ops is not None else 0
    return total


# --------------------------------------------------------------------------- the ports


class Observability:
    """The domain's `Observer`: spans to OpenTelemetry, measurements to Prometheus."""

    def __init__(self, metrics: Metrics, tracing: Tracing) -> None:
        self.metrics = metrics
        self.tracing = tracing

    def span(self, name: str, attributes: SpanAttributes) -> AbstractContextManager[None]:
        if not self.tracing.enabled:
            return nullcontext()
        return _span(self.tracing, name, attributes)

    def llm_call(self, call: LlmCallObserved) -> None:
        self.metrics.llm_call(call)


@contextmanager
def _span(tracing: Tracing, name: str, attributes: SpanAttributes) -> Iterator[None]:
    with tracing.span(name, attributes):
        yield


class MeteredBus(RedisBus):
    """The execution bus, counting each status change it announces: every committed
    status change of an execution is published exactly there (domain/executions)."""

    metrics: Metrics | None = None

    async def publish_status(self, tenant_id: str, execution: Execution) -> None:
        if self.metrics is not None:
            self.metrics.status_changed(str(execution.status.value))
        await super().publish_status(tenant_id, execution)


@dataclass
class ObservedSandbox:
    """The `Sandbox` port measured (runs, durations) and traced (`sandbox.run`)."""

    inner: Sandbox
    metrics: Metrics
    tracing: Tracing
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.inner.name

    async def run(self, request: SandboxRequest) -> SandboxResult:
        started = time.perf_counter()
        backend, outcome = self.inner.name, "error"
        with self.tracing.span(
            "sandbox.run",
            {"crewgraph.tenant_id": request.tenant_id, "crewgraph.sandbox.kind": request.kind},
        ) as span:
            try:
                result = await self.inner.run(request)
                backend = result.backend or backend
                outcome = _sandbox_outcome(result)
                span.set_attribute("crewgraph.sandbox.backend", backend)
                span.set_attribute("crewgraph.sandbox.outcome", outcome)
                return result
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                outcome = "not_configured" if type(exc).__name__ == "NotConfigured" else "error"
                raise
            finally:
                self.metrics.sandbox_run(backend, outcome, time.perf_counter() - started)

    async def close(self) -> None:
        await self.inner.close()


def _sandbox_outcome(result: SandboxResult) -> str:
    if result.ok:
        return "ok"
    if result.timed_out:
        return "timeout"
    if result.oom_killed:
        return "oom"
    return "error"


def traced_executors(
    executors: Mapping[str, NodeExecutor], tracing: Tracing
) -> dict[str, NodeExecutor]:
    """Each node executor inside a `node <KIND>` span (the kinds the engine runs itself,
    such as CONDITION, get none: they do no I/O)."""

    def traced(kind: str, inner: NodeExecutor) -> NodeExecutor:
        async def run(node: FlowNode, ctx: NodeContext, /) -> Any:
            with tracing.span(
                f"node {kind}",
                {
                    "crewgraph.tenant_id": ctx.tenant_id,
                    "crewgraph.execution_id": ctx.execution_id,
                    "crewgraph.node_id": node.id,
                    "crewgraph.node_kind": node.kind,
                    "crewgraph.attempt": ctx.attempt,
                },
            ):
                return await inner(node, ctx)

        return run

    return {kind: traced(kind, inner) for kind, inner in executors.items()}


# --------------------------------------------------------------------------- HTTP and WebSocket


@dataclass
class _Request:
    metrics: Metrics
    operations: list[str | None] = field(default_factory=list)
    tenant_id: str | None = None


_REQUEST: ContextVar[_Request | None] = ContextVar("crewgraph_metrics_request", default=None)


class OperationMetrics(SchemaExtension):
    """Counts each operation's error codes and notes its name and tenant for the
    request's latency and span. Listed right after the access log's recorder, so it
    sees the final error codes."""

    def on_operation(self) -> Iterator[None]:
        yield
        record_operation(self.execution_context)


def record_operation(ec: Any) -> None:
    """`OperationMetrics`' count of a finished operation (`ec`: its execution context)."""
    request = _REQUEST.get()
    if request is None:
        return
    try:
        request.operations.append(safe_name(ec.operation_name))
    except Exception:
        request.operations.append(None)
    result = ec.result
    if result is not None and getattr(result, "errors", None):
        for code in error_codes(result.errors):
            request.metrics.errors.labels(code).inc()
    principal = getattr(ec.context, "cached_principal", None)
    if principal is not None:
        request.tenant_id = principal.tenant_id


class ObservedRequests:
    """ASGI middleware: latency of GraphQL HTTP requests, open WebSockets, and the
    server span of each request (continuing an incoming `traceparent`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, tracing: Tracing) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            token = _REQUEST.set(_Request(self.metrics))
            self.metrics.websockets.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                self.metrics.websockets.dec()
                _REQUEST.reset(token)
            return
        if scope["type"] != "http" or scope.get("path") != "/graphql":
            await self.app(scope, receive, send)
            return
        request = _Request(self.metrics)
        token = _REQUEST.set(request)
        status = 0
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if not self.tracing.enabled:  # no span to open, name or continue: none of its cost
            try:
                await self.app(scope, receive, send_status)
            except BaseException:
                status = status or 500
                raise
            finally:
                _REQUEST.reset(token)
                self.metrics.requests.labels(
                    self.metrics.operation_label(request.operations), str(status)
                ).observe(time.perf_counter() - started)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers") or []
            if k in (b"traceparent", b"tracestate")
        }
        method = str(scope.get("method", ""))
        with self.tracing.span(
            f"{method} /graphql",
            {"http.request.method": method, "url.path": "/graphql"},
            kind=SpanKind.SERVER,
            parent=self.tracing.extract(headers),
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException:
                status = status or 500
                raise
            finally:
                _REQUEST.reset(token)
                operation = self.metrics.operation_label(request.operations)
                self.metrics.requests.labels(operation, str(status)).observe(
                    time.perf_counter() - started
                )
                if span.is_recording():
                    span.update_name(f"graphql {operation}")
                    span.set_attribute("http.response.status_code", status)
                    span.set_attribute("graphql.operation.name", operation)
                    if request.tenant_id:
                        span.set_attribute("crewgraph.tenant_id", request.tenant_id)


# --------------------------------------------------------------------------- exposition


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def metrics_endpoint(
    settings: Settings, metrics: Metrics, db: Database
) -> Callable[[Request], Any]:
    """`GET /metrics`. With `CREWGRAPH_METRICS_TOKEN` set, only for `Authorization:
    Bearer <token>` (401 otherwise); without it, open to loopback clients in the laptop
    profile and not served (404) in production."""
    token = settings.metrics_token

    async def endpoint(request: Request) -> Response:
        if token:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                return PlainTextResponse(
                    "unauthorized\n", 401, headers={"www-authenticate": "Bearer"}
                )
        elif settings.env == "production" or not _loopback(
            request.client.host if request.client else None
        ):
            return PlainTextResponse("not found\n", 404)
        await metrics.refresh(db)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return endpoint


def serve_worker_metrics(settings: Settings, metrics: Metrics) -> Any:
    """`crewgraph worker`: its registry on `CREWGRAPH_METRICS_HOST:CREWGRAPH_METRICS_PORT`
    (no token: bind it to a private address); None when no port is set. Returns the
    server, `shutdown()` stops it."""
    if not settings.metrics_port:
        return None
    from prometheus_client import start_http_server

    server, _thread = start_http_server(
        settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
    )
    return server
