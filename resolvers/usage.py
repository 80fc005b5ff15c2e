"""Token usage of the caller's team."""

from __future__ import annotations

from schema.context import Info
from schema.usage import UsageDay


async def usage(info: Info, days: int | None = 30) -> list[UsageDay]:
    p = await info.context.principal()
    found = await info.context.services.usage.daily(p, 30 if days is None else days)
    return [UsageDay.from_domain(d) for d in found]
