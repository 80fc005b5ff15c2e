"""Tenant, User and Role types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import identity
from domain.rbac import Role as DomainRole
from schema.context import Info
from schema.fields import described
from schema.quotas import TenantQuota
from schema.records import from_record
from schema.usage import Usage

Role = strawberry.enum(DomainRole, name="Role")
TenantStatus = strawberry.enum(
    identity.TenantStatus,
    name="TenantStatus",
    description="SUSPENDED: the operator suspended the team; none of its credentials work.",
)


@strawberry.type
class Tenant:
    id: strawberry.ID
    name: str
    slug: str
    created_at: datetime
    status: TenantStatus  # type: ignore[valid-type]

    @described("The team's effective quotas (any role may read them).")
    async def quota(self, info: Info) -> TenantQuota:
        p = await info.context.principal()
        return TenantQuota.from_domain(await info.context.services.quotas.quota(p, self.id))

    @described("LLM usage of the current UTC day (what maxTokensPerDay counts).")
    async def usage_today(self, info: Info) -> Usage:
        p = await info.context.principal()
        return Usage.from_domain(await info.context.services.quotas.usage_today(p, self.id))

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
