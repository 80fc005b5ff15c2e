"""LLM providers: where models are reached, with API keys stored encrypted."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from domain.audit import (
    NO_AUDIT,
    PROVIDER_CREATED,
    PROVIDER_DELETED,
    PROVIDER_UPDATED,
    AuditRecorder,
)
from domain.egress import EgressPolicy, EgressRefused
from domain.errors import BadUserInput, NotFound
from domain.identity import Principal
from domain.llm_provider_names import LITELLM_PROVIDERS
from domain.ports import Page, TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import (
    ResourceService,
    check_version,
    duplicate_name,
    missing_references,
    not_found_refs,
    require_id,
)
from domain.secrets import Sealed, SecretBox
from domain.validation import Checker

_PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,49}$")
# Keys are sent in an HTTP header: visible ASCII only. Anything else would fail at call
# time with an error that some HTTP stacks word with the header's value, i.e. the key.
_API_KEY_RE = re.compile(r"[\x21-\x7e]+")
# A base URL that means "this server's own scripted model", resolved at call time so a
# restart on another host or port never breaks the provider.
LOCAL_BASE_URL = "crewgraph:local"
LOCAL_PROVIDER_NAME = "Local (scripted)"
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 600.0
DEFAULT_MAX_RETRIES = 1
MAX_RETRIES = 10
MAX_FALLBACKS = 5


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
    # Tried in order when this provider times out, is rate-limited or fails (one level).
    fallback_ids: list[str] = field(default_factory=list)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES

    @property
    def has_api_key(self) -> bool:
        return self.api_key is not None

    @property
    def is_local(self) -> bool:
        return self.base_url == LOCAL_BASE_URL


@dataclass(frozen=True, slots=True)
class ProviderInput:
    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key: str | None = None
    # None keeps the stored value on update (the defaults on create); [] clears the list.
    fallback_provider_ids: Sequence[str] | None = None
    timeout_seconds: float | None = None
    max_retries: int | None = None


def _validate(data: ProviderInput) -> ProviderInput:
    check = Checker("input.")
    name = check.text("name", data.name) or ""
    provider = (check.text("provider", data.provider, max_len=50) or "").lower()
    if provider and not _PROVIDER_RE.match(provider):
        check.fail("provider", "must be a LiteLLM provider name like openai, anthropic, ollama")
    elif provider and provider not in LITELLM_PROVIDERS:
        check.fail(
            "provider",
            f"unknown provider {provider!r}: LiteLLM knows openai, anthropic, ollama, "
            "hosted_vllm, gemini, ... (an OpenAI-compatible server is openai with a baseUrl)",
        )
    model = check.text("model", data.model, max_len=200) or ""
    base_url = check.text("baseUrl", data.base_url, required=False, max_len=2000) or None
    if (
        base_url
        and base_url != LOCAL_BASE_URL
        and not re.match(r"^https?://[^\s/$.?#][^\s]*$", base_url)
    ):
        check.fail("baseUrl", f"must be an http(s) URL (or {LOCAL_BASE_URL!r})")
    # Surrounding whitespace is a paste accident: dropped (all blank = no key).
    api_key = data.api_key.strip() if data.api_key is not None else None
    if api_key is not None and len(api_key) > 4096:
        check.fail("apiKey", "must be at most 4096 characters")
    elif api_key and not _API_KEY_RE.fullmatch(api_key):
        check.fail("apiKey", "must be printable ASCII without spaces or line breaks")
    timeout = data.timeout_seconds
    if timeout is not None and not (0 < timeout <= MAX_TIMEOUT_SECONDS):
        check.fail("timeoutSeconds", f"must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g}")
    if data.max_retries is not None and not (0 <= data.max_retries <= MAX_RETRIES):
        check.fail("maxRetries", f"must be between 0 and {MAX_RETRIES}")
    fallbacks = data.fallback_provider_ids
    if fallbacks is not None:
        if len(fallbacks) > MAX_FALLBACKS:
            check.fail("fallbackProviderIds", f"must list at most {MAX_FALLBACKS} providers")
        if len(set(fallbacks)) != len(fallbacks):
            check.fail("fallbackProviderIds", "must not list a provider twice")
    check.raise_if_any()
    return ProviderInput(
        name,
        provider,
        model,
        base_url,
        api_key,
        list(fallbacks) if fallbacks is not None else None,
        timeout,
        data.max_retries,
    )


_FALLBACKS = "input.fallbackProviderIds"


async def _check_fallbacks(repo: Any, ident: str, fallbacks: Sequence[str]) -> None:
    """One level, no self-reference, no cycle; unknown (or foreign) ids are NOT_FOUND."""
    if not fallbacks:
        return
    if ident in fallbacks:
        raise BadUserInput(
            "an LLM provider cannot be its own fallback",
            {_FALLBACKS: "must not contain the provider itself"},
        )
    found: dict[str, LlmProvider] = await repo.get_many(list(fallbacks))
    missing = missing_references("LLM provider", list(fallbacks), set(found))
    if missing:
        raise not_found_refs("LLM provider", _FALLBACKS, missing)
    for fid in fallbacks:
        fallback = found[fid]
        if ident in fallback.fallback_ids:
            raise BadUserInput(
                f"fallback cycle: {ident} -> {fid} -> {ident}",
                {_FALLBACKS: f"{fallback.name!r} already falls back to this provider"},
            )
        if fallback.fallback_ids:
            raise BadUserInput(
                f"LLM provider {fallback.name!r} has fallbacks of its own; fallbacks are "
                "one level deep",
                {_FALLBACKS: f"{fallback.name!r} has fallbacks of its own"},
            )
    users = await repo.fallback_users(ident)
    if users:
        raise BadUserInput(
            "this LLM provider is a fallback of "
            + ", ".join(repr(u) for u in users)
            + "; a fallback cannot have fallbacks (one level)",
            {_FALLBACKS: "a provider used as a fallback cannot have fallbacks"},
        )


def _context(provider_id: str, tenant_id: str) -> str:
    """Bound into the ciphertext: a key copied to another row or tenant fails to open."""
    return f"llm_provider:{tenant_id}:{provider_id}"


class ProviderService(ResourceService[LlmProvider]):
    kind = "LLM provider"
    repo_attr = "providers"
    write_action = Action.MANAGE_PROVIDERS
    audit_deleted = PROVIDER_DELETED

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        box: SecretBox,
        *,
        egress: EgressPolicy | None = None,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        super().__init__(uow, audit)
        self._box = box
        # What can be judged without DNS is refused when saved; the call-time check in the
        # runtime adapter (after resolving the name) is the one that counts.
        self._egress = egress or EgressPolicy()

    def _check_egress(self, data: ProviderInput) -> None:
        if not data.base_url or data.base_url == LOCAL_BASE_URL:
            return
        try:
            self._egress.check_url(data.base_url)
        except EgressRefused as refused:
            raise BadUserInput(
                f"baseUrl refused by the egress policy: {refused}",
                {"input.baseUrl": f"egress refused: {refused}"},
            ) from None

    async def list(self, p: Principal, first: int, after: str | None) -> Page[LlmProvider]:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.providers.page(first, after)

    async def create(self, p: Principal, data: ProviderInput) -> LlmProvider:
        p.require(Action.MANAGE_PROVIDERS)
        data = _validate(data)
        self._check_egress(data)
        now = datetime.now(UTC)
        ident = str(uuid.uuid4())
        sealed = (
            self._box.seal(data.api_key, _context(ident, p.tenant_id)) if data.api_key else None
        )
        provider = LlmProvider(
            ident,
            data.name,
            data.provider,
            data.model,
            data.base_url,
            sealed,
            1,
            now,
            now,
            list(data.fallback_provider_ids or []),
            data.timeout_seconds or DEFAULT_TIMEOUT_SECONDS,
            DEFAULT_MAX_RETRIES if data.max_retries is None else data.max_retries,
        )
        async with self._uow(p.tenant_schema) as uow:
            if await uow.providers.name_taken(provider.name):
                raise duplicate_name("LLM provider", provider.name)
            await _check_fallbacks(uow.providers, ident, provider.fallback_ids)
            await uow.providers.add(provider)
            await uow.commit()
        self._audit.record(
            p.tenant_id,
            PROVIDER_CREATED,
            principal=p,
            target=provider.id,
            data=_audit_data(provider, keySet=provider.has_api_key),
        )
        return provider

    async def update(
        self, p: Principal, ident: str, data: ProviderInput, expected_version: int | None = None
    ) -> LlmProvider:
        """`apiKey` null keeps the stored key; an empty string removes it. Null fallbacks,
        timeout or retries keep the stored value; `[]` clears the fallbacks."""
        p.require(Action.MANAGE_PROVIDERS)
        data = _validate(data)
        self._check_egress(data)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.providers.get(require_id("LLM provider", ident), for_update=True)
            if current is None:
                raise NotFound("LLM provider", ident)
            check_version("LLM provider", current.version, expected_version)
            if await uow.providers.name_taken(data.name, exclude=ident):
                raise duplicate_name("LLM provider", data.name)
            moved = (data.provider, data.base_url) != (current.provider, current.base_url)
            if moved and current.api_key is not None and data.api_key is None:
                # Else whoever may edit the provider could send the stored key (which
                # no one can read back) to a host of their choosing.
                raise BadUserInput(
                    "changing provider or baseUrl of an LLM provider with a stored key needs "
                    'the key again: set apiKey ("" to remove it)',
                    {"input.apiKey": "is required when provider or baseUrl change"},
                )
            current.name, current.provider, current.model = data.name, data.provider, data.model
            current.base_url = data.base_url
            if data.fallback_provider_ids is not None:
                await _check_fallbacks(uow.providers, ident, data.fallback_provider_ids)
                current.fallback_ids = list(data.fallback_provider_ids)
            if data.timeout_seconds is not None:
                current.timeout_seconds = data.timeout_seconds
            if data.max_retries is not None:
                current.max_retries = data.max_retries
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
        self._audit.record(
            p.tenant_id,
            PROVIDER_UPDATED,
            principal=p,
            target=current.id,
            data=_audit_data(current, keyChanged=data.api_key is not None),
        )
        return current

    def reveal_key(self, p: Principal, provider: LlmProvider) -> str | None:
        """For runtime adapters only; never reaches an API response or a log."""
        return reveal(self._box, p.tenant_id, provider)


def _audit_data(provider: LlmProvider, **flags: bool) -> dict[str, object]:
    """What the audit log keeps of a provider change: never the key, only whether one
    was set or changed."""
    return {
        "name": provider.name,
        "provider": provider.provider,
        "model": provider.model,
        "baseUrl": _without_secrets(provider.base_url),
        "version": provider.version,
        **flags,
    }


def _without_secrets(url: str | None) -> str | None:
    """A base URL without user info, query or fragment (where credentials could hide)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def local_provider(now: datetime) -> LlmProvider:
    """This server's scripted model as a provider (base URL resolved at call time)."""
    return LlmProvider(
        str(uuid.uuid4()),
        LOCAL_PROVIDER_NAME,
        "openai",
        "scripted",
        LOCAL_BASE_URL,
        None,
        1,
        now,
        now,
        [],
        DEFAULT_TIMEOUT_SECONDS,
        0,
    )


def reveal(box: SecretBox, tenant_id: str, provider: LlmProvider) -> str | None:
    """The provider's key in clear, for the duration of one call; never logged."""
    if provider.api_key is None:
        return None
    return box.open(provider.api_key, _context(provider.id, tenant_id))


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
