"""Every error body names its request: `extensions.requestId` equals the `X-Request-ID`
response header (the id the logs carry), for GraphQL errors, the plain 400 / 413 bodies,
a response over the size cap and WebSocket errors, also in the masked production profile."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import Team, register, serving
from tests.support import builders as b
from tests.support import ws as w
from tests.support.client import GQL


@asynccontextmanager
async def app_with(settings: Any, **updates: Any) -> AsyncIterator[GQL]:
    from server.app import create_app
    from server.bootstrap import build_container

    prefix = f"{settings.redis_prefix}rid{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"redis_prefix": prefix, **updates})
    async with (
        serving(create_app(build_container(own, rate_limits={}))) as url,
        aclosing(GQL(url)) as client,
    ):
        yield client


def _ids(resp: httpx.Response) -> tuple[str, list[str]]:
    """The response's X-Request-ID header and the requestId of each of its errors."""
    header = resp.headers["x-request-id"]
    errors = resp.json()["errors"]
    assert errors, resp.text
    return header, [e["extensions"]["requestId"] for e in errors]


def _all_match(resp: httpx.Response) -> str:
    header, ids = _ids(resp)
    assert header and ids == [header] * len(ids), (header, resp.text)
    return header


async def _every_kind_of_error(client: GQL, team: Team) -> None:
    http = client.http
    auth = {"Authorization": f"Bearer {team.token}"}
    # Parse error, validation error, resolver error, two errors in one body, no credentials.
    for query in ("{ tenant { ", "{ nosuchfield }", "{ nope1 nope2 }"):
        _all_match(await http.post("/graphql", json={"query": query}, headers=auth))
    missing = f'{{ tool(id: "{uuid.uuid4()}") {{ id }} }}'
    _all_match(await http.post("/graphql", json={"query": missing}, headers=auth))
    _all_match(await http.post("/graphql", json={"query": "{ tenant { id } }"}))
    # GET, and a client-chosen id is echoed in both places.
    resp = await http.get(
        "/graphql",
        params={"query": "{ nosuchfield }"},
        headers={**auth, "X-Request-ID": "trace-42"},
    )
    assert _all_match(resp) == "trace-42"
    # The plain bodies: not JSON (400), too deep (400), not a GraphQL body (400), too big (413).
    for content in (b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"query": 7}'):
        resp = await http.post(
            "/graphql", content=content, headers={**auth, "content-type": "application/json"}
        )
        assert resp.status_code in (400, 413), resp.text
        _all_match(resp)
    resp = await http.post("/graphql", content=b"x" * 1_100_000, headers=auth)
    assert resp.status_code == 413
    _all_match(resp)


async def test_every_error_carries_the_request_id(gql: GQL, team: Team) -> None:
    await _every_kind_of_error(gql, team)


async def test_the_production_profile_keeps_request_ids_in_masked_errors(settings: Any) -> None:
    async with app_with(settings, env="production", max_response_bytes=10_000) as client:
        team = await register(client)
        await _every_kind_of_error(client, team)
        # A result over the response cap is replaced whole; the replacement names the request.
        await b.tool(client, team.token, description="d" * 4000)
        await b.tool(client, team.token, description="d" * 4000)
        await b.tool(client, team.token, description="d" * 4000)
        resp = await client.http.post(
            "/graphql",
            json={"query": "{ tools(first: 10) { edges { node { id description } } } }"},
            headers={"Authorization": f"Bearer {team.token}"},
        )
        assert resp.json()["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED", resp.text
        _all_match(resp)


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_websocket_errors_carry_the_connection_request_id(
    gql: GQL, team: Team, protocol: str
) -> None:
    async with gql.connect_ws(protocol) as ws:
        header = ws.response.headers["x-request-id"]
        assert header
        assert (await w.init(ws, await w.bearer_payload(team.token)))["type"] == "connection_ack"
        message = {"id": "1", "payload": {"query": "subscription { nosuchfield }"}}
        message["type"] = "subscribe" if protocol == "graphql-transport-ws" else "start"
        await ws.send(json.dumps(message))
        msg = await w.recv(ws)
        payload = msg["payload"]
        errors = payload if isinstance(payload, list) else payload.get("errors", [payload])
        assert errors and all(e["extensions"]["requestId"] == header for e in errors), msg


async def test_a_refused_legacy_connection_names_its_request(gql: GQL) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        header = ws.response.headers["x-request-id"]
        msg = await w.init(ws, {"authorization": "Bearer not-a-token"})
        assert msg["type"] == "connection_error", msg
        assert msg["payload"]["requestId"] == header, msg
