"""LLM usage: one row per request to a provider, and the sums read back from it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa

from domain.auth import is_uuid
from domain.llm import Usage, UsageDay, UsageRecord
from persistence import tables as t
from persistence.db import Database

_u = t.llm_usage


def _sums() -> list[Any]:
    return [
        sa.func.count().label("calls"),
        sa.func.coalesce(sa.func.sum(_u.c.prompt_tokens), 0).label("prompt"),
        sa.func.coalesce(sa.func.sum(_u.c.completion_tokens), 0).label("completion"),
        sa.func.sum(_u.c.cost_usd).label("cost"),
        # One request of unknown price makes the total unknown.
        sa.func.bool_or(_u.c.cost_usd.is_(None)).label("unpriced"),
    ]


def _usage(row: Any) -> Usage:
    cost = None if row.unpriced or row.cost is None else float(row.cost)
    return Usage(int(row.calls), int(row.prompt), int(row.completion), cost)


class SqlUsageStore:
    """`UsageStore` and `UsageReader`: each write is its own short transaction, so it
    lands even when the execution it belongs to is rolled back or cancelled."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, tenant_schema: str, record: UsageRecord) -> None:
        execution_id = record.execution_id
        if execution_id is not None and not is_uuid(execution_id):
            execution_id = None
        async with self._db.connect(tenant_schema) as conn:
            await conn.execute(
                _u.insert().values(
                    provider_id=record.provider_id,
                    model=record.model,
                    prompt_tokens=record.usage.prompt_tokens,
                    completion_tokens=record.usage.completion_tokens,
                    cost_usd=record.usage.cost_usd,
                    execution_id=execution_id,
                    node_id=record.node_id,
                    chat_session_id=record.chat_session_id,
                )
            )
            await conn.commit()

    async def by_nodes(
        self, tenant_schema: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Usage]:
        wanted = [(e, n) for e, n in dict.fromkeys(keys) if is_uuid(e)]
        if not wanted:
            return {}
        stmt = (
            sa.select(_u.c.execution_id, _u.c.node_id, *_sums())
            .where(sa.tuple_(_u.c.execution_id, _u.c.node_id).in_(wanted))
            .group_by(_u.c.execution_id, _u.c.node_id)
        )
        async with self._db.connect(tenant_schema) as conn:
            rows = await conn.execute(stmt)
            return {(str(r.execution_id), r.node_id): _usage(r) for r in rows}

    async def by_executions(self, tenant_schema: str, ids: Sequence[str]) -> dict[str, Usage]:
        wanted = [i for i in dict.fromkeys(ids) if is_uuid(i)]
        if not wanted:
            return {}
        stmt = (
            sa.select(_u.c.execution_id, *_sums())
            .where(_u.c.execution_id.in_(wanted))
            .group_by(_u.c.execution_id)
        )
        async with self._db.connect(tenant_schema) as conn:
            rows = await conn.execute(stmt)
            return {str(r.execution_id): _usage(r) for r in rows}

    async def by_days(self, tenant_schema: str, since: date) -> list[UsageDay]:
        start = datetime.combine(since, time.min).replace(tzinfo=UTC)
        usage_day = sa.func.date(sa.func.timezone("UTC", _u.c.created_at)).label("day")
        x = t.executions
        exec_day = sa.func.date(sa.func.timezone("UTC", x.c.created_at)).label("day")
        async with self._db.connect(tenant_schema) as conn:
            usage_rows = await conn.execute(
                sa.select(usage_day, *_sums()).where(_u.c.created_at >= start).group_by(usage_day)
            )
            usage = {r.day: _usage(r) for r in usage_rows}
            exec_rows = await conn.execute(
                sa.select(exec_day, sa.func.count().label("n"))
                .where(x.c.created_at >= start)
                .group_by(exec_day)
            )
            executions = {r.day: int(r.n) for r in exec_rows}
        return [
            UsageDay(day, executions.get(day, 0), usage.get(day, Usage()))
            for day in set(usage) | set(executions)
        ]
