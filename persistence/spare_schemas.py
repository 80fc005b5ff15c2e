"""Spare tenant schemas: a few made ahead of time, so that a registration renames one
instead of waiting for PostgreSQL to create ~130 relation files.

Each spare is a schema named `spare_<12 hex>` (never a tenant schema name, so no tenant
connection can reach it) with a row in `public.spare_tenant_schemas` recording the head
it was made at; no tenant row points at it, so it is not listed, backed up or migrated as
a tenant. A registration claims the oldest spare at its own head inside its transaction
(persistence/migrate.py `provision_tenant`); a spare at another head is never claimed,
and upgrading drops it.

`SpareSchemas` keeps `target` spares at the head: at start, and whenever a connection
that provisioned a tenant goes back to the pool (its transaction has ended, committed or
not), a background task makes the missing ones, one transaction each. Processes refilling
at once take turns on an advisory lock, so together they never overshoot the target."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event

from persistence.db import Database
from persistence.migrate import (
    PROVISIONED,
    Scripts,
    TenantDdl,
    new_spare_name,
    tenant_ddl,
)
from persistence.tables import spare_tenant_schemas

_log = structlog.get_logger("crewgraph.spare_schemas")

# pg_advisory_xact_lock(namespace, key): refills of every process, one at a time.
_REFILL_LOCK = sa.text("SELECT pg_advisory_xact_lock(29541, 1)")
_COUNT = sa.text(f"SELECT count(*) FROM public.{spare_tenant_schemas.name} WHERE heads = :heads")
# How long closing waits for a spare being made before cancelling it (it rolls back).
_CLOSE_WAIT_SECONDS = 5.0


async def count_spares(db: Database, ddl: TenantDdl) -> int:
    """Spares at `ddl`'s head, committed."""
    async with db.engine.connect() as conn:
        found = int((await conn.execute(_COUNT, {"heads": ddl.version})).scalar_one())
        await conn.rollback()
    return found


class SpareSchemas:
    """Keeps `target` spare tenant schemas at the current head; 0 makes none (a
    registration then creates its schema inline, as it does whenever the pool is empty)."""

    def __init__(self, db: Database, target: int, scripts: Scripts | None = None) -> None:
        self._db = db
        self.target = target
        self._scripts = scripts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        self.made = 0  # spares this process made
        self.last_error: BaseException | None = None

    def start(self) -> None:
        """Fill the pool now, and again after every provisioning on this database."""
        if self.target <= 0 or self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        event.listen(self._db.engine.sync_engine.pool, "checkin", self._checkin)
        self.wake()

    def _checkin(self, _dbapi_connection: Any, record: Any) -> None:
        if record is None or not record.info.pop(PROVISIONED, False):
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # A fresh context: the refill must not inherit the request's shared connection
            # (persistence/db.py) or its log context.
            loop.call_soon_threadsafe(self.wake, context=contextvars.Context())

    def wake(self) -> None:
        """Refill in the background; a wake during a refill makes it count again after."""
        if self.target <= 0 or self._closed:
            return
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="spare-tenant-schemas")

    async def _run(self) -> None:
        while self._again and not self._closed:
            self._again = False
            try:
                await self.refill()
            except Exception as exc:  # the next provisioning wakes it again
                self.last_error = exc
                _log.warning("spare tenant schemas not refilled", error=repr(exc))
                return

    async def refill(self) -> int:
        """Make spares until `target` are at the head; returns how many were made."""
        made = 0
        while not self._closed and await self._make_one():
            made += 1
        return made

    async def _make_one(self) -> bool:
        async with self._db.engine.connect() as conn:
            ddl = await tenant_ddl(conn, self._scripts)
            if not ddl.renamable:
                await conn.rollback()
                return False
            await conn.execute(_REFILL_LOCK)
            count = int((await conn.execute(_COUNT, {"heads": ddl.version})).scalar_one())
            if count >= self.target:
                await conn.rollback()
                return False
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.execute(ddl.spare_script(new_spare_name()))
            await conn.commit()
        self.made += 1
        return True

    async def idle(self) -> None:
        """Wait for the refill under way, if any (tests, benchmarks)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        pool = self._db.engine.sync_engine.pool
        if event.contains(pool, "checkin", self._checkin):
            event.remove(pool, "checkin", self._checkin)
        task, self._task = self._task, None
        if task is None or task.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), _CLOSE_WAIT_SECONDS)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
