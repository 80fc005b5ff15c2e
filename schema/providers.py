"""LLM provider types. The API key goes in, never out (`hasApiKey`)."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import providers as d


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
        )


@strawberry.input
class LlmProviderInput:
    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key: str | None = strawberry.field(
        default=None, description="null keeps the stored key on update; an empty string removes it"
    )

    def to_domain(self) -> d.ProviderInput:
        return d.ProviderInput(self.name, self.provider, self.model, self.base_url, self.api_key)
