"""Registration is one transaction: a failure leaves no half tenant."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from domain.auth import IdentityService
from persistence.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from server.security import Argon2Hasher, JwtCodec


class _FailingUsers:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def add(self, user: Any) -> None:
        raise RuntimeError("disk full (injected)")


class _FailAfterSchema(SqlUnitOfWork):
    def _attach_tenant_repositories(self, conn: Any) -> None:
        super()._attach_tenant_repositories(conn)
        self.users = _FailingUsers(self.users)  # type: ignore[assignment]


async def test_failed_registration_leaves_nothing(container: Any) -> None:
    db = container.db

    def factory(schema: str | None = None) -> SqlUnitOfWork:
        return _FailAfterSchema(db, schema)

    service = IdentityService(factory, Argon2Hasher(), JwtCodec("s" * 40, 60), 3600)
    # Spare schemas come and go in the background (persistence/spare_schemas.py): a
    # failed registration's claim is undone, and any other schema is compared.
    schemas = sa.text("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'spare\\_%'")
    async with db.connect() as conn:
        schemas_before = set((await conn.execute(schemas)).scalars())
    with pytest.raises(RuntimeError):
        await service.register("Half Corp", "half@example.com", "correct horse battery")
    async with db.connect() as conn:
        schemas_after = set((await conn.execute(schemas)).scalars())
        tenants = (
            await conn.execute(
                sa.text("SELECT count(*) FROM public.tenants WHERE name = 'Half Corp'")
            )
        ).scalar()
    assert tenants == 0
    assert schemas_after == schemas_before

    ok = IdentityService(SqlUnitOfWorkFactory(db), Argon2Hasher(), JwtCodec("s" * 40, 60), 3600)
    session = await ok.register("Half Corp", "half@example.com", "correct horse battery")
    async with db.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT schema_name FROM public.tenants WHERE id = :i"),
                {"i": session.user.tenant_id},
            )
        ).one()
        tables = (
            await conn.execute(
                sa.text("SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                {"s": row[0]},
            )
        ).scalar()
    assert tables and tables > 1


async def test_migrate_is_idempotent_and_covers_every_tenant(container: Any) -> None:
    from persistence.migrate import upgrade_all

    async with container.db.engine.begin() as conn:
        first = await upgrade_all(conn)
    async with container.db.engine.begin() as conn:
        second = await upgrade_all(conn)
    assert first == second and len(first) >= 1
