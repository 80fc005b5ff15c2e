"""Repositories of the public schema: tenants, users, tokens, API keys, audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.identity import ApiKey, RefreshToken, Tenant, TenantStatus, User
from domain.ports import Page
from domain.rbac import Role
from persistence import tables as t
from persistence.migrate import provision_tenant
from persistence.pagination import paginate


def _tenant(r: Any) -> Tenant:
    return Tenant(str(r.id), r.name, r.slug, r.schema_name, r.created_at, TenantStatus(r.status))


def _user(r: Any) -> User:
    return User(
        str(r.id), str(r.tenant_id), r.email, r.password_hash, Role(r.role), r.active, r.created_at
    )


def _token(r: Any) -> RefreshToken:
    return RefreshToken(
        str(r.id),
        str(r.tenant_id),
        str(r.user_id),
        str(r.family_id),
        r.token_hash,
        r.expires_at,
        r.used_at,
        r.revoked_at,
    )


def _key(r: Any) -> ApiKey:
    return ApiKey(
        str(r.id), str(r.tenant_id), r.name, Role(r.role), r.key_hash, r.created_at, r.revoked_at
    )


class SqlTenants:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, tenant: Tenant) -> None:
        await self._conn.execute(
            t.tenants.insert().values(
                id=tenant.id,
                name=tenant.name,
                slug=tenant.slug,
                schema_name=tenant.schema_name,
                created_at=tenant.created_at,
            )
        )

    async def get(self, tenant_id: str) -> Tenant | None:
        row = (
            await self._conn.execute(t.tenants.select().where(t.tenants.c.id == tenant_id))
        ).first()
        return _tenant(row) if row else None

    async def by_slug(self, slug: str) -> Tenant | None:
        row = (await self._conn.execute(t.tenants.select().where(t.tenants.c.slug == slug))).first()
        return _tenant(row) if row else None

    async def slug_taken(self, slug: str) -> bool:
        return await self.by_slug(slug) is not None

    async def all(self) -> list[Tenant]:
        rows = await self._conn.execute(t.tenants.select().order_by(t.tenants.c.created_at))
        return [_tenant(r) for r in rows]

    async def create_schema(self, tenant: Tenant) -> None:
        # A spare schema at the head renamed, else the rendered head DDL in one round trip,
        # not Alembic step by step (see migrate.py).
        await provision_tenant(self._conn, tenant.schema_name)


class SqlUsers:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, user: User) -> None:
        await self._conn.execute(
            t.users.insert().values(
                id=user.id,
                tenant_id=user.tenant_id,
                email=user.email,
                password_hash=user.password_hash,
                role=user.role.value,
                active=user.active,
                created_at=user.created_at,
            )
        )

    async def get(self, tenant_id: str, user_id: str) -> User | None:
        stmt = t.users.select().where(t.users.c.id == user_id, t.users.c.tenant_id == tenant_id)
        row = (await self._conn.execute(stmt)).first()
        return _user(row) if row else None

    async def by_email(self, email: str, tenant_id: str | None = None) -> list[User]:
        stmt = t.users.select().where(t.users.c.email == email)
        if tenant_id is not None:
            stmt = stmt.where(t.users.c.tenant_id == tenant_id)
        return [_user(r) for r in await self._conn.execute(stmt.order_by(t.users.c.created_at))]

    async def update(self, user: User) -> None:
        await self._conn.execute(
            t.users.update()
            .where(t.users.c.id == user.id, t.users.c.tenant_id == user.tenant_id)
            .values(role=user.role.value, active=user.active, password_hash=user.password_hash)
        )

    async def page(self, tenant_id: str, first: int, after: str | None) -> Page[User]:
        stmt = t.users.select().where(t.users.c.tenant_id == tenant_id)
        return await paginate(
            self._conn, stmt, t.users.c.created_at, t.users.c.id, first, after, _user
        )

    async def count_admins(self, tenant_id: str) -> int:
        # Serialise last-admin checks per tenant: the second waits for the first to commit
        # and then counts what it left (READ COMMITTED takes a fresh snapshot per statement).
        # FOR NO KEY UPDATE does not block inserts of rows referencing the tenant.
        lock = (
            sa.select(t.tenants.c.id)
            .where(t.tenants.c.id == tenant_id)
            .with_for_update(key_share=True)
        )
        await self._conn.execute(lock)
        stmt = sa.select(sa.func.count()).where(
            t.users.c.tenant_id == tenant_id,
            t.users.c.role == Role.ADMIN.value,
            t.users.c.active.is_(True),
        )
        return int((await self._conn.execute(stmt)).scalar_one())


class SqlRefreshTokens:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, token: RefreshToken) -> None:
        await self._conn.execute(
            t.refresh_tokens.insert().values(
                id=token.id,
                tenant_id=token.tenant_id,
                user_id=token.user_id,
                family_id=token.family_id,
                token_hash=token.token_hash,
                expires_at=token.expires_at,
            )
        )

    async def by_hash_for_update(self, token_hash: str) -> RefreshToken | None:
        stmt = (
            t.refresh_tokens.select()
            .where(t.refresh_tokens.c.token_hash == token_hash)
            .with_for_update()
        )
        row = (await self._conn.execute(stmt)).first()
        return _token(row) if row else None

    async def mark_used(self, token_id: str, at: datetime) -> None:
        await self._conn.execute(
            t.refresh_tokens.update().where(t.refresh_tokens.c.id == token_id).values(used_at=at)
        )

    async def revoke_family(self, family_id: str, at: datetime) -> None:
        await self._conn.execute(
            t.refresh_tokens.update()
            .where(
                t.refresh_tokens.c.family_id == family_id, t.refresh_tokens.c.revoked_at.is_(None)
            )
            .values(revoked_at=at)
        )

    async def revoke_user(self, user_id: str, at: datetime) -> None:
        await self._conn.execute(
            t.refresh_tokens.update()
            .where(t.refresh_tokens.c.user_id == user_id, t.refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )


class SqlApiKeys:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, key: ApiKey) -> None:
        await self._conn.execute(
            t.api_keys.insert().values(
                id=key.id,
                tenant_id=key.tenant_id,
                name=key.name,
                role=key.role.value,
                key_hash=key.key_hash,
                created_at=key.created_at,
            )
        )

    async def get(self, tenant_id: str, key_id: str) -> ApiKey | None:
        stmt = t.api_keys.select().where(
            t.api_keys.c.id == key_id, t.api_keys.c.tenant_id == tenant_id
        )
        row = (await self._conn.execute(stmt)).first()
        return _key(row) if row else None

    async def by_hash(self, key_hash: str) -> ApiKey | None:
        row = (
            await self._conn.execute(t.api_keys.select().where(t.api_keys.c.key_hash == key_hash))
        ).first()
        return _key(row) if row else None

    async def revoke(self, key_id: str, at: datetime) -> None:
        await self._conn.execute(
            t.api_keys.update().where(t.api_keys.c.id == key_id).values(revoked_at=at)
        )

    async def list(self, tenant_id: str) -> list[ApiKey]:
        stmt = (
            t.api_keys.select()
            .where(t.api_keys.c.tenant_id == tenant_id)
            .order_by(t.api_keys.c.created_at)
        )
        return [_key(r) for r in await self._conn.execute(stmt)]
