"""Reading token usage and cost: per node run, per execution, per tenant and UTC day."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from domain.errors import BadUserInput
from domain.identity import Principal
from domain.llm import Usage, UsageDay, UsageReader
from domain.rbac import Action

MAX_DAYS = 366


class UsageService:
    """Read side of `UsageStore`; batch methods serve the per-request DataLoaders."""

    def __init__(self, reader: UsageReader) -> None:
        self._reader = reader

    async def for_nodes(
        self, p: Principal, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Usage]:
        """(execution id, node id) -> usage, for node runs that called a model."""
        p.require(Action.READ)
        if not keys:
            return {}
        return await self._reader.by_nodes(p.tenant_schema, keys)

    async def for_executions(self, p: Principal, ids: Sequence[str]) -> dict[str, Usage]:
        """Execution id -> usage; executions without LLM calls get zeros."""
        p.require(Action.READ)
        found = await self._reader.by_executions(p.tenant_schema, ids) if ids else {}
        return {i: found.get(i, Usage()) for i in ids}

    async def daily(
        self, p: Principal, days: int = 30, *, today: date | None = None
    ) -> list[UsageDay]:
        """One entry per UTC day for the last `days` days (today included), newest first."""
        p.require(Action.READ)
        if not 1 <= days <= MAX_DAYS:
            raise BadUserInput(
                f"days must be between 1 and {MAX_DAYS}", {"days": f"must be 1 to {MAX_DAYS}"}
            )
        last = today or datetime.now(UTC).date()
        first = last - timedelta(days=days - 1)
        found = {d.day: d for d in await self._reader.by_days(p.tenant_schema, first)}
        return [
            found.get(day, UsageDay(day, 0, Usage()))
            for day in (last - timedelta(days=i) for i in range(days))
        ]
