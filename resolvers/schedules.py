"""Schedule queries and mutations."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.automation import Schedule, ScheduleInput
from schema.context import Info
from schema.relay import Connection, connection


async def schedules(
    info: Info,
    first: int | None = None,
    after: str | None = None,
    flow_id: strawberry.ID | None = None,
) -> Connection[Schedule]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    page = await info.context.services.schedules.list(
        p, size, after, str(flow_id) if flow_id is not None else None
    )
    return connection(page, Schedule.from_domain)


async def schedule(info: Info, id: strawberry.ID) -> Schedule:
    p = await info.context.principal()
    return Schedule.from_domain(await info.context.services.schedules.get(p, id))


async def create_schedule(info: Info, input: ScheduleInput) -> Schedule:
    p = await info.context.principal()
    return Schedule.from_domain(await info.context.services.schedules.create(p, input.to_domain()))


async def update_schedule(info: Info, id: strawberry.ID, input: ScheduleInput) -> Schedule:
    p = await info.context.principal()
    return Schedule.from_domain(
        await info.context.services.schedules.update(p, id, input.to_domain())
    )


async def delete_schedule(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.schedules.delete(p, id)
