"""Suspending a tenant (the operator's `TenantAdminService.suspend`, as `crewgraph tenants
suspend` runs it): its credentials stop working, its sockets close on every API process,
its runs are cancelled, its schedules stop; activating restores it. Real PostgreSQL,
Redis, MongoDB, HTTP and WebSockets; a second `crewgraph serve` process for the sockets."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from persistence.repositories.sql import PoolStatements
from tests.api import test_chat as chat
from tests.api.test_approvals import approval_flow
from tests.api.test_schedules import CREATE, make_due, wait_fired
from tests.conftest import PASSWORD, Team, free_port
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.serve import serve_env, serving
from tests.support.ws import close_code, init, recv, send_init, subscribe

SUSPENDED = "TENANT_SUSPENDED"
STATUS = "{ tenant { id status } }"


def refused_as_suspended(body: dict[str, Any]) -> None:
    assert error_code(body) == "FORBIDDEN", body
    assert body["errors"][0]["extensions"]["reason"] == SUSPENDED, body


async def open_socket(gql: GQL, payload: dict[str, Any]) -> Any:
    ws = await gql.connect_ws()
    assert (await init(ws, payload))["type"] == "connection_ack"
    await subscribe(ws, "probe", "{ __typename }")
    assert (await recv(ws))["type"] == "next"
    assert (await recv(ws))["type"] == "complete"
    return ws


async def closed_within(
    ws: Any, seconds: float, started: float, *, data_in_flight: bool = False
) -> tuple[int, str]:
    """(code, reason) of the server's close, which must come `seconds` after `started`;
    no data before it unless some may have been on its way (`data_in_flight`)."""
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), seconds + 2))
            assert data_in_flight or msg.get("type") != "next", msg
    except ConnectionClosed as closed:
        assert time.monotonic() - started < seconds, "the socket stayed open too long"
        assert closed.rcvd is not None
        return closed.rcvd.code, closed.rcvd.reason


async def still_open(ws: Any) -> None:
    await subscribe(ws, "again", "{ __typename }")
    assert (await recv(ws))["type"] == "next"
    assert (await recv(ws))["type"] == "complete"


async def test_credentials_refused_and_sockets_closed_on_every_process(
    gql: GQL, team: Team, other_team: Team, container: Any, settings: Any, tmp_path: Path
) -> None:
    key = (await gql.ok("CreateApiKey", {"name": "ci", "role": "MEMBER"}, token=team.token))[
        "createApiKey"
    ]["secret"]
    assert (await gql.ok(STATUS, token=team.token))["tenant"]["status"] == "ACTIVE"
    port = free_port()
    env = serve_env(settings, port, tmp_path / "data", CREWGRAPH_RATE_LIMITS="off")
    async with serving(env, port, ready_within=120):
        second = GQL(f"http://127.0.0.1:{port}")
        try:
            sockets = [
                await open_socket(gql, {"authorization": f"Bearer {team.token}"}),
                await open_socket(gql, {"x-api-key": key}),
                await open_socket(second, {"authorization": f"Bearer {team.token}"}),
            ]
            bystander = await open_socket(gql, {"authorization": f"Bearer {other_team.token}"})
            started = time.monotonic()
            record = await container.tenant_admin.suspend(team.slug, "unpaid invoice")
            assert record.status.value == "SUSPENDED"
            closes = await asyncio.gather(*(closed_within(ws, 1.0, started) for ws in sockets))
            assert closes == [(4403, SUSPENDED)] * 3
            await still_open(bystander)  # another tenant's socket is left alone

            # The next request of every credential, on any process, HTTP or WebSocket.
            refused_as_suspended(await gql.op("Me", token=team.token))
            refused_as_suspended(await gql.raw(STATUS, api_key=key))
            refused_as_suspended(await second.op("Me", token=team.token))
            login = {"email": team.email, "password": PASSWORD, "tenantSlug": team.slug}
            refused_as_suspended(await gql.op("Login", {"input": login}))
            refused_as_suspended(await gql.op("RefreshToken", {"refreshToken": team.refresh}))
            for payload in ({"authorization": f"Bearer {team.token}"}, {"x-api-key": key}):
                async with gql.connect_ws() as ws:
                    await send_init(ws, payload)
                    assert await close_code(ws, "connection_ack") == 4403
            # A wrong password still says only that.
            wrong = await gql.op("Login", {"input": {**login, "password": "not it at all"}})
            assert error_code(wrong) == "UNAUTHENTICATED", wrong
            assert (await gql.ok("Me", token=other_team.token))["me"]["email"] == other_team.email
            await bystander.close()
        finally:
            await second.aclose()

    record = await container.tenant_admin.activate(team.slug)
    assert record.status.value == "ACTIVE"
    assert (await gql.ok(STATUS, token=team.token))["tenant"]["status"] == "ACTIVE"
    assert (await gql.ok(STATUS, api_key=key))["tenant"]["status"] == "ACTIVE"
    # The refresh token was not spent by the refused refresh.
    await gql.ok("RefreshToken", {"refreshToken": team.refresh})
    ws = await open_socket(gql, {"authorization": f"Bearer {team.token}"})
    await ws.close()

    entries = await audit_entries(gql, team)
    assert entries["tenant.suspended"]["actor"] is None
    assert entries["tenant.suspended"]["data"] == {"reason": "unpaid invoice"}
    assert entries["tenant.activated"]["actor"] is None


async def audit_entries(gql: GQL, team: Team) -> dict[str, dict[str, Any]]:
    """The newest entry of each action in the team's audit log (written in the background)."""
    for _ in range(100):
        edges = (await gql.ok("AuditLog", {"first": 100}, token=team.token))["auditLog"]["edges"]
        found: dict[str, dict[str, Any]] = {}
        for edge in reversed(edges):
            found[edge["node"]["action"]] = edge["node"]
        if "tenant.activated" in found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("the suspension's audit entries were not written")


