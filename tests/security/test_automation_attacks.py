"""Attacks on schedules and webhooks: receivers that never finish answering, hostile
URLs, pathological cron expressions and timezones, other tenants' ids."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from domain.egress import EgressPolicy, EgressRefused, IpAddress
from domain.webhooks import SendFailed, SendRefused
from runtime.webhook_sender import EgressResolver, HttpWebhookTransport
from tests.conftest import Team, add_member
from tests.support.client import GQL, error_code

SECRET = "whsec_" + "A" * 44
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        for task in tasks:
            task.cancel()
        server.close()


async def _stream_forever(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:  # a chunk well within every per-read timeout, for ever
        writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)


async def _drip_headers(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:
        writer.write(b"X-Slow: 1\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


async def _never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)


def _transport() -> HttpWebhookTransport:
    loopback = EgressPolicy.build(allow_private=False, allowlist=["127.0.0.1"])
    return HttpWebhookTransport(EgressResolver(loopback), timeout_seconds=1.0)


@pytest.mark.parametrize("handler", [_stream_forever, _drip_headers, _never_answer])
async def test_a_receiver_that_never_finishes_answering_is_cut_off(handler: Handler) -> None:
    # Before: httpx's timeouts are per read, so a body (or headers) trickling in forever
    # held the delivery, and all it read in memory, without end.
    transport = _transport()
    started = time.monotonic()
    async with raw_server(handler) as url:
        try:
            status: int | None = await asyncio.wait_for(
                transport.send(url, SECRET, "msg_1", b"{}"), 10
            )
        except SendFailed:
            status = None
        finally:
            await transport.aclose()
    assert time.monotonic() - started < 4, "the delivery outlived its timeout"
    # A 2xx status line is an answer: delivered, body unread.
    assert status in (None, 200)


@pytest.mark.parametrize(
    "url",
    [
        "http://0x7f.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://localhost./",
        "http://LOCALHOST/",
        "http://127.0.0.1@evil.example/",
        "http://evil.example@127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[fe80::1%25eth0]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://0/",
        "http://metadata.google.internal./",
        "file:///etc/passwd",
        "gopher://127.0.0.1/",
    ],
)
async def test_hostile_webhook_urls_are_refused(url: str) -> None:
    strict = EgressResolver(EgressPolicy.build(allow_private=False))
    with pytest.raises(EgressRefused):
        await strict.check(url)


CREATE_SCHEDULE = "CreateSchedule"


async def test_pathological_cron_and_timezones_are_refused_quickly(gql: GQL, team: Team) -> None:
    many = ",".join(["0-59/1"] * 5000)
    for cron, tz in (
        (many + " * * * *", "UTC"),
        ("0 0 30 2 *", "UTC"),  # never
        ("0 0 31 4 *", "UTC"),
        ("*/0 * * * *", "UTC"),
        ("0 0 * * * *", "UTC"),
        ("@reboot", "UTC"),
        ("* * * * *", "../../../../etc/passwd"),
        ("* * * * *", "/etc/localtime"),
        ("* * * * *", "x" * 500_000),
        ("* * * * *", "Europe/Berlin\x00"),
    ):
        started = time.monotonic()
        body = await gql.op(
            CREATE_SCHEDULE,
            {
                "input": {
                    "flowId": "00000000-0000-0000-0000-000000000000",
                    "cron": cron,
                    "timezone": tz,
                }
            },
            token=team.token,
        )
        assert time.monotonic() - started < 2, (cron[:30], tz[:30])
        assert error_code(body) == "BAD_USER_INPUT", (cron[:30], tz[:30], str(body)[:300])


async def test_viewers_and_members_cannot_touch_what_they_may_not(
    gql: GQL, team: Team, other_team: Team
) -> None:
    viewer = await add_member(gql, team, "VIEWER")
    member = await add_member(gql, team, "MEMBER")
    body = await gql.op(
        CREATE_SCHEDULE,
        {"input": {"flowId": "00000000-0000-0000-0000-000000000000", "cron": "* * * * *"}},
        token=viewer.token,
    )
    assert error_code(body) == "FORBIDDEN", body
    hook = {"input": {"url": "http://127.0.0.1:9/", "events": ["EXECUTION_FAILED"]}}
    body = await gql.op("CreateWebhook", hook, token=member.token)
    assert error_code(body) == "FORBIDDEN", body
    body = await gql.raw(
        "{ webhooks(first: 5) { edges { node { id } } } }", None, token=member.token
    )
    assert error_code(body) == "FORBIDDEN", body


class _Rebinding(EgressResolver):
    """A DNS that answers a public address to the first lookup (the check), then the
    name's real answer (the system's: `vm`, `localhost`... are 127.0.0.1 here)."""

    def __init__(self, policy: EgressPolicy) -> None:
        super().__init__(policy)
        self.lookups = 0

    async def addresses(self, host: str, port: int) -> list[IpAddress]:
        self.lookups += 1
        if self.lookups == 1:
            return [ipaddress.ip_address("93.184.216.34")]
        return await super().addresses(host, port)


async def test_a_name_rebound_to_a_private_address_after_the_check_is_not_called() -> None:
    # Before: the check resolved the name, then httpx resolved it again to connect: a
    # DNS answer changed in between (rebinding) reached loopback.
    host = socket.gethostname()
    try:
        real = await EgressResolver(EgressPolicy.build(allow_private=True)).addresses(host, 80)
    except EgressRefused:
        real = []
    if not real or any(a.is_global for a in real) or not all(a.is_loopback for a in real):
        pytest.skip("this machine's name does not resolve to loopback only")
    hits: list[bytes] = []

    async def record(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(b"hit")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with raw_server(record) as url:
        port = url.split(":")[2].split("/")[0]
        transport = HttpWebhookTransport(
            _Rebinding(EgressPolicy.build(allow_private=False)), timeout_seconds=2
        )
        try:
            with pytest.raises(SendRefused):
                await transport.send(f"http://{host}:{port}/hook", SECRET, "msg_1", b"{}")
        finally:
            await transport.aclose()
    assert hits == []
