"""How the execution repositories run SQL: asyncpg statements, on either kind of connection.

Executions are the hot path (every event, every node checkpoint, every lease renewal), so
their SQL is written once, as asyncpg text (`$1` parameters, the tenant schema named
explicitly), and runs unchanged on:

- `PoolStatements`: the raw asyncpg pool (`Database.raw`): one autocommit statement per
  call, no BEGIN / COMMIT / pre-ping / reset round trips; for the per-event writes;
- `ConnectionStatements`: a SQLAlchemy connection (`exec_driver_sql`, the same driver),
  inside its transaction; for the unit of work and the multi-statement lease
  transactions, which stay on the SQLAlchemy pool so a burst of claims waiting on a
  tenant's lock never starves the event writes of running executions.

jsonb behaves the same on both: parameters are JSON text (`execution_rows.json_text`),
results come back decoded (SQLAlchemy's codec; `Database.raw` installs the same one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import Database, check_schema_name

Row = Mapping[Any, Any]


@lru_cache(maxsize=4096)
def in_schema(template: str, schema: str) -> str:
    """`template` with `{s}` naming the (validated) tenant schema."""
    return template.format(s=f'"{check_schema_name(schema)}"')


class Statements(Protocol):
    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...
    async def execute(self, sql: str, *args: Any) -> None: ...


class PoolStatements:
    """One autocommit statement per call on the raw asyncpg pool."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        pool = await self._db.raw()
        rows: Sequence[Row] = await pool.fetch(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        pool = await self._db.raw()
        row: Row | None = await pool.fetchrow(sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        pool = await self._db.raw()
        return await pool.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> None:
        pool = await self._db.raw()
        await pool.execute(sql, *args)


class ConnectionStatements:
    """Statements on a SQLAlchemy connection, inside its current transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def fetch(self, sql: str, *args: Any) -> Sequence[Row]:
        return (await self.conn.exec_driver_sql(sql, args)).mappings().all()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return (await self.conn.exec_driver_sql(sql, args)).mappings().first()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return (await self.conn.exec_driver_sql(sql, args)).scalar()

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.exec_driver_sql(sql, args)