async def rows(container: Any, team: Team) -> dict[str, Any]:
    """What the tenant holds in PostgreSQL, read as the operator would."""
    sql = PoolStatements(container.db)
    schema = (
        await sql.fetchrow(
            "SELECT schema_name FROM public.tenants WHERE id = $1::uuid", team.tenant_id
        )
    )["schema_name"]
    executions = await sql.fetch(f"SELECT id, status, error FROM {schema}.executions")
    counts = {
        table: await sql.fetchval(f"SELECT count(*) FROM {schema}.{table}")
        for table in ("flows", "tools", "schedules", "executions", "node_runs", "api_keys")
        if await sql.fetchval("SELECT to_regclass($1)", f"{schema}.{table}") is not None
    }
    counts["users"] = await sql.fetchval(
        "SELECT count(*) FROM public.users WHERE tenant_id = $1::uuid", team.tenant_id
    )
    return {
        "executions": {str(r["id"]): (r["status"], r["error"]) for r in executions},
        "counts": counts,
    }


async def test_runs_cancelled_schedules_paused_nothing_deleted(
    gql: GQL, team: Team, other_team: Team, container: Any
) -> None:
    asker = await f.create_flow(gql, team.token, approval_flow())
    waiting = await f.execute(gql, team.token, asker["id"], {"title": "Q3"})
    await f.wait_status(gql, team.token, waiting["id"], {"WAITING"})
    # One RUNNING at a time (a WAITING run holds no slot), so the third run waits PENDING.
    await container.tenant_admin.set_quota(team.slug, {"max_concurrent_executions": 1})
    tool = await b.tool(gql, team.token)
    slow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [30]))
    running = await f.execute(gql, team.token, slow["id"])
    await f.wait_node(gql, team.token, running["id"], "s0", "RUNNING")
    pending = await f.execute(gql, team.token, slow["id"])
    await asyncio.sleep(0.3)
    assert (await gql.ok("Execution", {"id": pending["id"]}, token=team.token))["execution"][
        "status"
    ] == "PENDING"
    schedule = (
        await gql.ok(
            CREATE,
            {"input": {"flowId": asker["id"], "cron": "* * * * *", "inputs": {"title": "cron"}}},
            token=team.token,
        )
    )["createSchedule"]
    # Another tenant's waiting run and schedule go on.
    theirs = await f.create_flow(gql, other_team.token, approval_flow())
    their_run = await f.execute(gql, other_team.token, theirs["id"], {"title": "x"})
    await f.wait_status(gql, other_team.token, their_run["id"], {"WAITING"})
    before = await rows(container, team)

    started = time.monotonic()
    await container.tenant_admin.suspend(team.slug, "abuse report")
    runs = [running["id"], pending["id"], waiting["id"]]
    while True:
        ended = (await rows(container, team))["executions"]
        if all(ended[i][0] == "CANCELLED" for i in runs):
            break
        assert time.monotonic() - started < 3, ended
        await asyncio.sleep(0.05)
    assert time.monotonic() - started < 1.5  # the running one really stopped, at once
    assert all(ended[i] == ("CANCELLED", "tenant suspended") for i in runs), ended
    assert running["id"] not in container.runtime.runner.active

    # A due schedule does not fire while suspended.
    await make_due(container, schedule["id"], timedelta(seconds=1))
    await asyncio.sleep(1.0)  # five scheduler ticks
    after = await rows(container, team)
    assert set(after["executions"]) == set(before["executions"])  # nothing new, nothing gone
    # Cancelling records the unfinished node runs CANCELLED: rows only come, none go.
    assert all(after["counts"][t] >= n for t, n in before["counts"].items()), after
    assert after["counts"]["schedules"] == before["counts"]["schedules"] == 1
    their = await f.wait_status(gql, other_team.token, their_run["id"], {"WAITING"})
    assert their["status"] == "WAITING"

    await container.tenant_admin.activate(team.slug)
    # Cancelled runs stay cancelled; the schedule missed while suspended fires once.
    fired = await wait_fired(gql, team.token, schedule["id"], None)
    assert fired["lastExecution"]["id"] not in before["executions"]
    for ident in runs:
        got = (await gql.ok("Execution", {"id": ident}, token=team.token))["execution"]
        assert got["status"] == "CANCELLED"
    await asyncio.sleep(0.5)
    new = set((await rows(container, team))["executions"]) - set(before["executions"])
    assert len(new) == 1, new  # one catch-up run, not one per missed minute
    entries = await audit_entries(gql, team)
    assert entries["tenant.quota_changed"]["data"] == {"max_concurrent_executions": 1}
    assert entries["tenant.quota_changed"]["actor"] is None


