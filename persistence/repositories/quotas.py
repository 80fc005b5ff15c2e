"""Adapter of `domain.quotas.QuotaStore`, and the locked counts the quota checks run in
their creating transactions (executions per day, chat sessions, schedules and webhooks
at once).

The counts take a transaction-scoped advisory lock per tenant and quota first, in a
statement of their own: under READ COMMITTED the count that follows then sees every
row committed by the previous holder, which released the lock only by committing or
rolling back. So concurrent creates of one tenant, in any number of processes, queue
up for the few milliseconds of the check and the insert, and never pass the quota.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from domain.llm import Usage
from persistence import tables as t
from persistence.db import Database
from persistence.repositories.sql import Statements, in_schema

# pg_advisory_xact_lock(namespace, hashtext(key)): one namespace per quota, apart from
# the runner's claim lock (execution_leases.py).
EXECUTIONS_LOCK_NS = 0x7165
CHAT_SESSIONS_LOCK_NS = 0x7163
SCHEDULES_LOCK_NS = 0x7173
WEBHOOKS_LOCK_NS = 0x7177

_LOCK = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_EXECUTIONS_SINCE = "SELECT count(*) FROM {s}.executions WHERE created_at >= $1"


async def executions_created_since(
    sql: Statements, schema: str, tenant_id: str, since: datetime
) -> int:
    """Executions of the tenant created from `since` on, with the tenant's lock held
    until the transaction of `sql` ends."""
    await sql.execute(_LOCK, EXECUTIONS_LOCK_NS, tenant_id)
    return int(await sql.fetchval(in_schema(_EXECUTIONS_SINCE, schema), since))


async def lock_chat_sessions(conn: AsyncConnection, tenant_schema: str) -> int:
    """Chat sessions of the schema, with its lock held until the transaction ends."""
    await conn.execute(
        sa.select(
            sa.func.pg_advisory_xact_lock(CHAT_SESSIONS_LOCK_NS, sa.func.hashtext(tenant_schema))
        )
    )
    count = await conn.scalar(sa.select(sa.func.count()).select_from(t.chat_sessions))
    return int(count or 0)


async def locked_count(
    conn: AsyncConnection, namespace: int, tenant_schema: str, table: sa.Table
) -> int:
    """Rows of the schema's `table`, with the schema's lock of `namespace` held until the
    transaction ends (a create's count and insert are then one step per tenant)."""
    await conn.execute(
        sa.select(sa.func.pg_advisory_xact_lock(namespace, sa.func.hashtext(tenant_schema)))
    )
    count = await conn.scalar(sa.select(sa.func.count()).select_from(table))
    return int(count or 0)


class SqlQuotaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def overrides(self, tenant_id: str) -> dict[str, int] | None:
        if not is_uuid(tenant_id):
            return None
        async with self._db.connect() as conn:
            stmt = sa.select(t.tenants.c.quota).where(t.tenants.c.id == tenant_id)
            row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        return {str(k): int(v) for k, v in (row.quota or {}).items() if v is not None}

    async def usage_since(self, tenant_schema: str, since: datetime) -> Usage:
        u = t.llm_usage
        stmt = sa.select(
            sa.func.count().label("calls"),
            sa.func.coalesce(sa.func.sum(u.c.prompt_tokens), 0).label("prompt"),
            sa.func.coalesce(sa.func.sum(u.c.completion_tokens), 0).label("completion"),
            sa.func.sum(u.c.cost_usd).label("cost"),
            # One request of unknown price makes the total unknown (as in usage.py).
            sa.func.bool_or(u.c.cost_usd.is_(None)).label("unpriced"),
        ).where(u.c.created_at >= since)
        async with self._db.connect(tenant_schema) as conn:
            row = (await conn.execute(stmt)).one()
        cost = None if row.unpriced or row.cost is None else float(row.cost)
        return Usage(int(row.calls), int(row.prompt), int(row.completion), cost)
