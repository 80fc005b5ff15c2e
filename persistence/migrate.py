"""Alembic migrations for the public schema and for every tenant schema.

Two script directories: `migrations/public` (identity tables, version table in
`public`) and `migrations/tenant` (resource tables written against the
`tenant` placeholder schema, version table inside each tenant schema).

A NEW tenant's schema is not migrated step by step: `provision_tenant` replays, in one
round trip, the statements Alembic ran once per process to migrate a throwaway template
schema to the head (captured from the connection, the template's name replaced), then
stamps the head. Existing tenants are upgraded by Alembic."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import check_schema_name
from persistence.tables import TENANT

_HERE = Path(__file__).parent / "migrations"

Scripts = tuple[Config, ScriptDirectory]


@lru_cache(maxsize=2)
def _script(kind: str) -> Scripts:
    return scripts_at(_HERE / kind)


def scripts_at(location: Path) -> Scripts:
    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    return cfg, ScriptDirectory.from_config(cfg)


def _upgrade(conn: Connection, scripts: Scripts, version_schema: str) -> None:
    cfg, script = scripts

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
    _upgrade(conn, _script("public"), "public")


def upgrade_tenant_sync(conn: Connection, schema: str, scripts: Scripts | None = None) -> None:
    check_schema_name(schema)
    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    translated = conn.execution_options(schema_translate_map={TENANT: schema})
    _upgrade(translated, scripts or _script("tenant"), schema)


async def upgrade_public(conn: AsyncConnection) -> None:
    await conn.run_sync(upgrade_public_sync)


async def upgrade_tenant(
    conn: AsyncConnection, schema: str, scripts: Scripts | None = None
) -> None:
    await conn.run_sync(upgrade_tenant_sync, schema, scripts)


async def upgrade_all(conn: AsyncConnection) -> list[str]:
    """Upgrade public, then every tenant schema; returns the tenant schemas. Renders the
    new-tenant DDL too (rolled back), so the first registration does not pay for it."""
    await upgrade_public(conn)
    rows = await conn.execute(sa.text("SELECT schema_name FROM public.tenants ORDER BY created_at"))
    schemas = [r[0] for r in rows]
    for schema in schemas:
        await upgrade_tenant(conn, schema)
    await tenant_ddl(conn)
    return schemas


# -- new tenants ----------------------------------------------------------------------

_REVISION = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True, slots=True)
class TenantDdl:
    """What Alembic runs to bring an empty tenant schema to `heads`, for any schema."""

    heads: tuple[str, ...]
    template: str  # the throwaway schema name the statements were captured with
    statements: tuple[str, ...]  # no bound parameters: they run as one script

    def script(self, schema: str) -> str:
        check_schema_name(schema)
        # The template name is random (tenant_ + 12 hex digits): it cannot occur in the
        # statements except as the schema they were captured for.
        body = [s.strip().replace(self.template, schema) for s in self.statements]
        stamp = [
            f"INSERT INTO {schema}.alembic_version (version_num) VALUES ('{head}')"
            for head in self.heads
        ]
        return ";\n".join([f'CREATE SCHEMA "{schema}"', *body, *stamp]) + ";"


# Keyed by script location and head revisions: a process that sees a new migration
# renders again instead of provisioning an old schema.
_rendered: dict[tuple[str, tuple[str, ...]], TenantDdl] = {}


def _key(scripts: Scripts) -> tuple[str, tuple[str, ...]]:
    cfg, script = scripts
    return str(cfg.get_main_option("script_location")), tuple(sorted(script.get_heads()))


def _replayed(statement: str, parameters: Any) -> bool:
    """Whether a statement captured while migrating the template is part of the DDL.
    Left out: the schema's creation (the script has its own), Alembic's version-table
    reads and writes (the head is stamped once instead) and parameterised reads (Alembic
    and migrations inspecting the catalog: their effect is in the statements they led to)."""
    words = statement.split(None, 2)
    verb = " ".join(words[:2]).upper()
    if verb == "CREATE SCHEMA":
        return False
    if "alembic_version" in statement:
        return verb == "CREATE TABLE"
    if parameters:
        if verb.startswith("SELECT"):
            return False
        # One script cannot carry bound parameters; no tenant migration sends any. Write
        # the values into the SQL (op.execute with literal text) instead.
        raise RuntimeError(
            f"a tenant migration sent a statement with bound parameters: {statement}"
        )
    return True


def render_tenant_ddl_sync(conn: Connection, scripts: Scripts | None = None) -> TenantDdl:
    """Migrate a throwaway schema with Alembic inside a savepoint that is rolled back,
    recording every statement the connection sends."""
    scripts = scripts or _script("tenant")
    template = f"tenant_{secrets.token_hex(6)}"
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    previous = conn.get_execution_options().get("schema_translate_map")
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(f'CREATE SCHEMA "{template}"')
        event.listen(conn, "before_cursor_execute", capture)
        try:
            upgrade_tenant_sync(conn, template, scripts)
        finally:
            event.remove(conn, "before_cursor_execute", capture)
        version = conn.exec_driver_sql(f'SELECT version_num FROM "{template}".alembic_version')
        heads = tuple(sorted(r[0] for r in version))
    finally:
        savepoint.rollback()
        conn.execution_options(schema_translate_map=previous)
    statements = [s for s, parameters in captured if _replayed(s, parameters)]
    bad = [h for h in heads if not _REVISION.match(h)]
    if bad:
        raise RuntimeError(f"unexpected revision identifiers: {bad}")
    return TenantDdl(heads, template, tuple(statements))


async def tenant_ddl(conn: AsyncConnection, scripts: Scripts | None = None) -> TenantDdl:
    """The rendered DDL of the current head, rendered on this connection the first time."""
    scripts = scripts or _script("tenant")
    key = _key(scripts)
    ddl = _rendered.get(key)
    if ddl is None:
        ddl = await conn.run_sync(render_tenant_ddl_sync, scripts)
        _rendered[key] = ddl
    return ddl


async def provision_tenant(
    conn: AsyncConnection, schema: str, scripts: Scripts | None = None
) -> None:
    """Create a new tenant's schema at the head inside the caller's transaction: one round
    trip once the DDL is rendered."""
    check_schema_name(schema)
    ddl = await tenant_ddl(conn, scripts)
    script = ddl.script(schema)
    raw: Any = (await conn.get_raw_connection()).driver_connection
    if not raw.is_in_transaction():
        # SQLAlchemy's asyncpg adapter opens its transaction at its first statement (and
        # persistence/db.py defers it past plain reads): a transaction-local set_config is
        # not a plain read, so it begins one. The script must never run in autocommit.
        await conn.exec_driver_sql("SELECT set_config('crewgraph.provisioning', 'on', true)")
    if not raw.is_in_transaction():
        raise RuntimeError("tenant provisioning must run inside a transaction")
    # The simple query protocol: every statement in one message, none prepared.
    await raw.execute(script)
