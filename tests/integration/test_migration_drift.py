"""`persistence/tables.py` (what the code queries) matches what the migrations create.

The schema is written twice, once as Alembic migrations and once as SQLAlchemy tables;
Alembic's autogenerate comparison finds any difference (a column, type, nullability,
server default, index, unique or foreign key) in the public schema and in a freshly
migrated tenant schema. A failure lists each difference: fix tables.py, or add the
migration that makes the database match it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from persistence import tables
from persistence.migrate import upgrade_tenant


def _metadata_for(schema: str) -> sa.MetaData:
    """The tables of `schema`: "public", or a tenant schema standing in for `tenant`."""
    source = "public" if schema == "public" else tables.TENANT
    copy = sa.MetaData()
    for table in tables.metadata.tables.values():
        if table.schema == source:
            table.to_metadata(copy, schema=schema)
    return copy


def _differences(conn: Connection, schema: str) -> list[Any]:
    def include_name(name: str | None, type_: str, parent: Any) -> bool:
        if type_ == "schema":
            return name == schema
        return not (type_ == "table" and name == "alembic_version")

    context = MigrationContext.configure(
        conn,
        opts={
            "include_schemas": True,
            "include_name": include_name,
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, _metadata_for(schema)))


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    # Alembic compares the default schema under the name None; with pg_catalog first on the
    # search path, "public" is compared by its name like the tenant schemas.
    engine = create_async_engine(
        database, connect_args={"server_settings": {"search_path": "pg_catalog"}}
    )
    yield engine
    await engine.dispose()


async def test_public_schema_matches_tables(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(_differences, "public")
    assert diff == [], "tables.py and the public migrations differ:\n" + "\n".join(map(str, diff))


async def test_tenant_schema_matches_tables(engine: AsyncEngine) -> None:
    schema = f"tenant_{uuid.uuid4().hex[:12]}"
    try:
        async with engine.begin() as conn:
            await upgrade_tenant(conn, schema)
        async with engine.connect() as conn:
            diff = await conn.run_sync(_differences, schema)
    finally:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    assert diff == [], "tables.py and the tenant migrations differ:\n" + "\n".join(map(str, diff))
