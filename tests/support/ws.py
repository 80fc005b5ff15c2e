"""graphql-transport-ws client helpers over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection


async def init(ws: ClientConnection, payload: dict[str, Any] | None) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    return await recv(ws)


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
