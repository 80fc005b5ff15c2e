"""Subscriptions over plain HTTP (Apollo's multipart protocol, graphql-sse): the same
auth, replay-then-live and limits as over WebSockets (real server, Postgres, Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, op
from tests.support.http_stream import (
    SSE_ACCEPT,
    collect,
    headers,
    payloads,
    sse_events,
    stream,
)

HEARTBEAT = "subscription { heartbeat(intervalSeconds: 0.1) }"


async def _log(gql: GQL, token: str, execution_id: str) -> list[dict[str, Any]]:
    data = await gql.ok(
        "ExecutionEventLog", {"id": execution_id, "afterSequence": 0, "first": 1000}, token=token
    )
    events: list[dict[str, Any]] = data["execution"]["events"]
    return events


def _events(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for result in results:
        assert not result.get("errors"), result
    return [r["data"]["executionEvents"] for r in results]


def _code(results: list[dict[str, Any]]) -> str:
    assert len(results) == 1, results
    errors = results[0]["errors"]
    assert results[0].get("data") is None, results
    code: str = errors[0]["extensions"]["code"]
    assert errors[0]["extensions"].get("requestId"), errors
    return code


@pytest.fixture
def limits(container: Any) -> Iterator[Any]:
    """The container's settings, with the HTTP stream limits restored after the test."""
    s = container.settings
    saved = (s.http_streams_per_caller, s.http_streams_per_tenant)
    yield s
    s.http_streams_per_caller, s.http_streams_per_tenant = saved


async def test_replay_then_live_with_after_sequence_over_multipart(
    gql: GQL, team: Team, container: Any
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.3, 0.3, 0.3]))
    run = await f.execute(gql, team.token, flow["id"])
    await f.wait_node(gql, team.token, run["id"], "s0", "COMPLETED")  # some events stored
    variables = {"executionId": run["id"], "afterSequence": 2}
    async with stream(gql.http, op("ExecutionEvents"), variables, token=team.token) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("multipart/mixed;boundary=graphql")
        got = _events(await collect(resp))
    log = await _log(gql, team.token, run["id"])
    assert log[-1]["type"] == "EXECUTION_COMPLETED"
    assert got == log[2:], [e["sequence"] for e in got]  # no gap, no duplicate, in order
    # Part of it was live: the run was still going when the stream opened.
    assert await f.wait_status(gql, team.token, run["id"])
    assert len(container.extras["http_streams"]) == 0  # the slot was released


async def test_graphql_sse_streams_the_same_events(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 9})
    await f.wait_status(gql, team.token, run["id"])
    log = await _log(gql, team.token, run["id"])
    variables = {"executionId": run["id"], "afterSequence": 1}
    got: list[dict[str, Any]] = []
    async with stream(
        gql.http, op("ExecutionEvents"), variables, token=team.token, accept=SSE_ACCEPT
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for event, data in sse_events(resp):
            if event == "complete":
                break
            assert event == "next" and data is not None and not data.get("errors"), data
            got.append(data["data"]["executionEvents"])
    assert got == log[1:]


@pytest.mark.parametrize("accept", ["multipart", "sse"])
async def test_authentication_is_required(gql: GQL, team: Team, accept: str) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 1})
    for token in (None, "not-a-token", team.token + "x"):
        if accept == "sse":
            async with stream(
                gql.http,
                op("ExecutionEvents"),
                {"executionId": run["id"]},
                token=token,
                accept=SSE_ACCEPT,
            ) as resp:
                assert resp.status_code == 200
                events = [e async for e in sse_events(resp)]
            assert [e for e, _ in events] == ["next", "complete"], events
            data = events[0][1]
            assert data is not None
            assert data["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", data
            continue
        async with stream(
            gql.http, op("ExecutionEvents"), {"executionId": run["id"]}, token=token
        ) as resp:
            assert resp.status_code == 200
            assert _code(await collect(resp)) == "UNAUTHENTICATED"


async def test_another_teams_execution_is_not_found(gql: GQL, team: Team, other_team: Team) -> None:
    flow = await f.create_flow(gql, other_team.token, f.branching())
    theirs = await f.execute(gql, other_team.token, flow["id"], {"score": 1})
    async with stream(
        gql.http, op("ExecutionEvents"), {"executionId": theirs["id"]}, token=team.token
    ) as resp:
        assert _code(await collect(resp)) == "NOT_FOUND"


async def test_bad_documents_and_arguments_are_graphql_errors(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 1})
    cases = [
        ("subscription { executionEvents(", {}, "BAD_USER_INPUT"),
        ("subscription { nope }", {}, "BAD_USER_INPUT"),
        (op("ExecutionEvents"), {"executionId": run["id"], "afterSequence": -1}, "BAD_USER_INPUT"),
        (op("ExecutionEvents"), {"executionId": "x" * 300}, "NOT_FOUND"),
        # The multipart protocol carries subscriptions only.
        ("query { me { email } }", {}, "BAD_USER_INPUT"),
        ("mutation { logout }", {}, "BAD_USER_INPUT"),
        (None, {}, "BAD_USER_INPUT"),
    ]
    for query, variables, code in cases:
        async with stream(gql.http, query, variables, token=team.token) as resp:
            assert resp.status_code < 500, resp.status_code
            if resp.status_code != 200:  # refused before streaming: a GraphQL error body
                body = await resp.aread()
                assert code in body.decode(), body
                continue
            assert _code(await collect(resp)) == code, query


