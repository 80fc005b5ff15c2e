"""LLM providers: where models are reached, with API keys stored encrypted."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.errors import NotFound
from domain.identity import Principal
from domain.ports import Page, TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import ResourceService, check_version, duplicate_name, require_id
from domain.secrets import Sealed, SecretBox
from domain.validation import Checker

_PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,49}$")


@dataclass(slots=True)
class LlmProvider:
    id: str
    name: str
    provider: str
    model: str
    base_url: str | None
    api_key: Sealed | None
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def has_api_key(self) -> bool:
        return self.api_key is not None


@dataclass(frozen=True, slots=True)
class ProviderInput:
    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key: str | None = None


def _validate(data: ProviderInput) -> ProviderInput:
    check = Checker("input.")
    name = check.text("name", data.name) or ""
    provider = (check.text("provider", data.provider, max_len=50) or "").lower()
    if provider and not _PROVIDER_RE.match(provider):
        check.fail("provider", "must be a LiteLLM provider name like openai, anthropic, ollama")
    model = check.text("model", data.model, max_len=200) or ""
    base_url = check.text("baseUrl", data.base_url, required=False, max_len=2000) or None
    if base_url and not re.match(r"^https?://[^\s/$.?#][^\s]*$", base_url):
        check.fail("baseUrl", "must be an http(s) URL")
    if data.api_key is not None and len(data.api_key) > 4096:
        check.fail("apiKey", "must be at most 4096 characters")
    check.raise_if_any()
    return ProviderInput(name, provider, model, base_url, data.api_key)


def _context(provider_id: str, tenant_id: str) -> str:
    """Bound into the ciphertext: a key copied to another row or tenant fails to open."""
    return f"llm_provider:{tenant_id}:{provider_id}"


class ProviderService(ResourceService[LlmProvider]):
    kind = "LLM provider"
    repo_attr = "providers"
    write_action = Action.MANAGE_PROVIDERS

    def __init__(self, uow: TenantUnitOfWorkFactory, box: SecretBox) -> None:
        super().__init__(uow)
        self._box = box

    async def list(self, p: Principal, first: int, after: str | None) -> Page[LlmProvider]:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.providers.page(first, after)

    async def create(self, p: Principal, data: ProviderInput) -> LlmProvider:
        p.require(Action.MANAGE_PROVIDERS)
        data = _validate(data)
        now = datetime.now(UTC)
        ident = str(uuid.uuid4())
        sealed = (
            self._box.seal(data.api_key, _context(ident, p.tenant_id)) if data.api_key else None
        )
        provider = LlmProvider(
            ident, data.name, data.provider, data.model, data.base_url, sealed, 1, now, now
        )
        async with self._uow(p.tenant_schema) as uow:
            if await uow.providers.name_taken(provider.name):
                raise duplicate_name("LLM provider", provider.name)
            await uow.providers.add(provider)
            await uow.commit()
        return provider

    async def update(
        self, p: Principal, ident: str, data: ProviderInput, expected_version: int | None = None
    ) -> LlmProvider:
        """`apiKey` null keeps the stored key; an empty string removes it."""
        p.require(Action.MANAGE_PROVIDERS)
        data = _validate(data)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.providers.get(require_id("LLM provider", ident), for_update=True)
            if current is None:
                raise NotFound("LLM provider", ident)
            check_version("LLM provider", current.version, expected_version)
            if await uow.providers.name_taken(data.name, exclude=ident):
                raise duplicate_name("LLM provider", data.name)
            current.name, current.provider, current.model = data.name, data.provider, data.model
            current.base_url = data.base_url
            if data.api_key is not None:
                current.api_key = (
                    self._box.seal(data.api_key, _context(ident, p.tenant_id))
                    if data.api_key
                    else None
                )
            current.version += 1
            current.updated_at = datetime.now(UTC)
            await uow.providers.update(current)
            await uow.commit()
        return current

    def reveal_key(self, p: Principal, provider: LlmProvider) -> str | None:
        """For runtime adapters only; never reaches an API response or a log."""
        if provider.api_key is None:
            return None
        return self._box.open(provider.api_key, _context(provider.id, p.tenant_id))


async def rotate_keys(
    uow: TenantUnitOfWorkFactory, box: SecretBox, tenants: list[tuple[str, str]]
) -> int:
    """Re-encrypt every stored API key under the current master key.

    `tenants` are (tenant id, schema) pairs. Each tenant is one transaction, so a
    failure leaves every key readable (old key ids stay valid until re-sealed)."""
    rotated = 0
    for tenant_id, schema in tenants:
        async with uow(schema) as tx:
            repo: Any = tx.providers
            for provider_id, sealed in await repo.sealed_keys():
                if sealed.key_id == box.current_key_id:
                    continue
                context = _context(provider_id, tenant_id)
                await repo.store_key(provider_id, box.seal(box.open(sealed, context), context))
                rotated += 1
            await tx.commit()
    return rotated
