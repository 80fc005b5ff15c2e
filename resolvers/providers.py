"""LLM provider queries and mutations."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from domain.validation import page_size
from schema.context import Info
from schema.providers import LlmProvider, LlmProviderInput
from schema.relay import Connection, connection


async def llm_providers(
    info: Info, first: int | None = None, after: str | None = None
) -> Connection[LlmProvider]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(
        await info.context.services.providers.list(p, size, after), LlmProvider.from_domain
    )


async def llm_provider(info: Info, id: strawberry.ID) -> LlmProvider:
    p = await info.context.principal()
    return LlmProvider.from_domain(await info.context.services.providers.get(p, id))


async def create_llm_provider(info: Info, input: LlmProviderInput) -> LlmProvider:
    p = await info.context.principal()
    return LlmProvider.from_domain(
        await info.context.services.providers.create(p, input.to_domain())
    )


async def update_llm_provider(
    info: Info, id: strawberry.ID, input: LlmProviderInput, expected_version: int | None = None
) -> LlmProvider:
    p = await info.context.principal()
    updated = await info.context.services.providers.update(
        p, id, input.to_domain(), expected_version
    )
    return LlmProvider.from_domain(updated)


async def delete_llm_provider(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.providers.delete(p, id)


async def test_llm_provider(info: Info, id: strawberry.ID) -> JSON:
    """A real one-token call: `{ok, latencyMs, model, error}`; failures are data, not errors."""
    p = await info.context.principal()
    return JSON(await info.context.services.llm.test_provider(p, id))
