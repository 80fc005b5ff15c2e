"""A request's units of work share one pooled connection, one at a time, and nothing but
the socket carries over from one to the next (tenant mapping, transaction, failure)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy as sa

from persistence.tables import TENANT
from server.security import Argon2Hasher


async def _pid(conn: Any) -> int:
    return int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


async def test_units_of_work_take_turns_on_the_request_connection(container: Any) -> None:
    db = container.db
    async with db.request_scope():
        async with db.connect() as conn:
            first = await _pid(conn)
            async with db.connect() as other:  # the request's connection is busy
                assert await _pid(other) != first
        async with db.connect("tenant_0123456789ab") as conn:
            assert await _pid(conn) == first
            assert conn.sync_connection.get_execution_options()["schema_translate_map"] == {
                TENANT: "tenant_0123456789ab"
            }
            await conn.execute(sa.text("SELECT 1"))
        async with db.connect() as conn:
            # The next unit of work sees no tenant mapping and no open transaction.
            assert not conn.in_transaction()
            assert await _pid(conn) == first
            assert conn.sync_connection.get_execution_options().get("schema_translate_map") is None
        with pytest.raises(sa.exc.DBAPIError):
            async with db.connect() as conn:
                await conn.execute(sa.text("SELECT 1/0"))
        async with db.connect() as conn:  # a failed use gave its connection back
            assert not conn.in_transaction()
            await conn.execute(sa.text("SELECT 1"))
    # Outside the request: the pool as before, and the request's connection was returned.
    async with db.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))


async def test_rollback_between_units_of_work(container: Any) -> None:
    db = container.db
    async with db.request_scope():
        async with db.connect() as conn:
            await conn.execute(sa.text("CREATE TEMP TABLE rq_probe (x int)"))
            await conn.execute(sa.text("INSERT INTO rq_probe VALUES (1)"))
            # not committed: must not be visible to the next unit of work
        async with db.connect() as conn:
            exists = await conn.execute(sa.text("SELECT to_regclass('pg_temp.rq_probe')"))
            assert exists.scalar_one() is None


async def test_password_hashing_leaves_the_event_loop_free() -> None:
    hasher = Argon2Hasher()
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    stored = await hasher.hash("correct horse battery")
    assert await hasher.verify(stored, "correct horse battery")
    assert not await hasher.verify(stored, "wrong")
    assert not await hasher.verify(None, "correct horse battery")
    took = time.monotonic() - started
    stop = True
    await task
    # On the loop the ticker would have been starved for the whole ~4 x argon2 time.
    assert ticks >= took / 0.005 / 4, (ticks, took)


async def test_no_idle_connection_is_held_when_the_pool_is_full(container: Any) -> None:
    from persistence.db import Database

    db = Database(container.db.url, pool_size=1)
    try:
        async with db.request_scope():
            async with db.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            # Holding it idle would leave the request waiting on itself for a second one.
            assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            async with db.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await db.dispose()
