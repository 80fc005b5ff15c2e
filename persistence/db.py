"""Engine and connections. A tenant connection maps the `tenant` placeholder
schema to the caller's schema with `schema_translate_map`; nothing touches
`search_path`, so pooled connections never leak a tenant."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from persistence.tables import TENANT

_SCHEMA_RE = re.compile(r"^tenant_[a-f0-9]{12}$")


def check_schema_name(name: str) -> str:
    if not _SCHEMA_RE.match(name):
        raise ValueError(f"not a tenant schema name: {name!r}")
    return name


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url = url
        # No pre-ping: it cost a round trip and ~2 ms of CPU per checkout. Connections are
        # recycled after half an hour instead, and a disconnect seen by any statement
        # invalidates every pooled connection opened before it (SQLAlchemy's default), so
        # after a PostgreSQL restart only the requests in flight fail (SERVICE_UNAVAILABLE).
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=20,
            pool_pre_ping=False,
            pool_recycle=1800,
            # The connection used last serves next: its prepared statements and type
            # codecs are warm, and connections a burst opened sit idle and go.
            pool_use_lifo=True,
            echo=echo,
        )
        self.pool_size = pool_size
        self._raw: Any = None
        event.listen(self.engine.sync_engine, "before_cursor_execute", _begin_before_writes)
        event.listen(self.engine.sync_engine.pool, "checkin", _restore_isolation)

    @asynccontextmanager
    async def connect(self, tenant_schema: str | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction (committed by the caller). Inside
        `request_scope` the request's own connection when no other unit of work of the
        request holds it (a pool checkout and return cost more than the query they serve),
        else one from the pool, as outside a request."""
        shared = _request_connection.get()
        if shared is not None and shared.available(self):
            async with shared.use(tenant_schema) as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            if tenant_schema is not None:
                await conn.execution_options(
                    schema_translate_map={TENANT: check_schema_name(tenant_schema)}
                )
            yield conn

    @asynccontextmanager
    async def request_scope(self) -> AsyncIterator[None]:
        """One HTTP request: its units of work take turns on one pooled connection,
        checked out at the first use and returned when the request ends."""
        shared = _RequestConnection(self)
        token = _request_connection.set(shared)
        try:
            yield
        finally:
            _request_connection.reset(token)
            await shared.close()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def raw(self) -> Any:
        """An asyncpg pool for the few hottest statements (execution events and node
        checkpoints, lease renewals: one autocommit statement each, so no BEGIN / COMMIT /
        pre-ping / reset round trips; see persistence/repositories/sql.py). Statements name
        their schema explicitly, validated with `check_schema_name`."""
        if self._raw is None:
            import asyncpg  # type: ignore[import-untyped]

            dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
            self._raw = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max(4, self.pool_size // 2),
                statement_cache_size=1024,
                reset=_no_reset,  # single-statement use: no session state to reset
                init=_json_codecs,
            )
        return self._raw

    async def dispose(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            await raw.close()
        await self.engine.dispose()


async def _no_reset(connection: Any) -> None:
    return None


async def _json_codecs(connection: Any) -> None:
    """jsonb as on SQLAlchemy's connections: JSON text in, decoded values out."""
    await connection.set_type_codec(
        "jsonb", encoder=str, decoder=json.loads, schema="pg_catalog", format="text"
    )


# Units of work read without a transaction and BEGIN before their first other statement.
# At READ COMMITTED every statement takes its own snapshot inside a transaction too, so
# reads lose nothing outside one, and a read-only unit of work (most of them) saves the
# BEGIN and ROLLBACK round trips. What must hold a lock or see the unit's own writes runs
# inside the transaction: anything not a plain SELECT (writes, DDL, savepoints, locking
# reads, advisory locks, sequences) begins it, and every later statement stays in it.
_DEFERRED_BEGIN = "crewgraph.deferred_begin"  # the isolation level to begin with
_IN_TRANSACTION = re.compile(
    r"\bFOR\s+(?:UPDATE|SHARE|NO\s+KEY|KEY\s+SHARE)\b|advisory|nextval|setval|set_config",
    re.IGNORECASE,
)


def plain_read(sql: str) -> bool:
    """A SELECT that takes no lock and changes nothing: fine outside a transaction."""
    return sql.lstrip()[:6].upper() == "SELECT" and _IN_TRANSACTION.search(sql) is None


def defer_begin(conn: AsyncConnection) -> None:
    """From now on `conn` reads without a transaction until its first other statement."""
    sync = conn.sync_connection
    if sync is None:
        return
    adapter = _adapter(conn)
    if adapter._transaction is not None or adapter.isolation_level == "autocommit":
        return
    sync.info[_DEFERRED_BEGIN] = adapter.isolation_level
    adapter.isolation_level = "autocommit"


def end_deferred_begin(conn: AsyncConnection) -> None:
    """`conn` as the pool expects it again (its isolation level; a no-op when unused)."""
    sync = conn.sync_connection
    if sync is None or sync.invalidated or sync.closed:
        return
    if _DEFERRED_BEGIN in sync.info:  # the level may be None: the server's default
        _adapter(conn).isolation_level = sync.info.pop(_DEFERRED_BEGIN)


def _restore_isolation(dbapi_connection: Any, record: Any) -> None:
    """No connection goes back to the pool reading outside transactions (a unit of work
    that ended without `end_deferred_begin`, e.g. on an invalidated connection)."""
    info = getattr(record, "info", None)
    if info and _DEFERRED_BEGIN in info:
        level = info.pop(_DEFERRED_BEGIN)
        if dbapi_connection is not None:
            dbapi_connection.isolation_level = level


def _adapter(conn: AsyncConnection) -> Any:
    assert conn.sync_connection is not None
    return conn.sync_connection.connection.dbapi_connection


def _begin_before_writes(
    conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
) -> None:
    info = conn.info
    if _DEFERRED_BEGIN not in info or (not executemany and plain_read(statement)):
        return
    # The driver sends BEGIN before this statement, as it does without deferring.
    conn.connection.dbapi_connection.isolation_level = info.pop(_DEFERRED_BEGIN)


class _RequestConnection:
    """The connection a request's units of work share, one at a time. Each use sets its
    own `schema_translate_map` (or none), ends its own transaction, and a use that failed
    gives the connection back to the pool, so nothing carries over from one unit of work
    to the next but the open socket. Tasks the request spawned see it closed once the
    request has ended and check out their own."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._conn: AsyncConnection | None = None
        self._busy = False
        self._closed = False

    def available(self, db: Database) -> bool:
        return db is self._db and not self._busy and not self._closed

    @asynccontextmanager
    async def use(self, tenant_schema: str | None) -> AsyncIterator[AsyncConnection]:
        self._busy = True  # set before the first await: no two units of work share it
        try:
            if self._conn is None:
                self._conn = await self._db.engine.connect()
            conn = self._conn
            translate = (
                None if tenant_schema is None else {TENANT: check_schema_name(tenant_schema)}
            )
            await conn.execution_options(schema_translate_map=translate)
            clean = False
            try:
                yield conn
                if conn.in_transaction():
                    await conn.rollback()
                # Held idle only while the pool has room: a request that kept its idle
                # connection while waiting for a second one could, with every connection
                # held that way, wait on the others forever.
                clean = not conn.invalidated and self._pool_has_room()
            finally:
                if not clean:
                    await self._discard()
        finally:
            self._busy = False
            if self._closed:
                await self._discard()

    def _pool_has_room(self) -> bool:
        pool: Any = self._db.engine.pool
        try:
            return bool(pool.checkedout() < pool.size())
        except AttributeError:  # a pool without a fixed size: never hold one idle
            return False

    async def close(self) -> None:
        self._closed = True
        if not self._busy:
            await self._discard()

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()  # back to the pool, which resets or replaces it
            except Exception:  # a dead connection must not fail the request
                with contextlib.suppress(Exception):
                    await conn.invalidate()


_request_connection: ContextVar[_RequestConnection | None] = ContextVar(
    "crewgraph_request_connection", default=None
)
