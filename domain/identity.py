"""Tenants, users, tokens and API keys: the entities of the identity context."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain.errors import Forbidden
from domain.rbac import Action, Role, allows

#: `extensions.reason` of the FORBIDDEN every credential of a suspended tenant gets, and the
#: close reason of its WebSockets.
TENANT_SUSPENDED = "TENANT_SUSPENDED"


class TenantStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"  # by the operator: no request, run, schedule or delivery


@dataclass(slots=True)
class Tenant:
    id: str
    name: str
    slug: str
    schema_name: str
    created_at: datetime
    status: TenantStatus = TenantStatus.ACTIVE

    def require_active(self) -> None:
        """Every way in (token, API key, login, refresh) passes here."""
        if self.status is TenantStatus.SUSPENDED:
            raise tenant_suspended()


def tenant_suspended() -> Forbidden:
    return Forbidden("this team is suspended", extensions={"reason": TENANT_SUSPENDED})


@dataclass(slots=True)
class User:
    id: str
    tenant_id: str
    email: str
    password_hash: str
    role: Role
    active: bool
    created_at: datetime


@dataclass(slots=True)
class RefreshToken:
    id: str
    tenant_id: str
    user_id: str
    family_id: str
    token_hash: str
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None


@dataclass(slots=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    role: Role
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user (JWT) or an API key, always inside one tenant."""

    tenant_id: str
    tenant_schema: str
    role: Role
    user_id: str | None = None
    api_key_id: str | None = None
    session_id: str | None = None  # the login session of a user token (`sid`)
    expires_at: datetime | None = None  # when the credentials stop working by themselves
    actor_name: str | None = None  # the user's email or the API key's name (audit log)

    def revocation_keys(self) -> list[str]:
        """The names under which these credentials can be revoked (their tenant's too:
        suspending it ends them all)."""
        return [
            *revocation_keys(self.user_id, self.api_key_id, self.session_id),
            tenant_key(self.tenant_id),
        ]

    def can(self, action: Action) -> bool:
        return allows(self.role, action)

    def require(self, action: Action) -> None:
        if not self.can(action):
            raise Forbidden(f"role {self.role.value} may not {action.value.replace('_', ' ')}")


def revocation_keys(
    user_id: str | None, api_key_id: str | None, session_id: str | None
) -> list[str]:
    """The names under which credentials can be revoked (domain.ports.Revocation)."""
    keys = []
    if user_id:
        keys.append(f"u:{user_id}")
    if api_key_id:
        keys.append(f"k:{api_key_id}")
    if session_id:
        keys.append(f"s:{session_id}")
    return keys


def tenant_key(tenant_id: str) -> str:
    """The revocation name of every credential of a tenant (a tenant-wide revocation)."""
    return f"t:{tenant_id}"
