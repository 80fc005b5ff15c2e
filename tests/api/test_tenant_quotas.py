"""Per-tenant quotas through the API: Tenant.quota / usageToday, the daily execution and
token quotas, the chat session count and the concurrency quota (runs wait as PENDING).

Quotas are set as the operator sets them (`TenantAdminService` over the real registry)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.tenants import TenantAdminService
from persistence.db import Database
from persistence.repositories.tenants import SqlTenantAdminStore
from server.tenants_cli import default_quota
from tests.api.test_chat import _history, _send, _session
from tests.api.test_llm import _llm_flow, _provider
from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.schedules import create_schedule, make_due, wait_moved_on

# The first LLM call of a process imports LiteLLM: minutes on a loaded 2-core machine.
FIRST_CALL_TIMEOUT = 300.0


@pytest.fixture
async def admin(settings: Any) -> AsyncIterator[TenantAdminService]:
    db = Database(settings.database_url, pool_size=1)
    try:
        yield TenantAdminService(
            SqlTenantAdminStore(db.engine), default_quota(settings), lambda: datetime.now(UTC)
        )
    finally:
        await db.dispose()


async def _tenant(gql: GQL, token: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql.ok("TenantQuota", token=token))["tenant"]
    return found


def _next_utc_midnight() -> str:
    today = datetime.now(UTC).date()
    return datetime.combine(today + timedelta(days=1), datetime.min.time(), UTC).isoformat()


def _quota_error(body: dict[str, Any], name: str) -> dict[str, Any]:
    assert error_code(body) == "LIMIT_EXCEEDED", body
    extensions: dict[str, Any] = body["errors"][0]["extensions"]
    assert extensions["quota"] == name, extensions
    assert name in body["errors"][0]["message"]
    return extensions


async def test_quota_shows_defaults_overrides_and_no_limit_as_null(
    gql: GQL, team: Team, other_team: Team, admin: TenantAdminService, settings: Any
) -> None:
    before = await _tenant(gql, team.token)
    assert before["id"] == team.tenant_id
    assert before["quota"] == {
        "maxConcurrentExecutions": settings.max_concurrent_executions,
        "maxExecutionsPerDay": settings.max_executions_per_day,
        "maxTokensPerDay": settings.max_tokens_per_day,
        "maxChatSessions": settings.max_chat_sessions,
    }
    assert before["usageToday"] == {
        "llmCalls": 0,
        "promptTokens": 0,
        "completionTokens": 0,
        "totalTokens": 0,
        "costUsd": None,
    }

    await admin.set_quota(
        team.slug,
        {"max_concurrent_executions": 3, "max_tokens_per_day": 0, "max_chat_sessions": 7},
    )
    # Every role reads its own team's quota, as it reads the team's usage.
    viewer = await member_token(gql, team, "VIEWER")
    after = await _tenant(gql, viewer)
    assert after["quota"] == {
        "maxConcurrentExecutions": 3,
        "maxExecutionsPerDay": settings.max_executions_per_day,
        "maxTokensPerDay": None,  # 0: no limit
        "maxChatSessions": 7,
    }
    # The other team keeps the defaults.
    assert (await _tenant(gql, other_team.token))["quota"] == before["quota"]
    # Anonymous callers see nothing.
    assert error_code(await gql.op("TenantQuota")) == "UNAUTHENTICATED"


async def test_executions_per_day_refused_with_quota_and_reset_time(
    gql: GQL, team: Team, other_team: Team, admin: TenantAdminService
) -> None:
    await admin.set_quota(team.slug, {"max_executions_per_day": 2})
    flow = await f.create_flow(gql, team.token, f.branching())
    for score in (1, 9):
        await f.execute(gql, team.token, flow["id"], {"score": score})
    body = await gql.op("ExecuteFlow", {"id": flow["id"], "inputs": {"score": 3}}, token=team.token)
    extensions = _quota_error(body, "maxExecutionsPerDay")
    assert extensions["max"] == 2
    assert extensions["resetsAt"] == _next_utc_midnight()
    listed = (await gql.ok("Executions", {"flowId": flow["id"]}, token=team.token))["executions"]
    assert len(listed["edges"]) == 2  # the refused one was not stored

    # Another team is not affected; raising the quota lets the team run again.
    theirs = await f.create_flow(gql, other_team.token, f.branching())
    await f.execute(gql, other_team.token, theirs["id"], {"score": 1})
    await admin.set_quota(team.slug, {"max_executions_per_day": 3})
    await f.execute(gql, team.token, flow["id"], {"score": 4})
    body = await gql.op("ExecuteFlow", {"id": flow["id"], "inputs": {"score": 5}}, token=team.token)
    _quota_error(body, "maxExecutionsPerDay")
    await admin.set_quota(team.slug, {"max_executions_per_day": 0})  # no limit
    await f.execute(gql, team.token, flow["id"], {"score": 6})


async def test_a_scheduled_run_over_the_daily_quota_is_skipped_and_the_schedule_moves_on(
    gql: GQL, team: Team, admin: TenantAdminService, container: Any
) -> None:
    await admin.set_quota(team.slug, {"max_executions_per_day": 1})
    flow = await f.create_flow(gql, team.token, f.branching())
    await f.execute(gql, team.token, flow["id"], {"score": 1})  # the day's only run
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="* * * * *", inputs={"score": 9}
    )
    await make_due(container, created["id"], timedelta(minutes=3))
    got = await wait_moved_on(gql, team.token, created["id"])
    assert got["lastExecution"] is None  # refused, not crashed: the scheduler goes on
    listed = (await gql.ok("Executions", {"flowId": flow["id"]}, token=team.token))["executions"]
    assert len(listed["edges"]) == 1


async def test_concurrency_quota_keeps_extra_runs_pending_until_a_slot_frees(
    gql: GQL, team: Team, admin: TenantAdminService
) -> None:
    await admin.set_quota(team.slug, {"max_concurrent_executions": 1})
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [1.5]))
    first = await f.execute(gql, team.token, flow["id"])
    await f.wait_node(gql, team.token, first["id"], "s0", "RUNNING")
    second = await f.execute(gql, team.token, flow["id"])  # accepted, but it waits
    for _ in range(5):
        await asyncio.sleep(0.15)
        state = (await gql.ok("Execution", {"id": second["id"]}, token=team.token))["execution"]
        assert state["status"] == "PENDING", state
        running = (await gql.ok("Execution", {"id": first["id"]}, token=team.token))["execution"]
        if running["status"] != "RUNNING":
            break
    done_first = await f.wait_status(gql, team.token, first["id"])
    done_second = await f.wait_status(gql, team.token, second["id"])
    assert (done_first["status"], done_second["status"]) == ("COMPLETED", "COMPLETED")
    started = datetime.fromisoformat(done_second["startedAt"])
    assert started >= datetime.fromisoformat(done_first["finishedAt"])


async def test_chat_sessions_count_existing_sessions(
    gql: GQL, team: Team, admin: TenantAdminService
) -> None:
    await admin.set_quota(team.slug, {"max_chat_sessions": 2})
    model = (await _provider(gql, team))["id"]
    first = await _session(gql, team, title="one", llmProviderId=model)
    await _session(gql, team, title="two", llmProviderId=model)
    body = await gql.op(
        "CreateChatSession", {"input": {"title": "three", "llmProviderId": model}}, token=team.token
    )
    extensions = _quota_error(body, "maxChatSessions")
    assert extensions["max"] == 2
    assert extensions["resetsAt"] is None  # a count: only a delete frees a slot
    assert await gql.ok("DeleteChatSession", {"id": first["id"]}, token=team.token)
    await _session(gql, team, title="three", llmProviderId=model)


async def test_tokens_per_day_the_crossing_call_completes_the_next_is_refused(
    gql: GQL, team: Team, admin: TenantAdminService
) -> None:
    await admin.set_quota(team.slug, {"max_tokens_per_day": 1})
    provider = await _provider(gql, team)
    flow = await f.create_flow(gql, team.token, _llm_flow(provider["id"], "SAY: hello there"))
    first = await f.execute(gql, team.token, flow["id"])
    done = await f.wait_status(gql, team.token, first["id"], timeout=FIRST_CALL_TIMEOUT)
    assert done["status"] == "COMPLETED", done["error"]
    usage = (await _tenant(gql, team.token))["usageToday"]
    assert usage["llmCalls"] == 1 and usage["totalTokens"] > 1, usage
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]

    second = await f.execute(gql, team.token, flow["id"])
    refused = await f.wait_status(gql, team.token, second["id"], timeout=60)
    assert refused["status"] == "FAILED"
    assert "maxTokensPerDay" in refused["error"], refused["error"]
    events = await f.collect_events(gql, team.token, second["id"])
    failed = [e for e in events if e["type"] == "NODE_FAILED"]
    assert failed and failed[0]["data"]["code"] == "LIMIT_EXCEEDED", failed

    # A chat reply is refused the same way; nothing more was spent.
    session = await _session(gql, team, llmProviderId=provider["id"])
    await _send(gql, team.token, session["id"], "SAY: hi")
    reply = await _final_reply(gql, team, session["id"])
    assert reply["status"] == "FAILED" and "maxTokensPerDay" in reply["error"], reply
    assert (await _tenant(gql, team.token))["usageToday"] == usage

    # No limit: the same flow runs again.
    await admin.set_quota(team.slug, {"max_tokens_per_day": 0})
    third = await f.execute(gql, team.token, flow["id"])
    again = await f.wait_status(gql, team.token, third["id"], timeout=60)
    assert again["status"] == "COMPLETED", again["error"]


async def _final_reply(gql: GQL, team: Team, session_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        edges = (await _history(gql, team, session_id))["messages"]["edges"]
        last: dict[str, Any] = edges[-1]["node"]
        if last["role"] == "ASSISTANT" and last["status"] != "STREAMING":
            return last
        await asyncio.sleep(0.05)
    raise AssertionError("the chat reply never ended")
