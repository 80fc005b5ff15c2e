"""Optional OpenTelemetry tracing, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

Spans: the HTTP request (named after its GraphQL operation) -> `execution.dispatch` ->
`execution.run` (the worker's run of a claimed execution) -> `node <KIND>` -> `llm.call` /
`sandbox.run`, each with the tenant and execution ids as attributes. The trace context
travels through the queue: an arq job carries it as a W3C `traceparent` map (the `trace`
keyword argument), the in-process dispatcher hands it to the run's task. Incoming
`traceparent` headers are honoured, so a caller's trace continues here.

Each process has its own `TracerProvider` (not the global one): tests build several
containers in one process, each with its own exporter. The exporter is OTLP over HTTP,
configured by the standard `OTEL_EXPORTER_OTLP_*` variables; `OTEL_SERVICE_NAME` names
the service (default `crewgraph`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from domain.observability import SpanAttributes

_PROPAGATOR = TraceContextTextMapPropagator()


def _clean(attributes: SpanAttributes) -> dict[str, str | int | float | bool]:
    return {k: v for k, v in attributes.items() if v is not None}


class Tracing:
    """This process's tracer; every method is a cheap no-op when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: trace.Tracer = (
            provider.get_tracer("crewgraph") if provider is not None else trace.NoOpTracer()
        )

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def span(
        self,
        name: str,
        attributes: SpanAttributes,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: otel_context.Context | None = None,
    ) -> AbstractContextManager[Span]:
        """A span made current for the block (a child of the current span, or of
        `parent`); an exception escaping the block is recorded on it."""
        return self.tracer.start_as_current_span(
            name, context=parent, kind=kind, attributes=_clean(attributes)
        )

    def inject(self) -> dict[str, str]:
        """The current trace context as W3C headers ({} when off or outside a span)."""
        if not self.enabled:
            return {}
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier

    def extract(self, carrier: Mapping[str, str] | None) -> otel_context.Context | None:
        if not self.enabled or not carrier:
            return None
        return _PROPAGATOR.extract(dict(carrier))

    @contextmanager
    def attached(self, carrier: Any) -> Iterator[None]:
        """Run the block in the trace context `carrier` (a job's `trace` argument) holds;
        anything malformed is ignored."""
        ctx = None
        if isinstance(carrier, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in carrier.items()
        ):
            ctx = self.extract(carrier)
        if ctx is None:
            yield
            return
        token = otel_context.attach(ctx)
        try:
            yield
        finally:
            otel_context.detach(token)

    def shutdown(self) -> None:
        """Flush what is buffered and stop the exporter."""
        if self.provider is not None:
            self.provider.shutdown()


def build_tracing(exporter: SpanExporter | None = None) -> Tracing:
    """Tracing to `exporter` (tests: an in-memory one, spans exported as they end), else
    to OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else off."""
    if exporter is None:
        if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return Tracing(None)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor: SimpleSpanProcessor | BatchSpanProcessor = BatchSpanProcessor(OTLPSpanExporter())
    else:
        processor = SimpleSpanProcessor(exporter)
    name = os.environ.get("OTEL_SERVICE_NAME") or "crewgraph"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    if exporter is not None:
        # runtime/ sets OTEL_SDK_DISABLED (keeping CrewAI's own SDK use quiet) when no
        # endpoint is configured, and the SDK reads it once, here, with no public switch:
        # an exporter handed in explicitly (tests) means this provider records.
        provider._disabled = False
    provider.add_span_processor(processor)
    return Tracing(provider)