@contextlib.asynccontextmanager
async def _open(gql: GQL, **credentials: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """A heartbeat stream, open (its first result received) for the block."""
    async with stream(gql.http, HEARTBEAT, **credentials) as resp:
        results = payloads(resp)
        first = await asyncio.wait_for(anext(results), 10)
        yield [first]
        await results.aclose()


async def _refused(gql: GQL, **credentials: Any) -> str:
    async with stream(gql.http, HEARTBEAT, **credentials) as resp:
        return _code(await collect(resp))


async def _settled(streams: Any, count: int) -> bool:
    """Whether the server's count of open streams reaches `count` (a client's close
    reaches the server a moment later)."""
    for _ in range(100):
        if len(streams) == count:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_concurrent_streams_are_bounded_per_caller_and_per_team(
    gql: GQL, team: Team, other_team: Team, limits: Any, container: Any
) -> None:
    limits.http_streams_per_caller, limits.http_streams_per_tenant = 2, 3
    streams = container.extras["http_streams"]
    member = await member_token(gql, team, "MEMBER")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            first = await stack.enter_async_context(_open(gql, token=team.token))
            assert first[0]["data"]["heartbeat"], first
        assert await _refused(gql, token=team.token) == "LIMIT_EXCEEDED"  # per caller
        await stack.enter_async_context(_open(gql, token=member))  # the team's third
        assert await _refused(gql, token=member) == "LIMIT_EXCEEDED"  # per team
        async with _open(gql, token=other_team.token):  # other teams are not affected
            pass
        assert await _settled(streams, 3)  # the other team's, closed, is released
    assert await _settled(streams, 0)  # closed by the client: the slots are free again
    async with _open(gql, token=team.token), _open(gql, token=team.token):
        pass


async def test_a_revoked_api_key_ends_its_stream(gql: GQL, team: Team) -> None:
    created = await gql.ok("CreateApiKey", {"name": "stream", "role": "VIEWER"}, token=team.token)
    key = created["createApiKey"]
    async with stream(gql.http, HEARTBEAT, api_key=key["secret"]) as resp:
        results = payloads(resp)
        first = await asyncio.wait_for(anext(results), 10)
        assert first["data"]["heartbeat"]
        await gql.ok("RevokeApiKey", {"id": key["id"]}, token=team.token)

        async def until_error() -> dict[str, Any]:
            async for result in results:
                if result.get("errors"):
                    return result
            raise AssertionError("the stream ended without an error")

        error = await asyncio.wait_for(until_error(), 10)
        assert error["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", error
        rest = [r async for r in results]
        assert rest == [], rest  # nothing after the error: the stream ended


async def test_a_suspension_ends_the_tenants_streams_as_forbidden(
    gql: GQL, team: Team, container: Any
) -> None:
    async with stream(gql.http, HEARTBEAT, token=team.token) as resp:
        results = payloads(resp)
        first = await asyncio.wait_for(anext(results), 10)
        assert first["data"]["heartbeat"]
        await container.tenant_admin.suspend(team.slug, "stream test")
        try:

            async def until_error() -> dict[str, Any]:
                async for result in results:
                    if result.get("errors"):
                        return result
                raise AssertionError("the stream ended without an error")

            error = await asyncio.wait_for(until_error(), 10)
        finally:
            await container.tenant_admin.activate(team.slug)
    extensions = error["errors"][0]["extensions"]
    assert extensions["code"] == "FORBIDDEN", error
    assert extensions["reason"] == "TENANT_SUSPENDED", error


async def test_a_stalled_client_is_cut_off_and_frees_its_slot(
    container: Any, team: Team, limits: Any
) -> None:
    """A client that stops reading: the response ends after the send timeout instead of
    holding the stream (driven at the ASGI level: the test plays the stalled socket)."""
    from server.app import create_app

    extras = dict(container.extras)
    app = create_app(container)
    streams = container.extras["http_streams"]
    container.extras.update(extras)  # the served app's counters stay the fixtures' ones
    saved = limits.http_stream_send_timeout_seconds
    limits.http_stream_send_timeout_seconds = 0.5
    body = httpx.Request("POST", "/", json={"query": HEARTBEAT}).content
    forever = asyncio.Event()
    sent: list[dict[str, Any]] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await forever.wait()  # the client neither sends nor disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) > 3:
            await forever.wait()  # the socket's buffers are full: nothing is taken

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers(team.token).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    try:
        await asyncio.wait_for(app(scope, receive, send), 10)
    finally:
        limits.http_stream_send_timeout_seconds = saved
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert len(streams) == 0  # the slot is free, the heartbeat subscription closed


async def test_draining_ends_open_streams_with_service_unavailable(
    gql: GQL, team: Team, container: Any
) -> None:
    streams = container.extras["http_streams"]
    async with stream(gql.http, HEARTBEAT, token=team.token) as resp:
        results = payloads(resp)
        assert (await asyncio.wait_for(anext(results), 10))["data"]["heartbeat"]
        streams.end_all()  # what the lifecycle's drain calls (server/lifecycle.py)

        async def rest() -> list[dict[str, Any]]:
            return [r async for r in results if r.get("errors")]

        errors = await asyncio.wait_for(rest(), 10)  # and then the stream ends
    assert [e["errors"][0]["extensions"]["code"] for e in errors] == ["SERVICE_UNAVAILABLE"]
    assert await _settled(streams, 0)


def test_an_oversized_part_keeps_its_multipart_envelope() -> None:
    from server.responses import encode_capped

    encoded = encode_capped({"payload": {"data": {"x": "y" * 20_000}}}, 10_000)
    part = json.loads(encoded)
    assert part["payload"]["data"] is None
    assert part["payload"]["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"
