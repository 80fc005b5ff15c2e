"""Subscriptions authenticate through connection_init, on both protocols."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Team, add_member
from tests.support.client import GQL, op
from tests.support.ws import close_code, init, recv, send_init, start, subscribe

HEARTBEAT = {"intervalSeconds": 0.05}


async def test_token_authenticates_transport_ws_subscription(gql: GQL, team: Team) -> None:
    async with gql.connect_ws() as ws:
        ack = await init(ws, {"authorization": f"Bearer {team.token}"})
        assert ack["type"] == "connection_ack"
        await subscribe(ws, "1", op("Heartbeat"), HEARTBEAT)
        first = await recv(ws)
        second = await recv(ws)
        assert first["type"] == second["type"] == "next"
        assert first["id"] == "1"
        assert first["payload"]["data"]["heartbeat"] < second["payload"]["data"]["heartbeat"]
        await ws.send(json.dumps({"id": "1", "type": "complete"}))


async def test_api_key_authenticates_transport_ws(gql: GQL, team: Team) -> None:
    key = (await gql.ok("CreateApiKey", {"name": "dash", "role": "VIEWER"}, token=team.token))[
        "createApiKey"
    ]
    async with gql.connect_ws() as ws:
        assert (await init(ws, {"X-API-Key": key["secret"]}))["type"] == "connection_ack"


@pytest.mark.parametrize(
    "payload", [None, {"authorization": "Bearer garbage"}, {"authorization": 42}]
)
async def test_bad_connection_init_is_closed_without_data(gql: GQL, payload: object) -> None:
    async with gql.connect_ws() as ws:
        await send_init(ws, payload)
        await subscribe(ws, "1", op("Heartbeat"), HEARTBEAT)
        assert await close_code(ws, "next", "connection_ack") == 4403


async def test_subscribe_before_connection_init_is_refused(gql: GQL) -> None:
    async with gql.connect_ws() as ws:
        await subscribe(ws, "1", op("Heartbeat"), HEARTBEAT)
        assert await close_code(ws, "next") == 4401


async def test_legacy_graphql_ws_without_init_gets_no_data(gql: GQL) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        await start(ws, "1", op("Heartbeat"), HEARTBEAT)
        assert await close_code(ws, "data") == 4401


async def test_legacy_graphql_ws_with_bad_token_gets_no_data(gql: GQL) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        await send_init(ws, {"authorization": "Bearer nope"})
        await start(ws, "1", op("Heartbeat"), HEARTBEAT)
        await close_code(ws, "data", "connection_ack")


async def test_legacy_graphql_ws_with_token_works(gql: GQL, team: Team) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        assert (await init(ws, {"authorization": f"Bearer {team.token}"}))["type"] == (
            "connection_ack"
        )
        await start(ws, "1", op("Heartbeat"), HEARTBEAT)
        msg = await recv(ws)
        assert msg["type"] == "data" and msg["payload"]["data"]["heartbeat"]


async def test_deactivated_user_cannot_open_a_socket(gql: GQL, team: Team) -> None:
    gone = await add_member(gql, team, "VIEWER", "ws-gone@example.com")
    await gql.ok("DeactivateUser", {"id": gone.id}, token=team.token)
    async with gql.connect_ws() as ws:
        await send_init(ws, {"authorization": f"Bearer {gone.token}"})
        await close_code(ws, "connection_ack")


async def _close(ws: Any) -> tuple[int, str]:
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert msg.get("type") != "connection_ack", msg
    except ConnectionClosed as closed:
        assert closed.rcvd is not None
        return closed.rcvd.code, closed.rcvd.reason


async def test_a_suspended_tenants_connection_init_closes_saying_so(
    gql: GQL, team: Team, container: Any
) -> None:
    key = (await gql.ok("CreateApiKey", {"name": "ci", "role": "MEMBER"}, token=team.token))[
        "createApiKey"
    ]["secret"]
    await container.tenant_admin.suspend(team.slug, "unpaid invoice")
    try:
        for payload in ({"authorization": f"Bearer {team.token}"}, {"x-api-key": key}):
            async with gql.connect_ws() as ws:
                await send_init(ws, payload)
                assert await _close(ws) == (4403, "TENANT_SUSPENDED")
        # Bad credentials still say only that they are refused.
        async with gql.connect_ws() as ws:
            await send_init(ws, {"authorization": "Bearer garbage"})
            assert await _close(ws) == (4403, "Forbidden")
    finally:
        await container.tenant_admin.activate(team.slug)
    async with gql.connect_ws() as ws:
        assert (await init(ws, {"authorization": f"Bearer {team.token}"}))["type"] == (
            "connection_ack"
        )
        await send_init(ws, {"authorization": f"Bearer {team.token}"})
        assert await _close(ws) == (4429, "Too many initialisation requests")
