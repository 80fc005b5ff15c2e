"""Per-tenant quotas: what a tenant may use, checked where it is used.

The effective quota of a tenant is its overrides (`public.tenants.quota`, written by
`crewgraph tenants set-quota`) over the server's defaults (settings). It is read from the
database at every check, so a change applies at once in every process.

- `max_concurrent_executions`: RUNNING executions at once. Not a refusal: the runner's
  claim (`domain.executions.claims`) leaves the others PENDING, and they start as slots
  free. Always at least 1.
- `max_executions_per_day`: executions created in the current UTC day (executeFlow,
  testCrew and scheduled runs alike), counted under a per-tenant PostgreSQL lock in the
  creating transaction, so concurrent requests of any number of processes never create
  more than the quota. Over it: LIMIT_EXCEEDED, `resetsAt` the next UTC midnight.
- `max_tokens_per_day`: prompt + completion tokens of the LLM calls recorded in the
  current UTC day. Checked before each call: the call that crosses the limit completes
  (its size is unknown before it ends), the next one is refused with LIMIT_EXCEEDED (an
  LLM node or agent fails with that code, a chat reply fails with its message). Calls
  that start at the same moment may each pass the check, so the overshoot is bounded by
  the calls in flight, not zero.
- `max_chat_sessions`: chat sessions existing at once (a count, not a rate: deleting one
  frees a slot), counted under a per-tenant lock in the creating transaction. Over it:
  LIMIT_EXCEEDED with `resetsAt` null (nothing resets it but a delete).

Every quota but the concurrency one may be 0, which means "no limit" (GraphQL shows it as
null). A refusal is `LimitExceeded` with `extensions` {quota: the GraphQL name, max,
resetsAt: ISO 8601 UTC time or null}.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Protocol

from domain.errors import LimitExceeded, NotFound
from domain.identity import Principal
from domain.llm import Usage
from domain.rbac import Action
from domain.tenants import QUOTA_NAMES, TenantQuota

NO_LIMIT = 0

#: The name a client sees (`extensions.quota`, the `TenantQuota` fields).
PUBLIC_NAMES = {
    "max_concurrent_executions": "maxConcurrentExecutions",
    "max_executions_per_day": "maxExecutionsPerDay",
    "max_tokens_per_day": "maxTokensPerDay",
    "max_chat_sessions": "maxChatSessions",
}
assert set(PUBLIC_NAMES) == set(QUOTA_NAMES)


class QuotaStore(Protocol):
    async def overrides(self, tenant_id: str) -> dict[str, int] | None:
        """The tenant's overridden quota values; None when the tenant does not exist."""
        ...

    async def usage_since(self, tenant_schema: str, since: datetime) -> Usage:
        """LLM usage recorded in the tenant's schema from `since` on."""
        ...


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Day:
    """The UTC day quotas count in: [start, resets_at)."""

    start: datetime
    resets_at: datetime


def utc_day(now: datetime) -> Day:
    start = datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)
    return Day(start, start + timedelta(days=1))


def exceeded(name: str, limit: int, resets_at: datetime | None, detail: str) -> LimitExceeded:
    public = PUBLIC_NAMES[name]
    when = f"; it resets at {resets_at.isoformat()}" if resets_at is not None else ""
    return LimitExceeded(
        f"{detail}: the team's quota ({public}) is {limit}{when}",
        extensions={
            "quota": public,
            "max": limit,
            "resetsAt": resets_at.isoformat() if resets_at is not None else None,
        },
    )


class TenantQuotas:
    """Reads effective quotas and applies the checks that are not a transaction's own."""

    def __init__(self, store: QuotaStore, defaults: TenantQuota, now: Clock = _utcnow) -> None:
        self._store = store
        self.defaults = defaults
        self._now = now

    def today(self) -> Day:
        return utc_day(self._now())

    async def of(self, tenant_id: str) -> TenantQuota:
        """The effective quota; a tenant that does not exist gets the defaults."""
        overrides = await self._store.overrides(tenant_id) or {}
        values = {name: overrides.get(name, getattr(self.defaults, name)) for name in QUOTA_NAMES}
        # A concurrency of 0 would leave every run PENDING forever: it is never a limit.
        if values["max_concurrent_executions"] < 1:
            values["max_concurrent_executions"] = self.defaults.max_concurrent_executions
        return TenantQuota(**values)

    async def check_executions(
        self,
        tenant_id: str,
        created_since: Callable[[datetime], Awaitable[int]],
        quota: TenantQuota | None = None,
    ) -> None:
        """Refuse a new execution when today's are at the quota. `created_since` counts
        the tenant's executions from a time on, under a lock held until the caller's
        transaction ends (so the count stays exact until the new one is stored). Pass
        `quota` (read with `of` BEFORE the caller's unit of work opened): reading it here
        takes a second pooled connection while the unit of work holds one, and enough
        concurrent callers doing that starve the pool."""
        limit = (quota or await self.of(tenant_id)).max_executions_per_day
        if limit == NO_LIMIT:
            return
        day = self.today()
        used = await created_since(day.start)
        if used >= limit:
            raise exceeded(
                "max_executions_per_day",
                limit,
                day.resets_at,
                f"the team already started {used} executions today (UTC)",
            )

    async def check_tokens(self, tenant_id: str, tenant_schema: str) -> None:
        """Refuse an LLM call when today's recorded tokens reached the quota."""
        limit = (await self.of(tenant_id)).max_tokens_per_day
        if limit == NO_LIMIT:
            return
        day = self.today()
        used = (await self._store.usage_since(tenant_schema, day.start)).total_tokens
        if used >= limit:
            raise exceeded(
                "max_tokens_per_day",
                limit,
                day.resets_at,
                f"the team used {used} LLM tokens today (UTC)",
            )

    async def chat_session_limit(self, tenant_id: str) -> int:
        """The chat session quota (0: no limit); the store applies it atomically."""
        return (await self.of(tenant_id)).max_chat_sessions

    @staticmethod
    def chat_sessions_exceeded(limit: int) -> LimitExceeded:
        return exceeded(
            "max_chat_sessions",
            limit,
            None,
            f"the team already has {limit} chat sessions; delete one to start another",
        )

    # ---- read side (Tenant.quota, Tenant.usageToday)

    async def quota(self, p: Principal, tenant_id: str) -> TenantQuota:
        """The caller's own tenant only; members of every role may read it."""
        self._own(p, tenant_id)
        return await self.of(p.tenant_id)

    async def usage_today(self, p: Principal, tenant_id: str) -> Usage:
        self._own(p, tenant_id)
        return await self._store.usage_since(p.tenant_schema, self.today().start)

    @staticmethod
    def _own(p: Principal, tenant_id: str) -> None:
        p.require(Action.READ)
        if tenant_id != p.tenant_id:
            raise NotFound("tenant", tenant_id)
