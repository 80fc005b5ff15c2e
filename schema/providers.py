"""LLM provider types. The API key goes in, never out (`hasApiKey`)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import providers as d
from schema.context import Info
from schema.fields import described


@strawberry.type
class LlmProvider:
    id: strawberry.ID
    name: str
    provider: str = strawberry.field(description='LiteLLM provider, e.g. "openai", "ollama"')
    model: str
    base_url: str | None
    has_api_key: bool
    version: int
    created_at: datetime
    updated_at: datetime
    timeout_seconds: float = strawberry.field(description="per request to this provider")
    max_retries: int = strawberry.field(
        description="retries of a timed-out, rate-limited or failed request before failover"
    )
    fallback_ids: strawberry.Private[list[str]]

    @described(
        "Tried in order when this provider times out, is rate-limited or fails "
        "(one level, no cycles)."
    )
    async def fallbacks(self, info: Info) -> list[LlmProvider]:
        found = await info.context.loaders.provider.load_many(self.fallback_ids)
        return [LlmProvider.from_domain(p) for p in found if p is not None]

    @classmethod
    def from_domain(cls, p: d.LlmProvider) -> LlmProvider:
        return cls(
            id=strawberry.ID(p.id),
            name=p.name,
            provider=p.provider,
            model=p.model,
            base_url=p.base_url,
            has_api_key=p.has_api_key,
            version=p.version,
            created_at=p.created_at,
            updated_at=p.updated_at,
            timeout_seconds=p.timeout_seconds,
            max_retries=p.max_retries,
            fallback_ids=list(p.fallback_ids),
        )


@strawberry.input
class LlmProviderInput:
    name: str
    provider: str
    model: str
    base_url: str | None = strawberry.field(
        default=None, description=f'"{d.LOCAL_BASE_URL}" is this server\'s scripted model'
    )
    api_key: str | None = strawberry.field(
        default=None, description="null keeps the stored key on update; an empty string removes it"
    )
    fallback_provider_ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="on update: null keeps the stored list, [] clears it"
    )
    timeout_seconds: float | None = strawberry.field(
        default=None, description=f"default {d.DEFAULT_TIMEOUT_SECONDS:g}; null keeps on update"
    )
    max_retries: int | None = strawberry.field(
        default=None, description=f"0..{d.MAX_RETRIES}, default {d.DEFAULT_MAX_RETRIES}"
    )

    def to_domain(self) -> d.ProviderInput:
        return d.ProviderInput(
            self.name,
            self.provider,
            self.model,
            self.base_url,
            self.api_key,
            [str(i) for i in self.fallback_provider_ids]
            if self.fallback_provider_ids is not None
            else None,
            self.timeout_seconds,
            self.max_retries,
        )
