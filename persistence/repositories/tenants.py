"""Adapter of domain.tenants.TenantAdminStore over public.tenants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from domain.identity import TenantStatus
from domain.tenants import TenantRecord
from persistence import tables as t


def _record(r: Any) -> TenantRecord:
    quota = r.quota or {}
    return TenantRecord(
        id=str(r.id),
        name=r.name,
        slug=r.slug,
        schema_name=r.schema_name,
        status=TenantStatus(r.status),
        suspended_reason=r.suspended_reason,
        suspended_at=r.suspended_at,
        quota_overrides={str(k): int(v) for k, v in quota.items()},
        created_at=r.created_at,
    )


class SqlTenantAdminStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list(self) -> list[TenantRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(t.tenants.select().order_by(t.tenants.c.slug))
            return [_record(r) for r in rows]

    async def by_slug(self, slug: str) -> TenantRecord | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(t.tenants.select().where(t.tenants.c.slug == slug))).first()
            return None if row is None else _record(row)

    async def set_status(
        self, tenant_id: str, status: TenantStatus, reason: str | None, at: datetime | None
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                t.tenants.update()
                .where(t.tenants.c.id == tenant_id)
                .values(status=status.value, suspended_reason=reason, suspended_at=at)
            )

    async def set_quota(self, tenant_id: str, overrides: dict[str, int]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                t.tenants.update().where(t.tenants.c.id == tenant_id).values(quota=overrides)
            )
