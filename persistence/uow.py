"""The unit of work: one connection, one transaction, the repositories on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from persistence.db import Database, defer_begin, end_deferred_begin
from persistence.repositories.executions import SqlExecutions
from persistence.repositories.identity import (
    SqlApiKeys,
    SqlRefreshTokens,
    SqlTenants,
    SqlUsers,
)
from persistence.repositories.resources import (
    SqlAgents,
    SqlCrews,
    SqlFlows,
    SqlProviders,
    SqlTools,
)
from persistence.repositories.schedules import SqlSchedules
from persistence.repositories.webhooks import SqlWebhooks


class SqlUnitOfWork:
    """`domain.ports.UnitOfWork` on one connection and transaction.

    Rolls back unless `commit()` was called, so a failure never leaves a partial write.
    """

    def __init__(self, db: Database, tenant_schema: str | None = None) -> None:
        self._db = db
        self._schema = tenant_schema
        self._cm: AbstractAsyncContextManager[AsyncConnection] | None = None
        self.conn: AsyncConnection

    async def __aenter__(self) -> Self:
        self._cm = self._db.connect(self._schema)
        self.conn = await self._cm.__aenter__()
        await self.conn.begin()
        defer_begin(self.conn)  # reads need no BEGIN / ROLLBACK (persistence/db.py)
        c = self.conn
        self.tenants = SqlTenants(c)
        self.users = SqlUsers(c)
        self.refresh_tokens = SqlRefreshTokens(c)
        self.api_keys = SqlApiKeys(c)
        self._attach_tenant_repositories(c)
        return self

    def _attach_tenant_repositories(self, conn: AsyncConnection) -> None:
        if self._schema is None:
            return  # a public unit of work has no tenant repositories
        self.providers = SqlProviders(conn)
        self.tools = SqlTools(conn)
        self.agents = SqlAgents(conn)
        self.crews = SqlCrews(conn)
        self.flows = SqlFlows(conn)
        self.executions = SqlExecutions(conn, self._schema)
        self.schedules = SqlSchedules(conn, self._schema)
        self.webhooks = SqlWebhooks(conn, self._schema)

    async def commit(self) -> None:
        await self.conn.commit()

    async def existing_ids(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
        parts: list[Any] = []
        for attr, ids in wanted.items():
            repo = getattr(self, attr)
            valid = [i for i in dict.fromkeys(ids) if is_uuid(i)]
            if valid:
                parts.append(repo.existing_ids_statement(attr, valid))
        found: dict[str, set[str]] = {attr: set() for attr in wanted}
        if parts:
            # Typed loosely: mypy 2.4 crashes inferring union_all's generic row type here.
            stmt: Any = parts[0] if len(parts) == 1 else sa.union_all(*parts)
            for attr, ident in await self.conn.execute(stmt):
                found[attr].add(str(ident))
        return found

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.conn.in_transaction():
                await self.conn.rollback()
        finally:
            end_deferred_begin(self.conn)
            assert self._cm is not None
            await self._cm.__aexit__(exc_type, exc, tb)


class SqlUnitOfWorkFactory:
    def __init__(self, db: Database) -> None:
        self._db = db

    def __call__(self, tenant_schema: str | None = None) -> SqlUnitOfWork:
        return SqlUnitOfWork(self._db, tenant_schema)
