"""A new tenant's schema, provisioned from the rendered DDL (persistence/migrate.py), is
exactly what migrating it with Alembic makes: tables, columns, types, defaults, identity,
constraints, indexes, sequences, views, functions, triggers, types, comments, privileges
and the version table, read from pg_catalog. The rendering is captured from Alembic
itself, so a new migration reaches it; the test with a temporary future migration proves
that (and that a new head is rendered again instead of served from the cache)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from persistence import migrate
from persistence.migrate import (
    Scripts,
    provision_tenant,
    scripts_at,
    tenant_ddl,
    upgrade_tenant,
)

# Every query takes the schema's name ($1) and returns rows of text; the schema's name
# inside definitions is replaced by <schema> before comparing.
_CATALOG = {
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text, c.relreplident::text,
               coalesce(c.reloptions::text, ''), coalesce(c.relacl::text, ''),
               pg_get_userbyid(c.relowner)::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum::text, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull::text, a.attidentity::text, a.attgenerated::text,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               coalesce(co.collname, ''), coalesce(a.attacl::text, '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 0
        WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum""",
    "dropped columns": """
        SELECT c.relname, count(*)::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND a.attisdropped GROUP BY 1 ORDER BY 1""",
    "constraints": """
        SELECT coalesce(c.relname, ''), k.conname, k.contype::text,
               pg_get_constraintdef(k.oid), k.condeferrable::text, k.condeferred::text,
               k.convalidated::text
        FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        WHERE n.nspname = $1 ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = $1 ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value::text, min_value::text,
               max_value::text, increment_by::text, cycle::text, cache_size::text,
               coalesce(last_value::text, '')
        FROM pg_sequences WHERE schemaname = $1 ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = $1 ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               CASE WHEN p.prokind IN ('f', 'p', 'w') THEN pg_get_functiondef(p.oid)
                    ELSE p.prokind::text END,
               coalesce(p.proacl::text, '')
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1 ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND NOT t.tgisinternal ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype::text,
               coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = $1 ORDER BY 1""",
    "comments": """
        SELECT c.relname, d.objsubid::text, d.description
        FROM pg_description d JOIN pg_class c ON c.oid = d.objoid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE d.classoid = 'pg_class'::regclass AND n.nspname = $1 ORDER BY 1, 2""",
    "schema": """
        SELECT pg_get_userbyid(nspowner)::text, coalesce(nspacl::text, ''),
               coalesce(obj_description(oid, 'pg_namespace'), '')
        FROM pg_namespace WHERE nspname = $1""",
}


async def catalog(conn: AsyncConnection, schema: str) -> dict[str, Any]:
    raw: Any = (await conn.get_raw_connection()).driver_connection
    snapshot: dict[str, Any] = {}
    for name, query in _CATALOG.items():
        rows = await raw.fetch(query, schema)
        snapshot[name] = [tuple(str(v).replace(schema, "<schema>") for v in r) for r in rows]
    snapshot["alembic_version"] = sorted(
        r[0] for r in await raw.fetch(f'SELECT version_num FROM "{schema}".alembic_version')
    )
    # Rows a data migration writes (none today; the future migration below writes one).
    snapshot["settings"] = [
        tuple(map(str, r))
        for r in await raw.fetch(f'SELECT key, value::text FROM "{schema}".settings ORDER BY 1')
    ]
    return snapshot


def _named(snapshot: dict[str, Any]) -> list[tuple[str, ...]]:
    """Columns as (table, column, type)."""
    return [(r[0], r[2], r[3]) for r in snapshot["columns"]]


TENANT_SCRIPTS = Path(migrate.__file__).parent / "migrations" / "tenant"


def _new_schema() -> str:
    return f"tenant_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database)
    yield engine
    await engine.dispose()