async def test_a_streaming_chat_reply_is_cancelled(gql: GQL, team: Team, container: Any) -> None:
    provider = await chat._provider(gql, team, "scripted-slow")  # a token every 200 ms
    session = await chat._session(gql, team, llmProviderId=provider)
    async with chat.tokens(gql, team.token, session["id"]) as stream:
        await chat._send(gql, team.token, session["id"], "Talk slowly")
        await stream.next(chat.FIRST_CALL_TIMEOUT)  # its worker is generating it
        started = time.monotonic()
        await container.tenant_admin.suspend(team.slug, "chargeback")
        code, reason = await closed_within(stream.ws, 1.0, started, data_in_flight=True)
        assert (code, reason) == (4403, SUSPENDED)
    assert time.monotonic() - started < 2.5  # suspend waited for the reply to stop
    # Its generation really ends (not only the stored message).
    runner = container.chat_runner
    for _ in range(40):
        if not [t for t in runner._tasks if not t.done()]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the reply's task still runs")
    await container.tenant_admin.activate(team.slug)
    history = await chat._history(gql, team, session["id"])
    stored = [e["node"] for e in history["messages"]["edges"]]
    assert [m["status"] for m in stored] == ["COMPLETED", "CANCELLED"], stored


async def test_a_reply_accepted_just_before_the_suspension_never_generates(
    gql: GQL, team: Team, container: Any, monkeypatch: Any
) -> None:
    """The send committed after the suspension's stop of the tenant's replies listed them:
    its reply is still queued when the tenant is already SUSPENDED. Its claim ends it
    CANCELLED "tenant suspended" instead of generating it."""
    from domain.chat.model import ReplyRef
    from domain.identity import TenantStatus

    provider = await chat._provider(gql, team)
    session = await chat._session(gql, team, llmProviderId=provider)
    queued: list[ReplyRef] = []

    class Queue:  # the queue, holding the reply until its worker takes it
        async def dispatch(self, ref: ReplyRef) -> None:
            queued.append(ref)

    monkeypatch.setattr(container.chat, "_dispatcher", Queue)
    async with chat.tokens(gql, team.token, session["id"]) as stream:
        await chat._send(gql, team.token, session["id"], "SAY: this should never be said")
        (ref,) = queued
        # What `suspend` stores first; its stop of replies had already run (and missed it).
        admin = container.tenant_admin
        await admin._store.set_status(team.tenant_id, TenantStatus.SUSPENDED, "fraud", None)
        await asyncio.wait_for(container.chat_runner.replier.run(ref), 30)
        done = await stream.next(10)
    assert done["done"] and done["error"] == "tenant suspended" and done["index"] == 0, done
    await admin.activate(team.slug)
    history = await chat._history(gql, team, session["id"])
    stored = [e["node"] for e in history["messages"]["edges"]]
    assert [(m["status"], m["content"], m["error"]) for m in stored] == [
        ("COMPLETED", "SAY: this should never be said", None),
        ("CANCELLED", "", "tenant suspended"),
    ], stored
