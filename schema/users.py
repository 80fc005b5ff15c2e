"""Tenant, User and Role types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import identity
from domain.rbac import Role as DomainRole
from schema.context import Info

Role = strawberry.enum(DomainRole, name="Role")


@strawberry.type
class Tenant:
    id: strawberry.ID
    name: str
    slug: str
    created_at: datetime

    @classmethod
    def from_domain(cls, t: identity.Tenant) -> Tenant:
        return cls(id=strawberry.ID(t.id), name=t.name, slug=t.slug, created_at=t.created_at)


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    role: Role  # type: ignore[valid-type]
    active: bool
    created_at: datetime
    tenant_id: strawberry.Private[str]

    @strawberry.field
    async def tenant(self, info: Info) -> Tenant:
        return Tenant.from_domain(await info.context.loaders.tenant.load(self.tenant_id))

    @classmethod
    def from_domain(cls, u: identity.User) -> User:
        return cls(
            id=strawberry.ID(u.id),
            email=u.email,
            role=u.role,
            active=u.active,
            created_at=u.created_at,
            tenant_id=u.tenant_id,
        )


@strawberry.input
class CreateUserInput:
    email: str
    password: str
    role: Role  # type: ignore[valid-type]