async def _compare(
    engine: AsyncEngine, scripts: Scripts | None = None
) -> tuple[dict[str, Any], str, str]:
    """Migrate one schema with Alembic and provision one from the rendered DDL, each in
    its own committed transaction; returns the Alembic snapshot and the two names."""
    by_alembic, provisioned = _new_schema(), _new_schema()
    async with engine.begin() as conn:
        await upgrade_tenant(conn, by_alembic, scripts)
    async with engine.begin() as conn:
        await conn.execute(sa.text("SELECT 1"))  # the registration's insert comes first
        await provision_tenant(conn, provisioned, scripts)
    try:
        async with engine.connect() as conn:
            expected = await catalog(conn, by_alembic)
            actual = await catalog(conn, provisioned)
        assert actual == expected, _diff(expected, actual)
    except BaseException:
        await _drop(engine, by_alembic, provisioned)
        raise
    return expected, by_alembic, provisioned


def _diff(expected: dict[str, Any], actual: dict[str, Any]) -> str:
    lines = ["the provisioned schema differs from the Alembic one:"]
    for key in expected:
        missing = set(expected[key]) - set(actual.get(key, []))
        extra = set(actual.get(key, [])) - set(expected[key])
        lines += [f"  {key}: only by Alembic {row}" for row in sorted(missing)]
        lines += [f"  {key}: only provisioned {row}" for row in sorted(extra)]
        if not missing and not extra and expected[key] != actual.get(key):
            lines.append(f"  {key}: same rows, another order")
    return "\n".join(lines)


async def _drop(engine: AsyncEngine, *schemas: str) -> None:
    async with engine.begin() as conn:
        for schema in schemas:
            await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def test_provisioned_schema_is_the_alembic_schema(engine: AsyncEngine) -> None:
    expected, by_alembic, provisioned = await _compare(engine)
    try:
        heads = sorted(migrate.scripts_at(TENANT_SCRIPTS)[1].get_heads())
        assert len(expected["relations"]) > 40 and expected["alembic_version"] == heads
        # Alembic sees the provisioned schema at the head: upgrading it changes nothing.
        async with engine.begin() as conn:
            await upgrade_tenant(conn, provisioned)
        async with engine.connect() as conn:
            assert await catalog(conn, provisioned) == expected
            # The comparison sees a difference the size of one index's or one default's.
            await conn.exec_driver_sql(f'DROP INDEX "{provisioned}".executions_crew_idx')
            assert await catalog(conn, provisioned) != expected
            await conn.rollback()
            await conn.exec_driver_sql(
                f"ALTER TABLE \"{provisioned}\".agents ALTER COLUMN options SET DEFAULT '[]'::jsonb"
            )
            assert await catalog(conn, provisioned) != expected
            await conn.rollback()
    finally:
        await _drop(engine, by_alembic, provisioned)


async def test_provisioning_rolls_back_with_the_registration(engine: AsyncEngine) -> None:
    schema = _new_schema()
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(sa.text("SELECT 1"))
        await provision_tenant(conn, schema)
        assert await conn.scalar(sa.text(f'SELECT count(*) FROM "{schema}".agents')) == 0
        await conn.rollback()
    async with engine.connect() as conn:
        exists = await conn.scalar(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        )
    assert exists == 0


async def test_provisioning_runs_inside_a_transaction_not_yet_started(
    engine: AsyncEngine,
) -> None:
    """The script goes to asyncpg directly: it must still join SQLAlchemy's transaction
    when it is the transaction's first statement."""
    schema = _new_schema()
    async with engine.connect() as conn:
        await conn.begin()
        await provision_tenant(conn, schema)
        await conn.rollback()
    async with engine.connect() as conn:
        exists = await conn.scalar(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        )
    assert exists == 0


