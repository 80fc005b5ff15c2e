"""What the use cases report for operators: spans around their steps and measurements of
their calls. The server implements this port with OpenTelemetry and Prometheus
(server/tracing.py, server/metrics.py); without them every call is a no-op."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from domain.llm import Usage

SpanAttributes = Mapping[str, str | int | float | bool | None]


@dataclass(frozen=True, slots=True)
class LlmCallObserved:
    """One call to one provider (a failover makes several)."""

    tenant_id: str
    provider: str  # LiteLLM provider name, e.g. "openai", "hosted_vllm"
    model: str
    outcome: str  # "ok", a failure kind, "cancelled" or "error"
    usage: Usage
    seconds: float


class Observer(Protocol):
    def span(self, name: str, attributes: SpanAttributes) -> AbstractContextManager[None]:
        """A span around a step, child of the current one; attributes that are None are
        left out."""
        ...

    def llm_call(self, call: LlmCallObserved) -> None: ...


class NullObserver:
    """Reports nothing (unit tests, and wiring that has no observability)."""

    def span(self, name: str, attributes: SpanAttributes) -> AbstractContextManager[None]:
        return nullcontext()

    def llm_call(self, call: LlmCallObserved) -> None:
        return None


NULL_OBSERVER: Observer = NullObserver()
