"""Ports: what the domain needs from storage, crypto and messaging, as protocols."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from domain.identity import ApiKey, RefreshToken, Tenant, User, revocation_keys, tenant_key

if TYPE_CHECKING:
    from domain.agents import Agent
    from domain.crews import Crew
    from domain.executions.ports import ExecutionRepository
    from domain.flows.service import Flow
    from domain.providers import LlmProvider
    from domain.tools import Tool


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    tenant_id: str
    token_id: str | None = None  # `jti`
    session_id: str | None = None  # `sid`: the refresh-token family the token came from
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Revocation:
    """Credentials that stop working now: every open connection holding one of them ends.

    Exactly one scope is set besides the tenant: a user (deactivation, role change), an
    API key, a session (logout, refresh-token reuse: every access token of it), or the
    whole tenant (`tenant_wide`: suspension, every credential of the tenant)."""

    tenant_id: str
    user_id: str | None = None
    api_key_id: str | None = None
    session_id: str | None = None
    reason: str = "credentials revoked"
    tenant_wide: bool = False

    def keys(self) -> list[str]:
        if self.tenant_wide:
            return [tenant_key(self.tenant_id)]
        return revocation_keys(self.user_id, self.api_key_id, self.session_id)


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
    # Async: hashing is deliberately slow CPU work and must stay off the event loop.
    async def hash(self, password: str) -> str: ...
    async def verify(self, stored: str | None, password: str) -> bool: ...


class AccessTokens(Protocol):
    ttl_seconds: int

    def issue(self, user_id: str, tenant_id: str, session_id: str | None = None) -> str: ...
    def decode(self, token: str) -> AccessClaims: ...


class CredentialRevocations(Protocol):
    """Revocations reaching every API process at once (and a deny-list for sessions)."""

    async def announce(self, revocation: Revocation) -> None:
        """Tell every API process; their connections holding the credentials end."""
        ...

    async def deny(self, key: str, ttl_seconds: int) -> None:
        """Refuse credentials named `key` (see `revocation_keys`) for `ttl_seconds`."""
        ...

    async def denied(self, keys: Sequence[str]) -> bool:
        """Whether any of `keys` is on the deny-list."""
        ...


class TenantRepository(Protocol):
    async def add(self, tenant: Tenant) -> None: ...
    async def get(self, tenant_id: str) -> Tenant | None: ...
    async def by_slug(self, slug: str) -> Tenant | None: ...
    async def slug_taken(self, slug: str) -> bool: ...
    async def all(self) -> list[Tenant]: ...
    async def create_schema(self, tenant: Tenant) -> None: ...


class UserRepository(Protocol):
    async def add(self, user: User) -> None: ...
    async def get(self, tenant_id: str, user_id: str) -> User | None: ...
    async def by_email(self, email: str, tenant_id: str | None = None) -> list[User]: ...
    async def update(self, user: User) -> None: ...
    async def page(self, tenant_id: str, first: int, after: str | None) -> Page[User]: ...
    async def count_admins(self, tenant_id: str) -> int:
        """Active admins of the tenant, counted after locking the tenant row until the
        transaction ends, so concurrent last-admin checks of one tenant run one at a time."""
        ...


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


class RateLimiter(Protocol):
    async def hit(self, name: str, *identifiers: str) -> None:
        """Count one `name` attempt by `identifiers`; raises `RateLimited` over the limit."""
        ...


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


class UnitOfWork(Protocol):
    """One transaction: the one unit-of-work port of every use case.

    The public repositories are always there; the tenant ones (providers ... executions)
    only when the unit of work was opened for a tenant schema (`factory(schema)`).
    Read-only properties, so adapters may expose their own repository classes.
    """

    @property
    def tenants(self) -> TenantRepository: ...
    @property
    def users(self) -> UserRepository: ...
    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...
    @property
    def api_keys(self) -> ApiKeyRepository: ...
    @property
    def providers(self) -> ResourceRepository[LlmProvider]: ...
    @property
    def tools(self) -> ResourceRepository[Tool]: ...
    @property
    def agents(self) -> ResourceRepository[Agent]: ...
    @property
    def crews(self) -> ResourceRepository[Crew]: ...
    @property
    def flows(self) -> FlowRepository: ...
    @property
    def executions(self) -> ExecutionRepository: ...

    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    async def commit(self) -> None: ...
    async def existing_ids(self, wanted: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
        """Which of the ids exist, per tenant repository named like its property above
        (`{"agents": [...], "tools": [...]}`), all in one round trip."""
        ...


class UnitOfWorkFactory(Protocol):
    """Opens a unit of work: on the public schema, or (with a schema) for one tenant."""

    def __call__(self, tenant_schema: str | None = None) -> UnitOfWork: ...


# The names the tenant use cases import; the same port.
TenantUnitOfWork = UnitOfWork
TenantUnitOfWorkFactory = UnitOfWorkFactory