async def test_a_bad_schema_name_is_refused_before_any_sql(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.begin()
        for name in ('tenant_abc"; DROP SCHEMA public; --', "public", "tenant_ABCDEF012345"):
            with pytest.raises(ValueError, match="not a tenant schema name"):
                await provision_tenant(conn, name)
        await conn.rollback()


_FUTURE = '''"""a future migration: a table with a trigger, a column, a data row

Revision ID: tfuture
"""

import sqlalchemy as sa
from alembic import op

revision = "tfuture"
down_revision = "__HEAD__"
branch_labels = None
depends_on = None

S = "tenant"


def _real_schema() -> str:
    options = op.get_bind().get_execution_options()
    return str((options.get("schema_translate_map") or {}).get(S, S))


def upgrade() -> None:
    real = _real_schema()
    op.create_table(
        "labels",
        sa.Column("id", sa.BigInteger, sa.Identity(start=100), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, server_default="x"),
        sa.Column("touched_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.add_column("agents", sa.Column("label_id", sa.BigInteger), schema=real)
    op.execute(
        f"""CREATE FUNCTION {real}.touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.touched_at := now(); RETURN NEW; END $$"""
    )
    op.execute(
        f"CREATE TRIGGER labels_touch BEFORE UPDATE ON {real}.labels "
        f"FOR EACH ROW EXECUTE FUNCTION {real}.touch()"
    )
    op.execute(f"CREATE VIEW {real}.label_names AS SELECT name FROM {real}.labels")
    op.execute(f"COMMENT ON TABLE {real}.labels IS 'labels of agents'")
    op.execute(f"""INSERT INTO {real}.settings (key, value) VALUES ('labels', '{{"on": true}}')""")


def downgrade() -> None:
    pass
'''


async def test_a_new_migration_reaches_the_rendered_ddl(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A new head is rendered again (the cache is keyed by it), and what it renders
    matches Alembic migrating to it: functions, triggers, views, comments, data rows."""
    location = tmp_path / "tenant"
    shutil.copytree(TENANT_SCRIPTS, location)
    (head,) = scripts_at(TENANT_SCRIPTS)[1].get_heads()
    (location / "versions" / "9999_future.py").write_text(_FUTURE.replace("__HEAD__", head))
    scripts = scripts_at(location)
    async with engine.connect() as conn:
        current = await tenant_ddl(conn)
        future = await tenant_ddl(conn, scripts)
        await conn.rollback()
    assert current.heads == (head,) and future.heads == ("tfuture",)
    assert not any("labels" in s for s in current.statements)
    expected, *schemas = await _compare(engine, scripts)
    try:
        assert any(r[:2] == ("labels", "r") for r in expected["relations"])
        assert any(r[:3] == ("agents", "label_id", "bigint") for r in _named(expected))
        assert any(r[:2] == ("labels", "labels_touch") for r in expected["triggers"])
        assert [r[0] for r in expected["functions"]] == ["touch"]
        assert [r[0] for r in expected["views"]] == ["label_names"]
        assert "labels_id_seq" in [r[0] for r in expected["sequences"]]
        assert expected["comments"] == [("labels", "0", "labels of agents")]
        assert expected["settings"] == [("labels", '{"on": true}')]
        assert expected["alembic_version"] == ["tfuture"]
    finally:
        await _drop(engine, *schemas)


async def test_spares_are_made_only_when_a_rename_keeps_the_schema_whole(
    engine: AsyncEngine,
) -> None:
    """A spare schema is renamed into a tenant's (persistence/spare_schemas.py): only right
    when every mention of the schema in the DDL is a qualifier PostgreSQL resolves at
    once. Text that keeps the name (a function body, a comment, a row, another object's
    name) makes the DDL unfit for spares, and every registration sends it inline."""
    async with engine.connect() as conn:
        ddl = await tenant_ddl(conn)
        await conn.rollback()
    assert ddl.renamable
    t = ddl.template
    fine = (
        f"CREATE TABLE {t}.a (id int)",
        f"CREATE INDEX a_idx ON \"{t}\".a (id) WHERE note <> 'x'",
        f"CREATE VIEW {t}.v AS SELECT id FROM {t}.a",
        f"CREATE FUNCTION {t}.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    )
    assert migrate._renamable(t, fine)
    for bad in (
        f"CREATE FUNCTION {t}.f() RETURNS int LANGUAGE sql AS $$ SELECT id FROM {t}.a $$",
        f"CREATE FUNCTION {t}.g() RETURNS int LANGUAGE sql AS $b$ SELECT {t} $b$",
        f"COMMENT ON TABLE {t}.a IS 'in {t}'",
        f"INSERT INTO {t}.settings (key, value) VALUES ('schema', '\"{t}.a\"')",
        f"CREATE INDEX {t}_idx ON {t}.a (id)",
    ):
        assert not migrate._renamable(t, (*fine, bad)), bad
