"""Sessions and API keys."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import identity
from domain.auth import Session
from schema.records import from_record
from schema.users import Role, User


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    user: User

    @classmethod
    def from_domain(cls, s: Session) -> AuthPayload:
        return cls(
            access_token=s.access_token,
            refresh_token=s.refresh_token,
            expires_in=s.expires_in,
            user=User.from_domain(s.user),
        )


@strawberry.type(description="The secret is shown once; only its hash is stored.")
class ApiKeyPayload:
    id: strawberry.ID
    name: str
    role: Role  # type: ignore[valid-type]
    secret: str


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    role: Role  # type: ignore[valid-type]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_domain(cls, k: identity.ApiKey) -> ApiKey:
        return from_record(cls, k)


@strawberry.input
class RegisterInput:
    tenant_name: str
    email: str
    password: str


@strawberry.input
class LoginInput:
    email: str
    password: str
    tenant_slug: str | None = None
