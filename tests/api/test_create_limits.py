"""The per-team limits on schedules and webhooks hold under concurrent creates: the
count and the insert run under the team's lock, so N creates racing for the last slot
store exactly one and refuse the others with LIMIT_EXCEEDED (real PostgreSQL).

The race is made certain rather than left to timing: the test holds a SHARE lock on the
team's table (reads go on, inserts wait) until every create is waiting on a lock, so
without the team's lock all of them would have counted before any inserted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from domain.errors import DomainError
from domain.identity import Principal
from domain.rbac import Role
from domain.schedules import ScheduleInput
from domain.webhooks import WebhookInput
from tests.conftest import Team
from tests.support import flows as f
from tests.support.client import GQL, error_code

RACERS = 8
LIMIT = 3

CREATE_SCHEDULE = "mutation($input: ScheduleInput!) { createSchedule(input: $input) { id } }"
SCHEDULES = "query { schedules(first: 100) { edges { node { id } } } }"
CREATE_WEBHOOK = (
    "mutation($input: WebhookInput!) { createWebhook(input: $input) { webhook { id } } }"
)
WEBHOOKS = "query { webhooks { edges { node { id } } } }"


async def _admin(container: Any, team: Team) -> Principal:
    record = await container.tenant_admin.show(team.slug)
    return Principal(team.tenant_id, record.schema_name, Role.ADMIN, user_id=team.user_id)


@asynccontextmanager
async def _inserts_held(container: Any, schema: str, table: str) -> AsyncIterator[None]:
    async with container.db.connect() as conn:
        await conn.execute(sa.text(f'LOCK TABLE "{schema}".{table} IN SHARE MODE'))
        yield
        await conn.rollback()


async def _lock_waiters(container: Any) -> int:
    async with container.db.connect() as conn:
        found = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
        await conn.rollback()
    return int(found or 0)


async def _race(
    container: Any, schema: str, table: str, creates: list[Awaitable[Any]]
) -> list[str]:
    """Run every create at once, all waiting on a lock before any may insert; the error
    code of each ("" when it was stored)."""
    async with _inserts_held(container, schema, table):
        racing = asyncio.gather(*creates, return_exceptions=True)
        for _ in range(400):
            if await _lock_waiters(container) >= len(creates):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the creates never all waited on a lock")
    codes = []
    for outcome in await racing:
        if isinstance(outcome, DomainError):
            codes.append(outcome.code)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            codes.append("")
    return codes


def _one_stored(codes: list[str]) -> None:
    assert sorted(codes) == [""] + ["LIMIT_EXCEEDED"] * (RACERS - 1), codes


async def _refused_over_http(gql: GQL, team: Team, query: str, data: dict[str, Any]) -> None:
    refused = await gql.raw(query, {"input": data}, token=team.token)
    assert error_code(refused) == "LIMIT_EXCEEDED", refused
    assert refused["errors"][0]["extensions"]["max"] == LIMIT


async def test_concurrent_schedule_creates_never_pass_the_limit(
    gql: GQL, team: Team, container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = container.schedules
    monkeypatch.setattr(service, "max_schedules", LIMIT)
    flow = await f.create_flow(gql, team.token, f.branching())
    data = {"flowId": flow["id"], "cron": "0 3 * * *", "enabled": False, "inputs": {"score": 1}}
    for _ in range(LIMIT - 1):
        await gql.ok(CREATE_SCHEDULE, {"input": data}, token=team.token)
    p = await _admin(container, team)
    one = ScheduleInput(flow["id"], "0 3 * * *", inputs={"score": 1}, enabled=False)
    creates = [service.create(p, one) for _ in range(RACERS)]
    _one_stored(await _race(container, p.tenant_schema, "schedules", creates))
    listed = (await gql.ok(SCHEDULES, token=team.token))["schedules"]["edges"]
    assert len(listed) == LIMIT
    await _refused_over_http(gql, team, CREATE_SCHEDULE, data)


async def test_concurrent_webhook_creates_never_pass_the_limit(
    gql: GQL, team: Team, container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = container.webhooks
    monkeypatch.setattr(service, "max_webhooks", LIMIT)
    data = {"url": "http://127.0.0.1:9/hook", "events": ["EXECUTION_COMPLETED"]}
    for _ in range(LIMIT - 1):
        await gql.ok(CREATE_WEBHOOK, {"input": data}, token=team.token)
    p = await _admin(container, team)
    one = WebhookInput("http://127.0.0.1:9/hook", ["EXECUTION_COMPLETED"])
    creates = [service.create(p, one) for _ in range(RACERS)]
    _one_stored(await _race(container, p.tenant_schema, "webhooks", creates))
    listed = (await gql.ok(WEBHOOKS, token=team.token))["webhooks"]["edges"]
    assert len(listed) == LIMIT
    await _refused_over_http(gql, team, CREATE_WEBHOOK, data)
