"""Tenant, User and Role types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import identity
from domain.rbac import Role as DomainRole
from schema.context import Info
from schema.records import from_record

Role = strawberry.enum(DomainRole, name="Role")


@strawberry.type
class Tenant:
    id: strawberry.ID
    name: str
    slug: str
    created_at: datetime

    @classmethod
    def from_domain(cls, t: identity.Tenant) -> Tenant:
        return from_record(cls, t)


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
        return from_record(cls, u)


@strawberry.input
class CreateUserInput:
    email: str
    password: str
    role: Role  # type: ignore[valid-type]
