"""Engine and connections. A tenant connection maps the `tenant` placeholder
schema to the caller's schema with `schema_translate_map`; nothing touches
`search_path`, so pooled connections never leak a tenant."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True, echo=echo
        )
        self.pool_size = pool_size
        self._raw: Any = None

    @asynccontextmanager
    async def connect(self, tenant_schema: str | None = None) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction (committed by the caller)."""
        async with self.engine.connect() as conn:
            if tenant_schema is not None:
                await conn.execution_options(
                    schema_translate_map={TENANT: check_schema_name(tenant_schema)}
                )
            yield conn

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
