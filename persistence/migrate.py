"""Alembic migrations for the public schema and for every tenant schema.

Two script directories: `migrations/public` (identity tables, version table in
`public`) and `migrations/tenant` (resource tables written against the
`tenant` placeholder schema, version table inside each tenant schema)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import check_schema_name
from persistence.tables import TENANT

_HERE = Path(__file__).parent / "migrations"


@lru_cache(maxsize=2)
def _script(kind: str) -> tuple[Config, ScriptDirectory]:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / kind))
    return cfg, ScriptDirectory.from_config(cfg)


def _upgrade(conn: Connection, kind: str, version_schema: str) -> None:
    cfg, script = _script(kind)

    def steps(rev, context):  # type: ignore[no-untyped-def]
        return script._upgrade_revs("head", rev)

    with EnvironmentContext(cfg, script, fn=steps) as env:
        env.configure(
            connection=conn,
            version_table_schema=version_schema,
            transactional_ddl=True,
        )
        env.run_migrations()


def upgrade_public_sync(conn: Connection) -> None:
    _upgrade(conn, "public", "public")


def upgrade_tenant_sync(conn: Connection, schema: str) -> None:
    check_schema_name(schema)
    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    translated = conn.execution_options(schema_translate_map={TENANT: schema})
    _upgrade(translated, "tenant", schema)


async def upgrade_public(conn: AsyncConnection) -> None:
    await conn.run_sync(upgrade_public_sync)


async def upgrade_tenant(conn: AsyncConnection, schema: str) -> None:
    await conn.run_sync(upgrade_tenant_sync, schema)


async def upgrade_all(conn: AsyncConnection) -> list[str]:
    """Upgrade public, then every tenant schema; returns the tenant schemas."""
    await upgrade_public(conn)
    rows = await conn.execute(sa.text("SELECT schema_name FROM public.tenants ORDER BY created_at"))
    schemas = [r[0] for r in rows]
    for schema in schemas:
        await upgrade_tenant(conn, schema)
    return schemas
