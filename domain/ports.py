"""Ports: what the domain needs from storage, crypto and messaging, as protocols."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from domain.identity import ApiKey, RefreshToken, Tenant, User

if TYPE_CHECKING:
    from domain.agents import Agent
    from domain.crews import Crew
    from domain.flows.service import Flow
    from domain.providers import LlmProvider
    from domain.tools import Tool
from domain.rbac import Role


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    tenant_id: str


T = TypeVar("T")
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[tuple[T, str]]  # (item, cursor)
    has_next_page: bool

    @property
    def end_cursor(self) -> str | None:
        return self.items[-1][1] if self.items else None


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...
    def verify(self, stored: str | None, password: str) -> bool: ...


class AccessTokens(Protocol):
    ttl_seconds: int

    def issue(self, user_id: str, tenant_id: str) -> str: ...
    def decode(self, token: str) -> AccessClaims: ...


class TenantRepository(Protocol):
    async def add(self, tenant: Tenant) -> None: ...
    async def get(self, tenant_id: str) -> Tenant | None: ...
    async def by_slug(self, slug: str) -> Tenant | None: ...
    async def slug_taken(self, slug: str) -> bool: ...
    async def create_schema(self, tenant: Tenant) -> None: ...


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...
    async def get(self, tenant_id: str, user_id: str) -> User | None: ...
    async def by_email(self, email: str, tenant_id: str | None = None) -> list[User]: ...
    async def update(self, user: User) -> None: ...
    async def page(self, tenant_id: str, first: int, after: str | None) -> Page[User]: ...
    async def count_admins(self, tenant_id: str) -> int: ...


class RefreshTokenRepository(Protocol):
    async def add(self, token: RefreshToken) -> None: ...
    async def by_hash_for_update(self, token_hash: str) -> RefreshToken | None: ...
    async def mark_used(self, token_id: str, at: datetime) -> None: ...
    async def revoke_family(self, family_id: str, at: datetime) -> None: ...
    async def revoke_user(self, user_id: str, at: datetime) -> None: ...


class ApiKeyRepository(Protocol):
    async def add(self, key: ApiKey) -> None: ...
    async def get(self, tenant_id: str, key_id: str) -> ApiKey | None: ...
    async def by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def revoke(self, key_id: str, at: datetime) -> None: ...
    async def list(self, tenant_id: str) -> list[ApiKey]: ...


class AuditLog(Protocol):
    async def record(
        self, tenant_id: str, actor: str | None, action: str, target: str | None = None
    ) -> None: ...


class UnitOfWork(Protocol):
    """One transaction. Public repositories always; tenant ones when opened for a tenant."""

    tenants: TenantRepository
    users: UserRepository
    refresh_tokens: RefreshTokenRepository
    api_keys: ApiKeyRepository
    audit: AuditLog

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def commit(self) -> None: ...


class UnitOfWorkFactory(Protocol):
    def __call__(self, tenant_schema: str | None = None) -> UnitOfWork: ...


__all__ = ["Role"]


class ResourceRepository(Protocol[E]):
    """What every tenant resource repository offers (ids are UUID strings)."""

    async def get(self, ident: str, *, for_update: bool = False) -> E | None: ...
    async def get_many(self, ids: Sequence[str]) -> dict[str, E]: ...
    async def existing_ids(self, ids: Sequence[str]) -> set[str]: ...
    async def page(self, first: int, after: str | None, **filters: object) -> Page[E]: ...
    async def add(self, entity: E) -> None: ...
    async def update(self, entity: E) -> None: ...
    async def delete(self, ident: str) -> None: ...
    async def name_taken(self, name: str, exclude: str | None = None) -> bool: ...
    async def referrers(self, ident: str) -> list[str]: ...


class FlowRepository(ResourceRepository["Flow"], Protocol):
    async def add_version(self, flow: Flow, created_by: str | None) -> None: ...
    async def get_version(self, flow_id: str, version: int) -> Flow | None: ...
    async def versions(self, flow_id: str) -> list[Flow]: ...
    async def set_refs(self, flow_id: str, refs: Any) -> None: ...


class TenantUnitOfWork(Protocol):
    """One transaction inside one tenant schema."""

    providers: ResourceRepository[LlmProvider]
    tools: ResourceRepository[Tool]
    agents: ResourceRepository[Agent]
    crews: ResourceRepository[Crew]
    flows: FlowRepository

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def commit(self) -> None: ...


class TenantUnitOfWorkFactory(Protocol):
    def __call__(self, tenant_schema: str) -> TenantUnitOfWork: ...
