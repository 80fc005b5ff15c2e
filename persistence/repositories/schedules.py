"""Schedules of one tenant, and the cross-tenant index of due schedules.

Every write of a schedule writes its row of `public.schedule_due` in the same transaction
(present while the schedule is enabled and has a next run), so the scheduler finds what
is due in every tenant with one indexed query. `claim_due` locks both rows, skipping rows
another transaction holds: concurrent schedulers never fire one due time twice.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from domain.ports import Page
from domain.schedules import DueSchedule, Schedule
from persistence import tables as t
from persistence.db import Database
from persistence.pagination import paginate
from persistence.repositories.quotas import SCHEDULES_LOCK_NS, locked_count
from persistence.repositories.sql import ConnectionStatements, PoolStatements, in_schema

# A suspended tenant's schedules do not fire (nor move on): their rows stay due, so on
# activation each fires once, as times missed while everything was down do.
_CLAIM = """
SELECT s.* FROM public.schedule_due d JOIN {s}.schedules s ON s.id = d.schedule_id
WHERE d.schedule_id = $1::uuid AND d.next_run_at <= now() AND s.enabled
  AND EXISTS (SELECT 1 FROM public.tenants t WHERE t.id = d.tenant_id AND t.status = 'ACTIVE')
FOR UPDATE OF d, s SKIP LOCKED
"""

_DUE = """
SELECT d.schedule_id, d.tenant_id, d.tenant_schema FROM public.schedule_due d
JOIN public.tenants t ON t.id = d.tenant_id AND t.status = 'ACTIVE'
WHERE d.next_run_at <= now() ORDER BY d.next_run_at LIMIT $1
"""


def _to_schedule(r: Any) -> Schedule:
    return Schedule(
        id=str(r["id"]),
        flow_id=str(r["flow_id"]),
        cron=r["cron"],
        timezone=r["timezone"],
        inputs=dict(r["inputs"] or {}),
        enabled=bool(r["enabled"]),
        next_run_at=r["next_run_at"],
        last_execution_id=str(r["last_execution_id"]) if r["last_execution_id"] else None,
        created_by=r["created_by"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


class SqlSchedules:
    """`domain.schedules.ScheduleRepository` on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, schema: str) -> None:
        self._conn = conn
        self._schema = schema
        self._sql = ConnectionStatements(conn)

    async def get(self, ident: str, *, for_update: bool = False) -> Schedule | None:
        if not is_uuid(ident):
            return None
        stmt = sa.select(t.schedules).where(t.schedules.c.id == ident)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).mappings().first()
        return _to_schedule(row) if row else None

    async def page(self, first: int, after: str | None, flow_id: str | None) -> Page[Schedule]:
        stmt = sa.select(t.schedules)
        if flow_id is not None:
            stmt = stmt.where(t.schedules.c.flow_id == flow_id)
        return await paginate(
            self._conn,
            stmt,
            t.schedules.c.created_at,
            t.schedules.c.id,
            first,
            after,
            lambda r: _to_schedule(r._mapping),
        )

    async def lock_and_count(self) -> int:
        return await locked_count(self._conn, SCHEDULES_LOCK_NS, self._schema, t.schedules)

    @staticmethod
    async def flow_referrers(conn: AsyncConnection, flow_id: str) -> list[str]:
        """How a flow's schedules are named when they keep it from being deleted."""
        rows = await conn.execute(
            sa.select(t.schedules.c.id, t.schedules.c.cron)
            .where(t.schedules.c.flow_id == flow_id)
            .order_by(t.schedules.c.created_at)
        )
        return [f"schedule {r.id} ({r.cron!r})" for r in rows]

    def _values(self, s: Schedule) -> dict[str, Any]:
        return {
            "id": s.id,
            "flow_id": s.flow_id,
            "cron": s.cron,
            "timezone": s.timezone,
            "inputs": s.inputs,
            "enabled": s.enabled,
            "next_run_at": s.next_run_at,
            "last_execution_id": s.last_execution_id,
            "created_by": s.created_by,
            "created_at": s.created_at,
            "updated_at": s.updated_at,
        }

    async def _index(self, s: Schedule, tenant_id: str) -> None:
        due = t.schedule_due
        if s.enabled and s.next_run_at is not None:
            stmt = insert(due).values(
                schedule_id=s.id,
                tenant_id=tenant_id,
                tenant_schema=self._schema,
                next_run_at=s.next_run_at,
            )
            await self._conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[due.c.schedule_id],
                    set_={"next_run_at": stmt.excluded.next_run_at},
                )
            )
        else:
            await self._conn.execute(due.delete().where(due.c.schedule_id == s.id))

    async def add(self, schedule: Schedule, tenant_id: str) -> None:
        await self._conn.execute(t.schedules.insert().values(**self._values(schedule)))
        await self._index(schedule, tenant_id)

    async def update(self, schedule: Schedule, tenant_id: str) -> None:
        values = self._values(schedule)
        values.pop("id")
        values.pop("created_at")
        await self._conn.execute(
            t.schedules.update().where(t.schedules.c.id == schedule.id).values(**values)
        )
        await self._index(schedule, tenant_id)

    async def delete(self, ident: str) -> None:
        await self._conn.execute(
            t.schedule_due.delete().where(t.schedule_due.c.schedule_id == ident)
        )
        await self._conn.execute(t.schedules.delete().where(t.schedules.c.id == ident))

    async def claim_due(self, ident: str) -> Schedule | None:
        row = await self._sql.fetchrow(in_schema(_CLAIM, self._schema), ident)
        return _to_schedule(row) if row else None


class SqlScheduleIndex:
    """`domain.schedules.ScheduleIndex`: one autocommit read of the public index."""

    def __init__(self, db: Database) -> None:
        self._pool = PoolStatements(db)

    async def due(self, limit: int) -> list[DueSchedule]:
        rows = await self._pool.fetch(_DUE, limit)
        return [
            DueSchedule(str(r["schedule_id"]), str(r["tenant_id"]), r["tenant_schema"])
            for r in rows
        ]
