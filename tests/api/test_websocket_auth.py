"""Subscriptions authenticate through connection_init, on both protocols."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import Team
from tests.support.client import GQL, op
from tests.support.ws import init, recv, subscribe


async def test_token_authenticates_transport_ws_subscription(gql: GQL, team: Team) -> None:
    async with gql.connect_ws() as ws:
        ack = await init(ws, {"authorization": f"Bearer {team.token}"})
        assert ack["type"] == "connection_ack"
        await subscribe(ws, "1", op("Heartbeat"), {"intervalSeconds": 0.05})
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
        await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
        await subscribe(ws, "1", op("Heartbeat"), {"intervalSeconds": 0.05})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg.get("type") not in ("next", "connection_ack"), msg
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_subscribe_before_connection_init_is_refused(gql: GQL) -> None:
    async with gql.connect_ws() as ws:
        await subscribe(ws, "1", op("Heartbeat"), {"intervalSeconds": 0.05})
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg.get("type") != "next", msg
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_legacy_graphql_ws_without_init_gets_no_data(gql: GQL) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        start = {
            "id": "1",
            "type": "start",
            "payload": {"query": op("Heartbeat"), "variables": {"intervalSeconds": 0.05}},
        }
        await ws.send(json.dumps(start))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg.get("type") != "data", msg
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_legacy_graphql_ws_with_bad_token_gets_no_data(gql: GQL) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": "Bearer nope"}})
        )
        start = {
            "id": "1",
            "type": "start",
            "payload": {"query": op("Heartbeat"), "variables": {"intervalSeconds": 0.05}},
        }
        await ws.send(json.dumps(start))
        with pytest.raises(ConnectionClosed):
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg.get("type") not in ("data", "connection_ack"), msg


async def test_legacy_graphql_ws_with_token_works(gql: GQL, team: Team) -> None:
    async with gql.connect_ws("graphql-ws") as ws:
        await ws.send(
            json.dumps(
                {"type": "connection_init", "payload": {"authorization": f"Bearer {team.token}"}}
            )
        )
        assert (await recv(ws))["type"] == "connection_ack"
        start = {
            "id": "1",
            "type": "start",
            "payload": {"query": op("Heartbeat"), "variables": {"intervalSeconds": 0.05}},
        }
        await ws.send(json.dumps(start))
        msg = await recv(ws)
        assert msg["type"] == "data" and msg["payload"]["data"]["heartbeat"]


async def test_deactivated_user_cannot_open_a_socket(gql: GQL, team: Team) -> None:
    from tests.conftest import PASSWORD

    created = await gql.ok(
        "CreateUser",
        {"input": {"email": "ws-gone@example.com", "password": PASSWORD, "role": "VIEWER"}},
        token=team.token,
    )
    login = (
        await gql.ok(
            "Login",
            {
                "input": {
                    "email": "ws-gone@example.com",
                    "password": PASSWORD,
                    "tenantSlug": team.slug,
                }
            },
        )
    )["login"]
    await gql.ok("DeactivateUser", {"id": created["createUser"]["id"]}, token=team.token)
    async with gql.connect_ws() as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connection_init",
                    "payload": {"authorization": f"Bearer {login['accessToken']}"},
                }
            )
        )
        with pytest.raises(ConnectionClosed):
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg.get("type") != "connection_ack", msg
