"""Per-request context: credentials, the lazily authenticated principal, the use cases
(`Services`, never the wiring container) and loaders; see schema.context.RequestContext."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from domain.errors import Unauthenticated
from domain.identity import Principal
from schema.context import ApiSettings, RequestContext, Services
from schema.loaders import Loaders
from server.principal_cache import PrincipalCache, credential_key


@dataclass
class Credentials:
    bearer: str | None = None
    api_key: str | None = None

    @classmethod
    def from_headers(cls, headers: Any) -> Credentials:
        auth = headers.get("authorization") or ""
        return cls(bearer=_bearer(auth), api_key=headers.get("x-api-key") or None)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Credentials:
        lowered = {str(k).lower(): v for k, v in params.items() if isinstance(v, str)}
        return cls(
            bearer=_bearer(lowered.get("authorization", "")),
            api_key=lowered.get("x-api-key") or lowered.get("apikey") or None,
        )


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if value.strip():
        return value.strip()  # a malformed header still fails authentication, loudly
    return None


PRINCIPAL_MAX_AGE = 5.0  # seconds; a missed revocation signal is bounded by this


@dataclass
class Context:
    services: Services
    request: Any
    response: Any
    credentials: Credentials
    client_ip: str = "?"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connection_params: dict[str, Any] | None = None
    # How long an authenticated principal is trusted before the credentials are checked
    # again (a WebSocket lives for hours; revocations also end it at once, server/ws.py).
    # None pins it: a multiplexed group's own context, whose members are checked instead.
    principal_max_age: float | None = PRINCIPAL_MAX_AGE
    revoked: str | None = None  # why this connection's credentials stopped working
    # Principals shared with the process's other HTTP requests (server/principal_cache.py);
    # None checks the credentials themselves (WebSockets, which re-check on purpose).
    principal_cache: PrincipalCache | None = None
    _principal: Principal | None = None
    _principal_at: float = 0.0
    _loaders: Loaders | None = None

    @property
    def settings(self) -> ApiSettings:
        return self.services.settings

    @property
    def loaders(self) -> Loaders:
        if self._loaders is None:
            self._loaders = Loaders(self.services, self.principal)
        return self._loaders

    def reset_loaders(self) -> None:
        """Forget cached loads: a subscription calls this before each event it sends, so
        nested fields (nodeRuns, flow, ...) are read fresh for every event."""
        self._loaders = None

    async def principal(self) -> Principal:
        if self.revoked is not None:
            raise Unauthenticated(self.revoked)
        principal = self._principal
        if principal is None or self._stale(principal):
            principal = await self._authenticate()
            if self.revoked is not None:  # revoked while we were checking
                raise Unauthenticated(self.revoked)
            self.set_principal(principal)
        return principal

    async def _authenticate(self) -> Principal:
        cache, creds = self.principal_cache, self.credentials
        key = None
        if cache is not None and cache.enabled and not (creds.api_key and creds.bearer):
            if creds.api_key:
                key = credential_key("k", creds.api_key)
            elif creds.bearer:
                key = credential_key("b", creds.bearer)
        if cache is None or key is None:
            return await authenticate(self.services, creds)
        principal = cache.get(key)
        if principal is None:
            since = cache.generation()
            principal = await authenticate(self.services, creds)
            cache.put(key, principal, since)
        return principal

    def _stale(self, principal: Principal) -> bool:
        if self.principal_max_age is None:
            return False
        if time.monotonic() - self._principal_at > self.principal_max_age:
            return True
        expires = principal.expires_at
        return expires is not None and expires <= datetime.now(UTC)

    def set_principal(self, principal: Principal) -> None:
        self._principal = principal
        self._principal_at = time.monotonic()

    def expire_principal(self) -> None:
        """The next `principal()` checks the credentials again."""
        self._principal_at = float("-inf")

    @property
    def cached_principal(self) -> Principal | None:
        """The principal last authenticated, without checking anything."""
        return self._principal

    def revoke(self, reason: str) -> None:
        """From now on every operation of this context is UNAUTHENTICATED."""
        self.revoked = reason
        self._principal = None

    async def rate_limit(self, name: str, *identifiers: str) -> None:
        await self.services.limiter.hit(name, self.client_ip, *identifiers)


if TYPE_CHECKING:  # mypy: Context offers what types and resolvers rely on
    _offers: type[RequestContext] = Context


async def authenticate(services: Services, creds: Credentials) -> Principal:
    if creds.api_key and creds.bearer:
        # Never guess which one the caller meant (a key silently won before).
        raise Unauthenticated(
            "send either `Authorization: Bearer <token>` or `X-API-Key`, not both"
        )
    if creds.api_key:
        return await services.identity.authenticate_api_key(creds.api_key)
    if creds.bearer:
        return await services.identity.authenticate_bearer(creds.bearer)
    raise Unauthenticated(
        "authentication required: send `Authorization: Bearer <token>` or `X-API-Key`"
    )
