"""graphql-transport-ws client helpers over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed


async def send_init(ws: ClientConnection, payload: object) -> None:
    """`connection_init` (both protocols) without waiting for the answer."""
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))


async def init(ws: ClientConnection, payload: dict[str, Any] | None) -> dict[str, Any]:
    await send_init(ws, payload)
    return await recv(ws)


async def start(
    ws: ClientConnection, sub_id: str, query: str, variables: dict[str, Any] | None = None
) -> None:
    """Subscribe with the legacy graphql-ws protocol's `start` message."""
    payload = {"query": query, "variables": variables or {}}
    await ws.send(json.dumps({"id": sub_id, "type": "start", "payload": payload}))


async def close_code(ws: ClientConnection, *refused: str, timeout: float = 5.0) -> int | None:
    """Read until the server closes the socket, none of its messages being of a `refused`
    type; the close code it sent."""
    try:
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
            assert msg.get("type") not in refused, msg
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def subscribe(
    ws: ClientConnection, sub_id: str, query: str, variables: dict[str, Any] | None = None
) -> None:
    await ws.send(
        json.dumps(
            {
                "id": sub_id,
                "type": "subscribe",
                "payload": {"query": query, "variables": variables or {}},
            }
        )
    )


async def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if msg.get("type") not in ("ping", "pong", "ka"):
            return msg


async def bearer_payload(token: str) -> dict[str, Any]:
    return {"authorization": f"Bearer {token}"}
