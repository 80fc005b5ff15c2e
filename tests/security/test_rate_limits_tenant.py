"""Per-caller and per-team rate limits on queries, mutations, validateTool, executeFlow and
subscribes (RATE_LIMITED with `retryAfter`), all set through `CREWGRAPH_RATE_LIMITS`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from server.settings import DEFAULT_RATE_LIMITS, Settings
from tests.conftest import Team, member_token, register, serving
from tests.support import ws as w
from tests.support.client import GQL, error_code

ROOT = Path(__file__).resolve().parents[2]
ME = "{ tenant { id } }"


@asynccontextmanager
async def limited(settings: Any, rules: str) -> AsyncIterator[GQL]:
    """A server of its own whose limits are `rules`, read the way the process reads them."""
    from server.app import create_app
    from server.bootstrap import build_container

    own = settings.model_copy(
        update={"redis_prefix": f"{settings.redis_prefix}rl{uuid.uuid4().hex[:6]}"}
    )
    own = own.model_copy(update={"rate_limits": rules})
    async with serving(create_app(build_container(own))) as url, aclosing(GQL(url)) as client:
        yield client


def _retry_after(body: dict[str, Any]) -> int:
    assert error_code(body) == "RATE_LIMITED", body
    assert body["data"] is None, body
    retry = body["errors"][0]["extensions"]["retryAfter"]
    assert isinstance(retry, int), body
    return retry


async def _api_key(client: GQL, team: Team) -> str:
    data = await client.ok(
        "CreateApiKey", {"name": f"k{uuid.uuid4().hex[:6]}", "role": "MEMBER"}, token=team.token
    )
    secret: str = data["createApiKey"]["secret"]
    return secret


async def test_queries_are_limited_per_user_and_per_api_key(settings: Any) -> None:
    async with limited(settings, "query=3/minute,mutation=100/minute") as client:
        team, other = await register(client), await register(client)
        key = await _api_key(client, team)
        for _ in range(3):
            await client.ok(ME, token=team.token)
        retry = _retry_after(await client.raw(ME, token=team.token))
        assert 1 <= retry <= 60
        # The team's API key and another team count on their own.
        for _ in range(3):
            assert not (await client.raw(ME, api_key=key)).get("errors")
        _retry_after(await client.raw(ME, api_key=key))
        await client.ok(ME, token=other.token)


async def test_a_team_shares_one_budget_over_all_its_callers(settings: Any) -> None:
    async with limited(
        settings, "query=100/minute,tenant_query=5/minute,mutation=100/minute"
    ) as client:
        team, other = await register(client), await register(client)
        viewer = await member_token(client, team, "VIEWER")
        key = await _api_key(client, team)
        # CreateUser and CreateApiKey are mutations: the 5 queries are all still there.
        callers = [{"token": team.token}, {"token": viewer}, {"api_key": key}]
        for i in range(5):
            await client.ok(ME, **callers[i % 3])
        for caller in callers:
            _retry_after(await client.raw(ME, **caller))
        await client.ok(ME, token=other.token)  # another team: untouched


async def test_mutations_are_limited_and_nothing_runs_past_the_limit(settings: Any) -> None:
    async with limited(settings, "mutation=2/minute,register=off") as client:
        team = await register(client)  # the anonymous register counts per address
        created = await client.ok(
            "CreateApiKey", {"name": "one", "role": "VIEWER"}, token=team.token
        )
        assert created["createApiKey"]["secret"]
        await client.ok("CreateApiKey", {"name": "two", "role": "VIEWER"}, token=team.token)
        _retry_after(
            await client.op("CreateApiKey", {"name": "three", "role": "VIEWER"}, token=team.token)
        )
        keys = (await client.ok("ApiKeys", token=team.token))["apiKeys"]
        assert sorted(k["name"] for k in keys) == ["one", "two"]  # the refused one never ran
        await client.ok(ME, token=team.token)  # queries have their own limit


async def test_execute_flow_and_validate_tool_count_every_root_field(settings: Any) -> None:
    async with limited(
        settings, "mutation=100/minute,execute_flow=3/minute,validate_tool=2/minute"
    ) as client:
        team = await register(client)
        missing = str(uuid.uuid4())
        # Aliases do not multiply runs for free: three executeFlow fields are three runs.
        three = (
            "mutation($id: ID!) { "
            + " ".join(f"a{i}: executeFlow(id: $id, inputs: {{}}) {{ id }}" for i in range(3))
            + " }"
        )
        body = await client.raw(three, {"id": missing}, token=team.token)
        assert error_code(body) == "NOT_FOUND", body  # all three allowed: the flow is missing
        _retry_after(
            await client.op("ExecuteFlow", {"id": missing, "inputs": {}}, token=team.token)
        )
        for _ in range(2):
            body = await client.op("ValidateTool", {"id": missing}, token=team.token)
            assert error_code(body) == "NOT_FOUND", body
        _retry_after(await client.op("ValidateTool", {"id": missing}, token=team.token))
        # Other mutations still go through.
        await client.ok("CreateApiKey", {"name": "k", "role": "VIEWER"}, token=team.token)


async def test_subscribes_are_limited_on_the_socket_which_stays_open(settings: Any) -> None:
    async with limited(settings, "subscribe=2/minute") as client:
        team = await register(client)
        heartbeat = "subscription { heartbeat(intervalSeconds: 0.05) }"
        async with client.connect_ws() as ws:
            ack = await w.init(ws, await w.bearer_payload(team.token))
            assert ack["type"] == "connection_ack"
            for sub in ("1", "2"):
                await w.subscribe(ws, sub, heartbeat)
                msg = await w.recv(ws)
                assert msg["type"] == "next" and msg["id"] == sub, msg
                await ws.send(f'{{"id": "{sub}", "type": "complete"}}')
            await w.subscribe(ws, "3", heartbeat)
            msg = await w.recv(ws)
            while msg.get("id") != "3":  # frames of 1 and 2 sent before they completed
                msg = await w.recv(ws)
            assert msg["type"] in ("next", "error"), msg
            payload = msg["payload"]
            errors = payload if isinstance(payload, list) else payload["errors"]
            assert errors[0]["extensions"]["code"] == "RATE_LIMITED", msg
            assert errors[0]["extensions"]["retryAfter"] >= 1, msg
            # Queries on the same socket are not subscribes.
            await w.subscribe(ws, "4", ME)
            msg = await w.recv(ws)
            while msg.get("id") != "4":
                msg = await w.recv(ws)
            assert msg["type"] == "next" and msg["payload"]["data"]["tenant"]["id"], msg


# --- the setting ------------------------------------------------------------------------


def test_every_operation_limit_has_a_default_and_a_team_default() -> None:
    for name in ("query", "mutation", "subscribe", "validate_tool", "execute_flow"):
        assert name in DEFAULT_RATE_LIMITS and f"tenant_{name}" in DEFAULT_RATE_LIMITS


def test_the_setting_overrides_and_switches_off() -> None:
    rules = Settings(rate_limits=" query=5/second;100/hour , subscribe=off ").rate_limit_rules
    assert rules["query"] == "5/second;100/hour"
    assert "subscribe" not in rules
    assert rules["login"] == DEFAULT_RATE_LIMITS["login"]
    assert Settings(rate_limits="off").rate_limit_rules == {}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("qurey=5/minute", "'qurey=5/minute'"),
        ("login=20/minute,query", "'query'"),
        ("query=lots", "'query=lots'"),
        ("query=0/minute", "'query=0/minute'"),
    ],
)
def test_a_bad_entry_stops_the_process_naming_it(value: str, named: str) -> None:
    env = {**os.environ, "CREWGRAPH_RATE_LIMITS": value}
    proc = subprocess.run(
        [sys.executable, "-c", "from server.settings import Settings; Settings()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "rate_limits" in proc.stderr and named in proc.stderr, proc.stderr
