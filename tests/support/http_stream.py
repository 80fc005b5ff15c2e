"""Subscriptions over plain HTTP from tests: Apollo's multipart protocol and graphql-sse,
read with httpx's streaming API (real server, real sockets)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

MULTIPART_ACCEPT = 'multipart/mixed;boundary="graphql";subscriptionSpec=1.0,application/json'
SSE_ACCEPT = "text/event-stream"
_DELIMITER = b"\r\n--graphql"


def headers(
    token: str | None = None, api_key: str | None = None, accept: str = MULTIPART_ACCEPT
) -> dict[str, str]:
    found = {"accept": accept, "content-type": "application/json"}
    if token:
        found["authorization"] = f"Bearer {token}"
    if api_key:
        found["x-api-key"] = api_key
    return found


@asynccontextmanager
async def stream(
    http: httpx.AsyncClient,
    query: str | None,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    api_key: str | None = None,
    accept: str = MULTIPART_ACCEPT,
) -> AsyncIterator[httpx.Response]:
    body = {"query": query, "variables": variables or {}}
    request = http.build_request(
        "POST", "/graphql", json=body, headers=headers(token, api_key, accept)
    )
    response = await http.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


async def parts(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON parts of a multipart subscription response (heartbeats `{}` included)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if buffer.startswith(b"--graphql\r\n"):  # a preamble delimiter (optional)
            buffer = buffer[len(b"--graphql") :]
        while True:
            if buffer.startswith(b"--"):
                return  # the closing delimiter: the server ended the stream
            index = buffer.find(_DELIMITER)
            if index < 0:
                break
            part, buffer = buffer[:index], buffer[index + len(_DELIMITER) :]
            _, _, body = part.partition(b"\r\n\r\n")
            if body.strip():
                yield json.loads(body)


async def payloads(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Results of a multipart subscription, without heartbeats."""
    async for part in parts(response):
        assert set(part) <= {"payload", "errors"}, part
        if "payload" in part:
            yield part["payload"]
        elif "errors" in part:
            yield {"data": None, "errors": part["errors"]}


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
    """(event, data) of a graphql-sse stream until `complete`."""
    event, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue  # a heartbeat comment
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data = line.partition(":")[2].strip()
        elif not line:
            if event == "complete":
                yield event, None
                return
            if event:
                yield event, json.loads(data)
            event, data = "", ""


async def collect(response: httpx.Response, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every result of a multipart stream until the server ends it."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async for payload in payloads(response):
            got.append(payload)

    await asyncio.wait_for(read(), timeout)
    return got
