"""Spare tenant schemas (persistence/spare_schemas.py): a registration with a warm pool
renames a spare made at the head, and the pool refills after it; concurrent registrations
get distinct spares; a spare at another head is never used (and upgrading drops it); an
empty pool falls back to creating the schema inline. A claimed spare is exactly the
schema Alembic makes. Each test has its own database, so no other pool refills into it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import IdentityService
from persistence.db import Database
from persistence.migrate import (
    provision_tenant,
    tenant_ddl,
    upgrade_all,
    upgrade_public,
    upgrade_tenant,
)
from persistence.spare_schemas import SpareSchemas, count_spares
from persistence.uow import SqlUnitOfWorkFactory
from server.security import JwtCodec
from tests.integration.test_tenant_provisioning import catalog
from tests.support import services as test_services

PASSWORD = "correct horse battery"


class _FreeHasher:
    async def hash(self, password: str) -> str:
        return "not-a-hash"

    async def verify(self, stored: str | None, password: str) -> bool:
        return False


@pytest.fixture
async def db(services: test_services.TestServices) -> AsyncIterator[Database]:
    own = test_services.TestServices()
    own.admin_dsn = services.admin_dsn
    await own.create_database()
    database = Database(own.database_url)
    try:
        async with database.engine.begin() as conn:
            await upgrade_public(conn)
        yield database
    finally:
        await database.dispose()
        await own.drop_database()


def _identity(db: Database) -> IdentityService:
    return IdentityService(SqlUnitOfWorkFactory(db), _FreeHasher(), JwtCodec("s" * 40, 60), 3600)


async def _rows(conn: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    return list(await conn.execute(sa.text(sql), params))


async def _spares(db: Database) -> dict[str, int]:
    """Spare name -> its schema's oid."""
    async with db.engine.connect() as conn:
        rows = await _rows(
            conn,
            "SELECT s.schema_name, n.oid::int FROM public.spare_tenant_schemas s "
            "JOIN pg_namespace n ON n.nspname = s.schema_name",
        )
    return {r[0]: r[1] for r in rows}


async def _schema_of(db: Database, tenant_id: str) -> tuple[str, int]:
    async with db.engine.connect() as conn:
        (row,) = await _rows(
            conn,
            "SELECT t.schema_name, n.oid::int FROM public.tenants t "
            "JOIN pg_namespace n ON n.nspname = t.schema_name WHERE t.id = :i",
            i=tenant_id,
        )
    return row[0], row[1]


async def _eventually(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def test_a_registration_claims_a_spare_at_the_head_and_the_pool_refills(
    db: Database,
) -> None:
    pool = SpareSchemas(db, target=2)
    pool.start()
    try:
        await _eventually(lambda: _has(db, 2))
        before = await _spares(db)
        session = await _identity(db).register("Warm Corp", "warm@example.com", PASSWORD)
        schema, oid = await _schema_of(db, session.user.tenant_id)
        # The tenant's schema is one of the spares, renamed: same oid, the spare's name
        # and row gone.
        claimed = [name for name, spare_oid in before.items() if spare_oid == oid]
        assert len(claimed) == 1
        after = await _spares(db)
        assert claimed[0] not in after
        async with db.engine.connect() as conn:
            assert not await _rows(
                conn, "SELECT 1 FROM pg_namespace WHERE nspname = :n", n=claimed[0]
            )
            (head,) = await _rows(conn, f'SELECT version_num FROM "{schema}".alembic_version')
            ddl = await tenant_ddl(conn)
            assert (head[0],) == ddl.heads
        # The tenant works in its schema (a write and a read through its unit of work).
        uow_factory = SqlUnitOfWorkFactory(db)
        async with uow_factory(schema) as uow:
            await uow.conn.execute(
                sa.text(f"INSERT INTO \"{schema}\".settings (key, value) VALUES ('k', '1')")
            )
            await uow.commit()
        # The connection went back to the pool after the commit: the spare is replaced.
        await _eventually(lambda: _has(db, 2))
        assert pool.made >= 3 and pool.last_error is None
    finally:
        await pool.aclose()


async def _has(db: Database, n: int) -> bool:
    return len(await _spares(db)) >= n


async def test_a_claimed_spare_is_the_alembic_schema(db: Database) -> None:
    pool = SpareSchemas(db, target=1)
    assert await pool.refill() == 1
    (spare,) = await _spares(db)
    schema, by_alembic = (f"tenant_{uuid.uuid4().hex[:12]}" for _ in range(2))
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("SELECT 1"))
        assert await provision_tenant(conn, schema) is True
    async with db.engine.begin() as conn:
        await upgrade_tenant(conn, by_alembic)
    async with db.engine.connect() as conn:
        assert await catalog(conn, schema) == await catalog(conn, by_alembic)
        # Nothing in it mentions the spare's old name.
        mentions = await _rows(
            conn,
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = :s AND p.prosrc LIKE '%' || :spare || '%'",
            s=schema,
            spare=spare,
        )
        assert not mentions


