"""The quota rules on their own: effective quotas, the UTC day, refusals, the claim limit.
(The API tests in tests/api/test_tenant_quotas.py run them against the real stores.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.errors import LimitExceeded, NotFound
from domain.executions.claims import ClaimAction, ClaimPolicy, ClaimState
from domain.executions.state import ExecutionStatus
from domain.identity import Principal
from domain.llm import Usage
from domain.quotas import TenantQuotas, utc_day
from domain.rbac import Role
from domain.tenants import TenantQuota

DEFAULTS = TenantQuota(
    max_concurrent_executions=4,
    max_executions_per_day=100,
    max_tokens_per_day=1000,
    max_chat_sessions=10,
)
NOW = datetime(2026, 3, 9, 23, 59, 30, tzinfo=UTC)


class Store:
    def __init__(self, overrides: dict[str, int] | None, tokens: int = 0) -> None:
        self._overrides = overrides
        self.tokens = tokens

    async def overrides(self, tenant_id: str) -> dict[str, int] | None:
        return self._overrides

    async def usage_since(self, tenant_schema: str, since: datetime) -> Usage:
        return Usage(1, self.tokens, 0, None)


def quotas(overrides: dict[str, int] | None, tokens: int = 0) -> TenantQuotas:
    return TenantQuotas(Store(overrides, tokens), DEFAULTS, lambda: NOW)


def test_the_day_is_the_utc_day() -> None:
    day = utc_day(datetime(2026, 3, 10, 1, 30, tzinfo=UTC).astimezone())
    assert day.start == datetime(2026, 3, 10, tzinfo=UTC)
    assert day.resets_at == datetime(2026, 3, 11, tzinfo=UTC)


async def test_overrides_replace_defaults_and_concurrency_is_never_zero() -> None:
    got = await quotas({"max_tokens_per_day": 0, "max_concurrent_executions": 0}).of("t")
    assert got == TenantQuota(4, 100, 0, 10)
    assert await quotas(None).of("t") == DEFAULTS  # unknown tenant: the defaults


async def test_executions_over_the_day_quota_are_refused_with_the_reset_time() -> None:
    q = quotas({"max_executions_per_day": 3})

    async def used(n: int) -> int:
        return n

    await q.check_executions("t", lambda since: used(2))
    with pytest.raises(LimitExceeded) as caught:
        await q.check_executions("t", lambda since: used(3))
    assert caught.value.extensions == {
        "quota": "maxExecutionsPerDay",
        "max": 3,
        "resetsAt": "2026-03-10T00:00:00+00:00",
    }
    # 0: no limit, and nothing is counted.
    await quotas({"max_executions_per_day": 0}).check_executions("t", lambda since: used(10**9))


async def test_tokens_refuse_the_call_after_the_one_that_crossed() -> None:
    await quotas({"max_tokens_per_day": 10}, tokens=9).check_tokens("t", "s")
    with pytest.raises(LimitExceeded) as caught:
        await quotas({"max_tokens_per_day": 10}, tokens=10).check_tokens("t", "s")
    assert caught.value.extensions["quota"] == "maxTokensPerDay"
    await quotas({"max_tokens_per_day": 0}, tokens=10**9).check_tokens("t", "s")


def test_chat_sessions_refusal_has_no_reset_time() -> None:
    error = TenantQuotas.chat_sessions_exceeded(2)
    assert error.code == "LIMIT_EXCEEDED"
    assert error.extensions == {"quota": "maxChatSessions", "max": 2, "resetsAt": None}


async def test_only_the_callers_own_tenant_is_readable() -> None:
    p = Principal("t1", "tenant_t1", Role.VIEWER)
    assert (await quotas(None).quota(p, "t1")).max_chat_sessions == 10
    with pytest.raises(NotFound):
        await quotas(None).quota(p, "t2")


def test_the_claim_uses_the_tenants_concurrency_quota() -> None:
    policy = ClaimPolicy(max_running=20)
    pending = ClaimState(status=ExecutionStatus.PENDING, running_elsewhere=1)
    assert policy.decide(pending).action is ClaimAction.START
    one = ClaimState(status=ExecutionStatus.PENDING, running_elsewhere=1, max_running=1)
    assert policy.decide(one).action is ClaimAction.SKIP  # it waits as PENDING
    zero = ClaimState(status=ExecutionStatus.PENDING, running_elsewhere=1, max_running=0)
    assert policy.decide(zero).action is ClaimAction.START  # unusable: the default applies
