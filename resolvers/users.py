"""me, tenant, users and user management."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.context import Info
from schema.relay import Connection, connection
from schema.users import CreateUserInput, Role, Tenant, User


async def me(info: Info) -> User:
    principal = await info.context.principal()
    return User.from_domain(await info.context.services.identity.me(principal))


async def tenant(info: Info) -> Tenant:
    principal = await info.context.principal()
    return Tenant.from_domain(await info.context.loaders.tenant.load(principal.tenant_id))


async def users(info: Info, first: int | None = None, after: str | None = None) -> Connection[User]:
    principal = await info.context.principal()
    page = await info.context.services.identity.users(
        principal, page_size(first, info.context.settings.page_size_max), after
    )
    return connection(page, User.from_domain)


async def create_user(info: Info, input: CreateUserInput) -> User:
    principal = await info.context.principal()
    user = await info.context.services.identity.create_user(
        principal, input.email, input.password, input.role
    )
    return User.from_domain(user)


async def update_user_role(info: Info, id: strawberry.ID, role: Role) -> User:  # type: ignore[valid-type]
    principal = await info.context.principal()
    return User.from_domain(
        await info.context.services.identity.update_user_role(principal, id, role)
    )


async def deactivate_user(info: Info, id: strawberry.ID) -> User:
    principal = await info.context.principal()
    return User.from_domain(await info.context.services.identity.deactivate_user(principal, id))
