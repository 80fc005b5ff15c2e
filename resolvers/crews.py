"""Crew queries and mutations."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.context import Info
from schema.crews import Crew, CrewInput
from schema.relay import Connection, connection


async def crews(info: Info, first: int | None = None, after: str | None = None) -> Connection[Crew]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(await info.context.services.crews.list(p, size, after), Crew.from_domain)


async def crew(info: Info, id: strawberry.ID) -> Crew:
    p = await info.context.principal()
    return Crew.from_domain(await info.context.services.crews.get(p, id))


async def create_crew(info: Info, input: CrewInput) -> Crew:
    p = await info.context.principal()
    return Crew.from_domain(await info.context.services.crews.create(p, input.to_domain()))


async def update_crew(
    info: Info, id: strawberry.ID, input: CrewInput, expected_version: int | None = None
) -> Crew:
    p = await info.context.principal()
    return Crew.from_domain(
        await info.context.services.crews.update(p, id, input.to_domain(), expected_version)
    )


async def delete_crew(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.crews.delete(p, id)
