"""Agent queries and mutations."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.agents import Agent, AgentInput
from schema.context import Info
from schema.relay import Connection, connection


async def agents(
    info: Info, first: int | None = None, after: str | None = None, search: str | None = None
) -> Connection[Agent]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(
        await info.context.services.agents.list(p, size, after, search), Agent.from_domain
    )


async def agent(info: Info, id: strawberry.ID) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(await info.context.services.agents.get(p, id))


async def create_agent(info: Info, input: AgentInput) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(await info.context.services.agents.create(p, input.to_domain()))


async def update_agent(
    info: Info, id: strawberry.ID, input: AgentInput, expected_version: int | None = None
) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(
        await info.context.services.agents.update(p, id, input.to_domain(), expected_version)
    )


async def delete_agent(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.agents.delete(p, id)
