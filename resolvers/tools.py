"""Tool queries and mutations."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from domain.validation import page_size
from schema.context import Info
from schema.relay import Connection, connection
from schema.tools import Tool, ToolInput, ToolKind, ToolValidation


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


async def validate_tool(
    info: Info,
    id: strawberry.ID,
    sample_input: JSON | None = None,
    input: ToolInput | None = None,
) -> ToolValidation:
    """Static checks, then a real dry run in the sandbox with `sampleInput`; with
    `input`, an unsaved edit of the tool is checked instead of the stored one."""
    p = await info.context.principal()
    draft = input.to_domain() if input is not None else None
    result = await info.context.services.tool_runs.validate(p, id, sample_input, draft)
    return ToolValidation(
        valid=result.valid,
        errors=list(result.errors),
        output=result.output,
        duration_ms=result.duration_ms,
    )