async def test_concurrent_registrations_get_distinct_spares(db: Database) -> None:
    pool = SpareSchemas(db, target=3)
    assert await pool.refill() == 3
    before = await _spares(db)
    identity = _identity(db)
    sessions = await asyncio.gather(
        *(identity.register(f"Team {i}", f"c{i}@example.com", PASSWORD) for i in range(3))
    )
    oids = [(await _schema_of(db, s.user.tenant_id))[1] for s in sessions]
    # Three tenants, three schemas; every one a different spare (or, had two raced for
    # one, made inline: never one spare twice).
    assert len(set(oids)) == 3
    claimed = set(oids) & set(before.values())
    assert len(claimed) >= 2
    assert len(await _spares(db)) == 3 - len(claimed)


async def test_concurrent_claims_never_share_a_spare(db: Database) -> None:
    """Two transactions claiming at once, both holding their claim uncommitted: the
    second skips the first's locked spare and takes the next, or none."""
    pool = SpareSchemas(db, target=1)
    assert await pool.refill() == 1
    first, second = (f"tenant_{uuid.uuid4().hex[:12]}" for _ in range(2))
    async with db.engine.connect() as a, db.engine.connect() as b:
        await a.begin()
        await b.begin()
        assert await provision_tenant(a, first) is True
        assert await provision_tenant(b, second) is False  # the only spare is taken
        await b.commit()
        await a.rollback()  # the claim is undone: the spare is back, under its own name
    assert len(await _spares(db)) == 1
    async with db.engine.connect() as conn:
        names = {r[0] for r in await _rows(conn, "SELECT nspname FROM pg_namespace")}
    assert second in names and first not in names


async def test_a_spare_at_another_head_is_never_used_and_upgrading_drops_it(
    db: Database,
) -> None:
    pool = SpareSchemas(db, target=1)
    assert await pool.refill() == 1
    (old,) = await _spares(db)
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE public.spare_tenant_schemas SET heads = 't0001' WHERE schema_name = :n"
            ),
            {"n": old},
        )
    schema = f"tenant_{uuid.uuid4().hex[:12]}"
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("SELECT 1"))
        assert await provision_tenant(conn, schema) is False  # made inline
    assert old in await _spares(db)  # untouched
    # The pool does not count it: it makes one at the head.
    assert await pool.refill() == 1
    assert len(await _spares(db)) == 2
    # A spare schema without its row (left by hand) goes too.
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql('CREATE SCHEMA "spare_0123456789ab"')
        await upgrade_all(conn)
    spares = await _spares(db)
    assert old not in spares and len(spares) == 1
    async with db.engine.connect() as conn:
        left = {
            r[0]
            for r in await _rows(
                conn, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'spare%'"
            )
        }
    assert left == set(spares)


async def test_an_empty_pool_falls_back_to_creating_the_schema(db: Database) -> None:
    assert await _spares(db) == {}
    session = await _identity(db).register("Cold Corp", "cold@example.com", PASSWORD)
    schema, _ = await _schema_of(db, session.user.tenant_id)
    async with db.engine.connect() as conn:
        tables = await _rows(
            conn,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s",
            s=schema,
        )
    assert tables[0][0] > 20
    # A pool of 0 makes nothing, started or not.
    off = SpareSchemas(db, target=0)
    off.start()
    assert await off.refill() == 0
    await off.aclose()
    assert await count_spares(db, await _ddl(db)) == 0


async def _ddl(db: Database) -> Any:
    async with db.engine.connect() as conn:
        ddl = await tenant_ddl(conn)
        await conn.rollback()
    return ddl


async def test_spares_are_not_tenants(db: Database) -> None:
    """Not listed, not migrated as tenants, not reachable by a tenant connection."""
    pool = SpareSchemas(db, target=1)
    await pool.refill()
    (spare,) = await _spares(db)
    async with SqlUnitOfWorkFactory(db)() as uow:
        assert spare not in {t.schema_name for t in await uow.tenants.all()}
    async with db.engine.begin() as conn:
        assert spare not in await upgrade_all(conn)
    with pytest.raises(ValueError, match="not a tenant schema name"):
        async with db.connect(spare):
            pass
