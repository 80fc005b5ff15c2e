"""Operator use cases on tenants: status (suspension) and per-tenant quotas.

The operator is not a tenant user: these act on the public tenant registry directly,
through the `TenantAdminStore` port.

Suspending a tenant deletes nothing. Once its status is stored, every way in refuses it
(`Tenant.require_active`: tokens, API keys, login, refresh → FORBIDDEN, reason
TENANT_SUSPENDED), the scheduler and the webhook sender pass it over, and a claim cancels
any run of it; then `suspend` announces a tenant-wide revocation (every API process closes
the tenant's WebSockets, 4403 TENANT_SUSPENDED, and forgets its cached principals) and
stops what runs (`StopWork`: executions end CANCELLED "tenant suspended", chat replies
are cancelled). Activating lets everything in again; what was cancelled stays cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from domain import audit
from domain.audit import NO_AUDIT, AuditRecorder
from domain.errors import BadUserInput, DomainError, NotFound
from domain.identity import TENANT_SUSPENDED, TenantStatus  # with the tenant entity
from domain.ports import CredentialRevocations, Revocation

log = logging.getLogger("crewgraph.tenants")
_Names = list[str]  # `TenantAdminService.list` shadows the builtin in the class body


StopWork = Callable[[str, str], Awaitable[int]]
"""Stops one kind of a tenant's work (tenant id, schema); how much there was."""


class SuspensionIncomplete(DomainError):
    """The tenant is suspended, but not everything of it could be stopped yet."""

    code = "SERVICE_UNAVAILABLE"


QUOTA_NAMES = (
    "max_concurrent_executions",
    "max_executions_per_day",
    "max_tokens_per_day",
    "max_chat_sessions",
)
MAX_QUOTA_VALUE = 1_000_000_000_000


@dataclass(frozen=True, slots=True)
class TenantQuota:
    max_concurrent_executions: int
    max_executions_per_day: int
    max_tokens_per_day: int
    max_chat_sessions: int


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    name: str
    slug: str
    schema_name: str
    status: TenantStatus
    suspended_reason: str | None
    suspended_at: datetime | None
    # Only the overridden quota values; missing names fall back to the defaults.
    quota_overrides: dict[str, int]
    created_at: datetime


class TenantAdminStore(Protocol):
    async def list(self) -> list[TenantRecord]: ...
    async def by_slug(self, slug: str) -> TenantRecord | None: ...
    async def set_status(
        self, tenant_id: str, status: TenantStatus, reason: str | None, at: datetime | None
    ) -> None: ...
    async def set_quota(self, tenant_id: str, overrides: dict[str, int]) -> None: ...


class Clock(Protocol):
    def __call__(self) -> datetime: ...


def effective_quota(record: TenantRecord, defaults: TenantQuota) -> TenantQuota:
    known = {k: v for k, v in record.quota_overrides.items() if k in QUOTA_NAMES}
    return replace(defaults, **known)


class TenantAdminService:
    def __init__(
        self,
        store: TenantAdminStore,
        defaults: TenantQuota,
        now: Clock,
        *,
        revocations: CredentialRevocations | None = None,
        work: Mapping[str, StopWork] | None = None,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        self._store = store
        self._defaults = defaults
        self._now = now
        # Both None / empty only where nothing else runs (narrow tests): a suspension then
        # only refuses new requests.
        self._revocations = revocations
        self._work = dict(work or {})  # what it is ("executions") → how to stop it
        self._audit = audit

    def quota_of(self, record: TenantRecord) -> TenantQuota:
        return effective_quota(record, self._defaults)

    async def list(self) -> list[TenantRecord]:
        return await self._store.list()

    async def show(self, slug: str) -> TenantRecord:
        record = await self._store.by_slug(slug)
        if record is None:
            raise NotFound("tenant", slug)
        return record

    async def suspend(self, slug: str, reason: str) -> TenantRecord:
        reason = reason.strip()
        if not reason or len(reason) > 1000:
            raise BadUserInput("reason must be 1-1000 characters")
        record = await self.show(slug)
        at = self._now()
        # Stored first: from here on nothing of the tenant gets in or starts, so what is
        # stopped below cannot come back.
        await self._store.set_status(record.id, TenantStatus.SUSPENDED, reason, at)
        self._audit.record(
            record.id,
            audit.TENANT_SUSPENDED,
            actor=None,
            target=record.slug,
            data={"reason": reason},
        )
        failed = await self._stop_everything(record)
        if failed:
            # Suspending again is harmless and retries what failed.
            raise SuspensionIncomplete(
                f"tenant {record.slug} is suspended, but stopping its {', '.join(failed)} "
                "failed; run the suspension again"
            )
        return replace(
            record, status=TenantStatus.SUSPENDED, suspended_reason=reason, suspended_at=at
        )

    async def _stop_everything(self, record: TenantRecord) -> _Names:
        """Close its connections, end its runs; what could not be done."""
        failed: _Names = []
        if self._revocations is not None:
            try:
                await self._revocations.announce(
                    Revocation(record.id, reason=TENANT_SUSPENDED, tenant_wide=True)
                )
            except Exception:
                # Sockets still re-check their credentials within a minute.
                log.exception("announcing a tenant suspension failed")
                failed.append("connections")
        for what, stop in self._work.items():
            try:
                await stop(record.id, record.schema_name)
            except Exception:
                log.exception("stopping a suspended tenant's %s failed", what)
                failed.append(what)
        return failed

    async def activate(self, slug: str) -> TenantRecord:
        record = await self.show(slug)
        await self._store.set_status(record.id, TenantStatus.ACTIVE, None, None)
        if record.status is not TenantStatus.ACTIVE:
            self._audit.record(record.id, audit.TENANT_ACTIVATED, actor=None, target=record.slug)
        return replace(record, status=TenantStatus.ACTIVE, suspended_reason=None, suspended_at=None)

    async def set_quota(self, slug: str, changes: dict[str, int | None]) -> TenantRecord:
        record = await self.show(slug)
        overrides = dict(record.quota_overrides)
        for name, value in changes.items():
            if name not in QUOTA_NAMES:
                raise BadUserInput(f"unknown quota {name!r}")
            if value is None:
                continue
            # 0 is "no limit" (domain/quotas.py), except for concurrency, which always
            # has one: a run needs at least one slot.
            low = 1 if name == "max_concurrent_executions" else 0
            if value < low or value > MAX_QUOTA_VALUE:
                raise BadUserInput(f"{name} must be between {low} and {MAX_QUOTA_VALUE}")
            overrides[name] = value
        await self._store.set_quota(record.id, overrides)
        changed = {k: v for k, v in overrides.items() if record.quota_overrides.get(k) != v}
        if changed:
            self._audit.record(
                record.id, audit.TENANT_QUOTA_CHANGED, actor=None, target=record.slug, data=changed
            )
        return replace(record, quota_overrides=overrides)
