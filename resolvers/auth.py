"""register, login, refreshToken, logout, and API keys."""

from __future__ import annotations

import strawberry

from schema.auth import ApiKey, ApiKeyPayload, AuthPayload, LoginInput, RegisterInput
from schema.context import Info
from schema.users import Role


async def register(info: Info, input: RegisterInput) -> AuthPayload:
    await info.context.rate_limit("register")
    session = await info.context.services.identity.register(
        input.tenant_name, input.email, input.password
    )
    return AuthPayload.from_domain(session)


async def login(info: Info, input: LoginInput) -> AuthPayload:
    # Per client address over all emails, then per account from any address: one address
    # cannot spray many accounts, many addresses cannot hammer one account.
    await info.context.rate_limit("login_ip")
    await info.context.services.limiter.hit("login", input.email.strip().lower()[:254])
    session = await info.context.services.identity.login(
        input.email, input.password, input.tenant_slug
    )
    return AuthPayload.from_domain(session)


async def refresh_token(info: Info, refresh_token: str) -> AuthPayload:
    await info.context.rate_limit("refresh")
    return AuthPayload.from_domain(await info.context.services.identity.refresh(refresh_token))


async def logout(info: Info, refresh_token: str) -> bool:
    return await info.context.services.identity.logout(refresh_token)


async def create_api_key(info: Info, name: str, role: Role) -> ApiKeyPayload:  # type: ignore[valid-type]
    principal = await info.context.principal()
    key, secret = await info.context.services.identity.create_api_key(principal, name, role)
    return ApiKeyPayload(id=strawberry.ID(key.id), name=key.name, role=key.role, secret=secret)


async def revoke_api_key(info: Info, id: strawberry.ID) -> bool:
    principal = await info.context.principal()
    return await info.context.services.identity.revoke_api_key(principal, id)


async def api_keys(info: Info) -> list[ApiKey]:
    principal = await info.context.principal()
    return [ApiKey.from_domain(k) for k in await info.context.services.identity.api_keys(principal)]
