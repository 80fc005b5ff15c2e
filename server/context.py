"""Per-request context: credentials, the lazily authenticated principal, the use cases
(`Services`, never the wiring container) and loaders; see schema.context.RequestContext."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from domain.errors import Unauthenticated
from domain.identity import Principal
from schema.context import ApiSettings, RequestContext, Services
from schema.loaders import Loaders


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


@dataclass
class Context:
    services: Services
    request: Any
    response: Any
    credentials: Credentials
    client_ip: str = "?"
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    connection_params: dict[str, Any] | None = None
    _principal: Principal | None = None
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
        if self._principal is None:
            self._principal = await authenticate(self.services, self.credentials)
        return self._principal

    async def rate_limit(self, name: str, *identifiers: str) -> None:
        await self.services.limiter.hit(name, self.client_ip, *identifiers)


if TYPE_CHECKING:  # mypy: Context offers what types and resolvers rely on
    _offers: type[RequestContext] = Context


async def authenticate(services: Services, creds: Credentials) -> Principal:
    if creds.api_key:
        return await services.identity.authenticate_api_key(creds.api_key)
    if creds.bearer:
        return await services.identity.authenticate_bearer(creds.bearer)
    raise Unauthenticated(
        "authentication required: send `Authorization: Bearer <token>` or `X-API-Key`"
    )
