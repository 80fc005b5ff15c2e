"""Operator use cases on tenants: status (suspension) and per-tenant quotas.

The operator is not a tenant user: these act on the public tenant registry directly,
through the `TenantAdminStore` port.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from domain.errors import BadUserInput, NotFound


class TenantStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


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
    def __init__(self, store: TenantAdminStore, defaults: TenantQuota, now: Clock) -> None:
        self._store = store
        self._defaults = defaults
        self._now = now

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
        await self._store.set_status(record.id, TenantStatus.SUSPENDED, reason, at)
        return replace(
            record, status=TenantStatus.SUSPENDED, suspended_reason=reason, suspended_at=at
        )

    async def activate(self, slug: str) -> TenantRecord:
        record = await self.show(slug)
        await self._store.set_status(record.id, TenantStatus.ACTIVE, None, None)
        return replace(record, status=TenantStatus.ACTIVE, suspended_reason=None, suspended_at=None)

    async def set_quota(self, slug: str, changes: dict[str, int | None]) -> TenantRecord:
        record = await self.show(slug)
        overrides = dict(record.quota_overrides)
        for name, value in changes.items():
            if name not in QUOTA_NAMES:
                raise BadUserInput(f"unknown quota {name!r}")
            if value is None:
                continue
            if value < 0 or value > MAX_QUOTA_VALUE:
                raise BadUserInput(f"{name} must be between 0 and {MAX_QUOTA_VALUE}")
            overrides[name] = value
        await self._store.set_quota(record.id, overrides)
        return replace(record, quota_overrides=overrides)
