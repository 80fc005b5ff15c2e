"""Alembic migrations for the public schema and for every tenant schema.

Two script directories: `migrations/public` (identity tables, version table in
`public`) and `migrations/tenant` (resource tables written against the
`tenant` placeholder schema, version table inside each tenant schema).

A NEW tenant's schema is not migrated step by step: `provision_tenant` replays, in one
round trip, the statements Alembic ran once per process to migrate a throwaway template
schema to the head (captured from the connection, the template's name replaced), then
stamps the head. Existing tenants are upgraded by Alembic.

Faster still, a registration claims a spare schema made ahead of time at the same head
(persistence/spare_schemas.py keeps a few) and renames it; only an empty pool sends the
DDL inline. Upgrading drops spares left at an older head; the pool makes new ones."""

from __future__ import annotations

import asyncio
import re
import secrets
import weakref
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
from persistence.tables import TENANT, spare_tenant_schemas

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


# Alembic's `context` is process-global: two migrations or renderings at once on one
# event loop (the spare pool's refill and a registration, say) would each run inside the
# other's EnvironmentContext.
_alembic_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _alembic() -> asyncio.Lock:
    return _alembic_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())


async def upgrade_public(conn: AsyncConnection) -> None:
    async with _alembic():
        await conn.run_sync(upgrade_public_sync)


async def upgrade_tenant(
    conn: AsyncConnection, schema: str, scripts: Scripts | None = None
) -> None:
    async with _alembic():
        await conn.run_sync(upgrade_tenant_sync, schema, scripts)


async def upgrade_all(conn: AsyncConnection) -> list[str]:
    """Upgrade public, then every tenant schema; returns the tenant schemas. Renders the
    new-tenant DDL too (rolled back), so the first registration does not pay for it."""
    await upgrade_public(conn)
    rows = await conn.execute(sa.text("SELECT schema_name FROM public.tenants ORDER BY created_at"))
    schemas = [r[0] for r in rows]
    for schema in schemas:
        await upgrade_tenant(conn, schema)
    ddl = await tenant_ddl(conn)
    await drop_stale_spares(conn, ddl)
    return schemas


# -- new tenants ----------------------------------------------------------------------

_REVISION = re.compile(r"^[A-Za-z0-9_]+$")


_SPARE = re.compile(r"^spare_[a-f0-9]{12}$")
# String literals and dollar-quoted bodies: PostgreSQL keeps their text as written.
_LITERAL = re.compile(r"\$(\w*)\$.*?\$\1\$|'(?:[^']|'')*'", re.DOTALL)


def check_spare_name(name: str) -> str:
    """A spare's name never matches `check_schema_name`: no tenant connection reaches it."""
    if not _SPARE.match(name):
        raise ValueError(f"not a spare schema name: {name!r}")
    return name


def new_spare_name() -> str:
    return f"spare_{secrets.token_hex(6)}"


def _renamable(template: str, statements: tuple[str, ...]) -> bool:
    """Whether a schema made by these statements can be renamed into another one: every
    mention of the schema is a qualifier PostgreSQL resolves when the statement runs. A
    mention inside a literal (a function body, a comment, a data row) or inside another
    object's name would keep the old name after a rename."""
    qualifier = re.compile(rf'(?<![\w"$])"?{template}"?\.')
    for statement in statements:
        outside = _LITERAL.sub("''", statement)
        if statement.count(template) != len(qualifier.findall(outside)):
            return False
    return True


@dataclass(frozen=True, slots=True)
class TenantDdl:
    """What Alembic runs to bring an empty tenant schema to `heads`, for any schema."""

    heads: tuple[str, ...]
    template: str  # the throwaway schema name the statements were captured with
    statements: tuple[str, ...]  # no bound parameters: they run as one script
    # Spares made from these statements may be renamed into tenants' schemas.
    renamable: bool = False

    @property
    def version(self) -> str:
        """The heads as `spare_tenant_schemas.heads` records them."""
        return ",".join(self.heads)

    def script(self, schema: str) -> str:
        return self._script(check_schema_name(schema))

    def spare_script(self, name: str) -> str:
        """A spare schema at `heads` and its row, for a registration to claim later."""
        row = (
            f"INSERT INTO public.{spare_tenant_schemas.name} (schema_name, heads) "
            f"VALUES ('{check_spare_name(name)}', '{self.version}')"
        )
        return self._script(name)[:-1] + f";\n{row};"

    def _script(self, schema: str) -> str:
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
    return TenantDdl(heads, template, tuple(statements), _renamable(template, tuple(statements)))


