"""The unit of work: one connection, one transaction, the repositories on it."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import Database
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
        self.webhooks = SqlWebhooks(conn)

    async def commit(self) -> None:
        await self.conn.commit()

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
            assert self._cm is not None
            await self._cm.__aexit__(exc_type, exc, tb)


class SqlUnitOfWorkFactory:
    def __init__(self, db: Database) -> None:
        self._db = db

    def __call__(self, tenant_schema: str | None = None) -> SqlUnitOfWork:
        return SqlUnitOfWork(self._db, tenant_schema)
