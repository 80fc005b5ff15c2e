"""What PostgreSQL itself receives for a request, counted at the wire.

The API's connections go through a small TCP proxy that reads the frontend protocol
and counts the messages that run something: `Q` (a simple query: BEGIN, ROLLBACK,
COMMIT, ...) and `E` (an Execute of the extended protocol: every prepared statement
run). Parse / Bind / Describe / Sync only prepare or frame those, so a statement the
driver prepares again on another pooled connection does not count twice. SQLAlchemy's
own events see neither the driver's BEGIN / ROLLBACK nor what other drivers do; this
does.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import event

from tests.support import builders as b
from tests.support.client import GQL, op

_UNTYPED = {80877103, 80877104}  # SSLRequest, GSSENCRequest: the startup comes after
_RUNS = (b"Q", b"E")


class WireCounter:
    """A TCP proxy in front of PostgreSQL counting frontend message types."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.seen: Counter[bytes] = Counter()
        self.queries: list[bytes] = []  # the text of each `Q`, for failure messages
        self.sql: list[str] = []  # what SQLAlchemy ran meanwhile, for failure messages
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def statements(self) -> int:
        return sum(self.seen[t] for t in _RUNS)

    def reset(self) -> None:
        self.seen.clear()
        self.queries.clear()
        self.sql.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        tasks = [
            asyncio.create_task(self._frontend(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.close()

    async def _frontend(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        started = False
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if not started:
                    head = await reader.readexactly(8)
                    length, code = struct.unpack("!ii", head)
                    body = await reader.readexactly(length - 8)
                    started = code not in _UNTYPED
                    up.write(head + body)
                else:
                    head = await reader.readexactly(5)
                    kind, length = head[:1], struct.unpack("!i", head[1:])[0]
                    body = await reader.readexactly(length - 4)
                    self.seen[kind] += 1
                    if kind == b"Q":
                        self.queries.append(body.rstrip(b"\0"))
                    up.write(head + body)
                await up.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _through(url: str, port: int) -> str:
    """`url` with the proxy as its host; no TLS, so the proxy can read the protocol."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("ssl"))
    return urlunsplit(
        parts._replace(
            netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host,
            query=(query + "&" if query else "") + "ssl=disable",
        )
    )


@pytest.fixture(scope="module")
async def wire(settings: Any) -> AsyncIterator[tuple[WireCounter, Any]]:
    """The API (its own container) on a database connection through the counter; served
    through httpx's ASGI transport, without the lifespan, so no background loop (the
    scheduler, webhook delivery) sends statements while a request is counted."""
    from server.app import create_app
    from server.bootstrap import build_container

    parts = urlsplit(settings.database_url)
    counter = WireCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    await counter.start()
    own = settings.model_copy(
        update={
            "database_url": _through(settings.database_url, counter.port),
            "redis_prefix": f"cgwire{secrets.token_hex(4)}",
            # Steady state: the caller's principal stays known however slow the machine.
            "principal_cache_seconds": 60.0,
        }
    )
    container = build_container(own, rate_limits={})
    app = create_app(container)
    sql = counter.sql

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sql.append(statement[:200])

    event.listen(container.db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield counter, app
    finally:
        await container.aclose()
        await counter.stop()


async def _flows(gql: GQL, token: str, count: int) -> None:
    tools = [await b.tool(gql, token) for _ in range(3)]
    agents = [
        await b.agent(gql, token, toolIds=[t["id"] for t in tools[: i % 3 + 1]]) for i in range(3)
    ]
    crew = await b.crew(gql, token, [a["id"] for a in agents])
    for start in range(0, count, 10):  # ten at a time: the setup is most of the test
        await asyncio.gather(
            *(
                b.flow(gql, token, agents[i % 3]["id"], crew["id"], tools[i % 3]["id"])
                for i in range(start, min(count, start + 10))
            )
        )


async def _register(gql: GQL) -> str:
    email = f"wire{secrets.token_hex(4)}@example.com"
    data = await gql.ok(
        "Register",
        {"input": {"tenantName": "wire", "email": email, "password": "correct horse battery"}},
    )
    token: str = data["register"]["accessToken"]
    return token


async def _listing(client: httpx.AsyncClient, token: str, first: int) -> dict[str, Any]:
    body = {"query": op("FlowsWithReferences"), "variables": {"first": first}}
    response = await client.post(
        "/graphql", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    data: dict[str, Any] = response.json()
    assert "errors" not in data, data
    return data


async def _steady_statements(
    counter: WireCounter, client: httpx.AsyncClient, token: str, first: int
) -> tuple[int, Counter[bytes], list[bytes]]:
    for _ in range(5):  # connections opened, statements prepared, the principal known
        await _listing(client, token, first)
    counter.reset()
    data = await _listing(client, token, first)
    edges = data["data"]["flows"]["edges"]
    assert len(edges) == first
    node = edges[0]["node"]
    assert node["agents"] and node["agents"][0]["tools"] and node["tools"] and node["crews"]
    assert not counter.queries, f"simple queries (transaction control?): {counter.queries}"
    return counter.statements, Counter(counter.seen), list(counter.sql)


async def test_flows_listing_sends_at_most_six_statements_whatever_the_count(
    wire: tuple[WireCounter, Any],
) -> None:
    counter, app = wire
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://wire") as client:
        gql = GQL("http://wire")
        await gql.http.aclose()
        gql.http = client  # the same requests, to the app counted at the wire
        small, big = await _register(gql), await _register(gql)
        await _flows(gql, small, 5)
        await _flows(gql, big, 100)
        few, few_seen, few_sql = await _steady_statements(counter, client, small, 5)
        many, many_seen, many_sql = await _steady_statements(counter, client, big, 100)
    detail = f"5 flows: {few} {dict(few_seen)} {few_sql}; 100: {many} {dict(many_seen)} {many_sql}"
    # The proxy saw the traffic at all (a broken count would pass the bound trivially).
    assert few >= 3 and many >= 3, detail
    assert few <= 6 and many <= 6, detail
    assert many == few, detail

    # A write still runs in one transaction: BEGIN before its first write, then COMMIT.
    async with httpx.AsyncClient(transport=transport, base_url="http://wire") as client:
        gql = GQL("http://wire")
        await gql.http.aclose()
        gql.http = client
        counter.reset()
        await b.tool(gql, small)
    control = [q.strip().rstrip(b";").upper() for q in counter.queries]
    assert control and control[0].startswith(b"BEGIN") and control[-1] == b"COMMIT", control
