"""Ports and values of the AI runtime: one LLM call against one provider, usage, errors.

The domain decides (which provider next, when to give up, what to record); adapters in
`runtime/` only perform one call against one resolved target and classify its failure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and cost of one or more LLM calls (`cost_usd` None when a price is unknown)."""

    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        if self.llm_calls == 0:
            cost = other.cost_usd
        elif other.llm_calls == 0:
            cost = self.cost_usd
        elif self.cost_usd is None or other.cost_usd is None:
            cost = None
        else:
            cost = self.cost_usd + other.cost_usd
        return Usage(
            self.llm_calls + other.llm_calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            cost,
        )


@dataclass(frozen=True, slots=True)
class LlmTarget:
    """One provider resolved for one call: the decrypted key lives only as long as the call.

    `repr` never shows the key, so a target can be logged safely."""

    provider_id: str
    name: str
    provider: str  # LiteLLM provider, e.g. "openai", "ollama", "hosted_vllm"
    model: str
    base_url: str | None
    api_key: str | None = field(default=None, repr=False)
    timeout_seconds: float = 60.0
    max_retries: int = 0


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """OpenAI-style chat messages plus the knobs a node or an agent sets."""

    messages: Sequence[Mapping[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    tools: Sequence[Mapping[str, Any]] | None = None  # OpenAI function-tool schemas
    response_format: Literal["text", "json"] = "text"
    stop: Sequence[str] | None = None
    # Correlation sent to the provider as headers (the scripted model's request log shows
    # them): the execution and the node the call belongs to. `LlmService` fills them.
    run_tag: str | None = None
    node_tag: str | None = None


@dataclass(frozen=True, slots=True)
class LlmReply:
    content: str
    model: str
    provider_id: str  # the provider that answered (after failover)
    usage: Usage
    tool_calls: Sequence[Mapping[str, Any]] = ()
    finish_reason: str | None = None


FailureKind = Literal["timeout", "rate_limited", "server", "auth", "bad_request", "network"]
FAILOVER_KINDS: frozenset[str] = frozenset({"timeout", "rate_limited", "server", "network"})


class LlmCallFailed(Exception):
    """One call failed; `kind` decides whether a fallback is tried. The message is the
    provider's, already scrubbed of the key."""

    def __init__(self, kind: FailureKind, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.usage = usage

    @property
    def fails_over(self) -> bool:
        return self.kind in FAILOVER_KINDS


TokenCallback = Callable[[str], Awaitable[None]]


class LlmClient(Protocol):
    """Performs exactly one call (no failover, no recording): the runtime adapter."""

    async def complete(
        self, target: LlmTarget, request: LlmRequest, on_token: TokenCallback | None = None
    ) -> LlmReply:
        """Streams when `on_token` is given. Raises `LlmCallFailed`; cancellable (closing
        the stream stops the provider's work)."""
        ...


@dataclass(frozen=True, slots=True)
class UsageRecord:
    provider_id: str
    model: str
    usage: Usage
    execution_id: str | None = None
    node_id: str | None = None
    chat_session_id: str | None = None


class UsageStore(Protocol):
    async def record(self, tenant_schema: str, record: UsageRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class UsageDay:
    """One UTC day of a tenant: executions created that day and the LLM usage."""

    day: date
    executions: int
    usage: Usage


class UsageReader(Protocol):
    """Sums of recorded usage; keys without usage are absent from the results."""

    async def by_nodes(
        self, tenant_schema: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Usage]: ...

    async def by_executions(self, tenant_schema: str, ids: Sequence[str]) -> dict[str, Usage]: ...

    async def by_days(self, tenant_schema: str, since: date) -> list[UsageDay]:
        """Days from `since` (UTC) that have usage or executions, any order."""
        ...