async def tenant_ddl(conn: AsyncConnection, scripts: Scripts | None = None) -> TenantDdl:
    """The rendered DDL of the current head, rendered on this connection the first time."""
    scripts = scripts or _script("tenant")
    key = _key(scripts)
    ddl = _rendered.get(key)
    if ddl is None:
        async with _alembic():
            ddl = _rendered.get(key)
            if ddl is None:
                ddl = await conn.run_sync(render_tenant_ddl_sync, scripts)
                _rendered[key] = ddl
    return ddl


#: Set in a connection's `info` by `provision_tenant`: when the connection goes back to the
#: pool its transaction has ended, and the spare pool (persistence/spare_schemas.py) refills.
PROVISIONED = "crewgraph.tenant_provisioned"

# The oldest spare at the head that still exists, locked and deleted: a concurrent claim
# skips it (SKIP LOCKED) and takes the next, or none. A rollback puts it back.
_CLAIM = sa.text(
    f"""DELETE FROM public.{spare_tenant_schemas.name} WHERE schema_name = (
    SELECT s.schema_name FROM public.{spare_tenant_schemas.name} s
    WHERE s.heads = :heads
      AND EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = s.schema_name)
    ORDER BY s.created_at LIMIT 1 FOR UPDATE SKIP LOCKED
) RETURNING schema_name"""
)


async def provision_tenant(
    conn: AsyncConnection,
    schema: str,
    scripts: Scripts | None = None,
    *,
    spare: bool = True,
) -> bool:
    """Create a new tenant's schema at the head inside the caller's transaction: a spare
    schema at the same head renamed (two short statements), else the rendered DDL in one
    round trip once it is rendered. True when a spare was claimed; `spare=False` always
    sends the DDL."""
    check_schema_name(schema)
    ddl = await tenant_ddl(conn, scripts)
    raw: Any = (await conn.get_raw_connection()).driver_connection
    if not raw.is_in_transaction():
        # SQLAlchemy's asyncpg adapter opens its transaction at its first statement (and
        # persistence/db.py defers it past plain reads): a transaction-local set_config is
        # not a plain read, so it begins one. Neither the claim nor the script may ever
        # run in autocommit.
        await conn.exec_driver_sql("SELECT set_config('crewgraph.provisioning', 'on', true)")
    if not raw.is_in_transaction():
        raise RuntimeError("tenant provisioning must run inside a transaction")
    conn.info[PROVISIONED] = True
    if spare and ddl.renamable:
        claimed = (await conn.execute(_CLAIM, {"heads": ddl.version})).scalar()
        if claimed is not None:
            await conn.exec_driver_sql(
                f'ALTER SCHEMA "{check_spare_name(claimed)}" RENAME TO "{schema}"'
            )
            return True
    # The simple query protocol: every statement in one message, none prepared.
    await raw.execute(ddl.script(schema))
    return False


async def drop_stale_spares(conn: AsyncConnection, ddl: TenantDdl) -> list[str]:
    """Drop spares at another head than `ddl`'s, and spare schemas without a row; returns
    their names. A spare being claimed meanwhile is waited for and left alone."""
    table = spare_tenant_schemas.name
    stale = await conn.execute(
        sa.text(f"DELETE FROM public.{table} WHERE heads <> :heads RETURNING schema_name"),
        {"heads": ddl.version if ddl.renamable else ""},
    )
    orphans = await conn.execute(
        sa.text(
            f"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'spare\\_%' "
            f"AND NOT EXISTS (SELECT 1 FROM public.{table} s WHERE s.schema_name = nspname)"
        )
    )
    names = sorted({r[0] for r in stale} | {r[0] for r in orphans})
    names = [n for n in names if _SPARE.match(n)]
    for name in names:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    return names
