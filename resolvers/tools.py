"""Tool queries and mutations."""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from domain.validation import page_size
from schema.relay import Connection, connection
from schema.tools import Tool, ToolInput, ToolKind


async def tools(
    info: Info,
    first: int | None = None,
    after: str | None = None,
    kind: ToolKind | None = None,  # type: ignore[valid-type]
) -> Connection[Tool]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(
        await info.context.services.tools.list(p, size, after, kind), Tool.from_domain
    )


async def tool(info: Info, id: strawberry.ID) -> Tool:
    p = await info.context.principal()
    return Tool.from_domain(await info.context.services.tools.get(p, id))


async def create_tool(info: Info, input: ToolInput) -> Tool:
    p = await info.context.principal()
    return Tool.from_domain(await info.context.services.tools.create(p, input.to_domain()))


async def update_tool(
    info: Info, id: strawberry.ID, input: ToolInput, expected_version: int | None = None
) -> Tool:
    p = await info.context.principal()
    return Tool.from_domain(
        await info.context.services.tools.update(p, id, input.to_domain(), expected_version)
    )


async def delete_tool(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.tools.delete(p, id)
