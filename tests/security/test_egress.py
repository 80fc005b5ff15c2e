"""Egress policy: LLM base URLs may not reach loopback, private, link-local or metadata
addresses unless the operator allows it (laptop profile) or allow-lists them.

Unit tests of `domain/egress.py`, then the API: a production-like server (private
addresses refused, one loopback address allow-listed) beside the session's laptop one."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest

from domain.egress import EgressPolicy, EgressRefused, literal_address
from domain.llm import LlmCallFailed, LlmRequest, LlmTarget
from runtime.litellm_client import LiteLlmClient
from tests.conftest import Team, register, serving
from tests.support.client import GQL, error_code

LAPTOP = EgressPolicy.build(allow_private=True)
PRODUCTION = EgressPolicy.build(allow_private=False)

# (address, allowed in laptop, allowed in production)
ADDRESSES = [
    ("8.8.8.8", True, True),
    ("1.1.1.1", True, True),
    ("2606:4700:4700::1111", True, True),
    ("127.0.0.1", True, False),
    ("127.1.2.3", True, False),
    ("::1", True, False),
    ("::ffff:127.0.0.1", True, False),
    ("::ffff:8.8.8.8", True, True),
    ("::127.0.0.1", True, False),  # IPv4-compatible
    ("10.0.0.1", True, False),
    ("10.255.255.255", True, False),
    ("172.16.0.1", True, False),
    ("172.31.255.1", True, False),
    ("192.168.1.1", True, False),
    ("100.64.0.1", True, False),  # CGNAT
    ("100.100.100.200", True, False),  # Alibaba metadata (CGNAT)
    ("fc00::1", True, False),
    ("fd12:3456::1", True, False),
    ("192.0.2.1", True, False),  # documentation
    ("169.254.169.254", False, False),  # cloud metadata
    ("169.254.1.1", False, False),
    ("::ffff:169.254.169.254", False, False),
    ("64:ff9b::a9fe:a9fe", False, False),  # NAT64 of 169.254.169.254
    ("2002:a9fe:a9fe::", False, False),  # 6to4 of 169.254.169.254
    ("fd00:ec2::254", False, False),  # AWS metadata over IPv6
    ("fe80::1", False, False),
    ("0.0.0.0", False, False),
    ("::", False, False),
    ("224.0.0.1", False, False),
    ("239.255.255.250", False, False),
    ("ff02::1", False, False),
    ("255.255.255.255", False, False),
    ("240.0.0.1", False, False),
]


@pytest.mark.parametrize(("address", "laptop", "production"), ADDRESSES)
def test_addresses(address: str, laptop: bool, production: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert (LAPTOP.refusal(ip) is None) is laptop, LAPTOP.refusal(ip)
    assert (PRODUCTION.refusal(ip) is None) is production, PRODUCTION.refusal(ip)


def test_allow_list_by_cidr_and_host() -> None:
    policy = EgressPolicy.build(
        allow_private=False,
        allowlist=["10.1.0.0/16", " 169.254.169.254 ", "ollama.internal", "*.corp.example", ""],
    )
    assert policy.refusal(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.1.2.3")) is None
    assert policy.refusal(ipaddress.ip_address("10.2.0.1")) is not None
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) is None
    loopback = [ipaddress.ip_address("127.0.0.1")]
    policy.check_addresses("ollama.internal", loopback)
    policy.check_addresses("gpu.corp.example", loopback)
    with pytest.raises(EgressRefused, match="loopback"):
        policy.check_addresses("corp.example.evil", loopback)
    # One refused address among public ones is enough to refuse.
    mixed = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.9.9.9")]
    with pytest.raises(EgressRefused, match="private"):
        policy.check_addresses("api.example.com", mixed)
    with pytest.raises(ValueError, match="neither a CIDR nor a host"):
        EgressPolicy.build(allow_private=False, allowlist=["http://x/"])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "http://user:pw@example.com/",
        "http://127.0.0.1\\@example.com/",
        "http://exa mple.com/",
        "http:///v1",
        "http://example.com:99999/",
    ],
)
def test_urls_refused_in_every_profile(url: str) -> None:
    for policy in (LAPTOP, PRODUCTION):
        with pytest.raises(EgressRefused):
            policy.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:11434/v1",
        "http://[::1]:8000/v1",
        "http://2130706433/v1",  # 127.0.0.1 in the resolver's shorthand
        "http://0x7f.1/v1",
        "http://127.1/v1",
        "http://10.0.0.5/v1",
        "http://localhost:11434",
        "http://LOCALHOST./v1",
        "http://foo.localhost/v1",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_internal_urls_refused_when_written_in_production(url: str) -> None:
    with pytest.raises(EgressRefused):
        PRODUCTION.check_url(url)


def test_write_time_checks_in_laptop_and_for_public_urls() -> None:
    assert LAPTOP.check_url("http://127.0.0.1:11434/v1").port == 11434
    assert LAPTOP.check_url("http://localhost:8011/v1").host == "localhost"
    for url in ("http://169.254.169.254/latest/", "http://metadata.google.internal/", "http://0/"):
        with pytest.raises(EgressRefused):
            LAPTOP.check_url(url)
    target = PRODUCTION.check_url("https://API.openai.com/v1")
    assert (target.scheme, target.host, target.port) == ("https", "api.openai.com", 443)
    assert PRODUCTION.check_url("http://llm.example.com:8080/v1").port == 8080


def test_literal_addresses() -> None:
    assert literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert literal_address("[::1]") == ipaddress.ip_address("::1")
    assert literal_address("api.openai.com") is None
    assert literal_address("0x7f.0.0.1") == ipaddress.ip_address("127.0.0.1")


async def test_client_refuses_before_any_request() -> None:
    """The adapter resolves the host and refuses with a non-failover kind."""
    async with _counting_server("127.0.0.1") as (port, hits):
        client = LiteLlmClient(egress=PRODUCTION)
        request = LlmRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
        for base in (f"http://127.0.0.1:{port}/v1", f"http://localhost:{port}/v1"):
            target = LlmTarget("p", "p", "openai", "m", base, timeout_seconds=5)
            with pytest.raises(LlmCallFailed) as failed:
                await client.complete(target, request)
            assert failed.value.kind == "bad_request" and not failed.value.fails_over
            assert str(failed.value).startswith("egress refused: ")
        # Ollama without a base URL goes to localhost:11434: judged as such.
        ollama = LlmTarget("p", "p", "ollama", "llama3", None, timeout_seconds=5)
        with pytest.raises(LlmCallFailed, match="egress refused"):
            await client.complete(ollama, request)
        # This server's own scripted model is trusted by its exact base URL.
        trusting = LiteLlmClient(
            egress=PRODUCTION, trusted_base_url=lambda: f"http://127.0.0.1:{port}/v1"
        )
        reply = await trusting.complete(
            LlmTarget("p", "p", "openai", "m", f"http://127.0.0.1:{port}/v1/", timeout_seconds=30),
            request,
        )
        assert reply.content == "OK"
        assert hits == [1]


@pytest.mark.parametrize("provider", ["openai", "ollama", "hosted_vllm"])
@pytest.mark.parametrize("status", [302, 307])
async def test_redirects_are_not_followed(provider: str, status: int) -> None:
    """An allowed host cannot bounce the call elsewhere (OpenAI SDK and LiteLLM's own
    HTTP handler both follow redirects by default)."""
    policy = EgressPolicy.build(allow_private=False, allowlist=["127.0.0.2"])
    request = LlmRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    async with _counting_server("127.0.0.1") as (inner, inner_hits):
        bounce = (
            f"HTTP/1.1 {status} Found\r\nlocation: http://127.0.0.1:{inner}/v1/chat/completions"
            "\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ).encode()
        async with _counting_server("127.0.0.2", bounce) as (outer, outer_hits):
            for client in (LiteLlmClient(egress=policy), LiteLlmClient(egress=LAPTOP)):
                target = LlmTarget(
                    "p", "p", provider, "m", f"http://127.0.0.2:{outer}/v1", timeout_seconds=10
                )
                with pytest.raises(LlmCallFailed) as failed:
                    await client.complete(target, request)
                assert failed.value.kind == "bad_request", failed.value
                assert "redirect" in str(failed.value), failed.value
            assert outer_hits == [2]
        assert inner_hits == [0]


# -- through the API ---------------------------------------------------------------------


def _reply(model: str) -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "OK"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    ).encode()
    head = (
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@asynccontextmanager
async def _counting_server(
    host: str, answer: bytes | None = None
) -> AsyncIterator[tuple[int, list[int]]]:
    """A tiny OpenAI-compatible endpoint that counts the requests it gets (and gives
    `answer` instead of a completion when set)."""
    hits = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            hits[0] += 1
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            writer.write(answer or _reply("m"))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, hits
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def production_url(settings: Any) -> AsyncIterator[str]:
    """A second API server on the same database, with private egress refused and only
    127.0.0.2 allow-listed."""
    from server.app import create_app
    from server.bootstrap import build_container
    from server.settings import Settings

    fields = settings.model_dump()
    fields.update(
        egress_allow_private=False,
        egress_allowlist="127.0.0.2/32",
        redis_prefix=f"cgtest{secrets.token_hex(4)}",
    )
    prod = Settings(**fields)
    container = build_container(prod, rate_limits={})
    try:
        async with serving(create_app(container)) as url:
            prod.self_url = url
            yield url
    finally:
        await container.aclose()


async def _create(gql: GQL, team: Team, base_url: str) -> dict[str, Any]:
    data = {
        "name": f"egress-{secrets.token_hex(4)}",
        "provider": "openai",
        "model": "m",
        "baseUrl": base_url,
    }
    return await gql.op("CreateLlmProviderRuntime", {"input": data}, token=team.token)


async def _test(gql: GQL, team: Team, ident: str) -> dict[str, Any]:
    body = await gql.ok("TestLlmProvider", {"id": ident}, token=team.token)
    result: dict[str, Any] = body["testLlmProvider"]
    return result


async def test_production_profile_refuses_private_base_urls(gql: GQL, production_url: str) -> None:
    async with aclosing(GQL(production_url)) as prod, _counting_server("127.0.0.1") as (port, hits):
        team = await register(prod)
        # Refused when written: a literal loopback address, localhost, metadata.
        for url in (
            f"http://127.0.0.1:{port}/v1",
            f"http://localhost:{port}/v1",
            f"http://2130706433:{port}/v1",
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.google.internal/",
        ):
            body = await _create(prod, team, url)
            assert error_code(body) == "BAD_USER_INPUT", body
            fields = body["errors"][0]["extensions"]["fields"]
            assert fields["input.baseUrl"].startswith("egress refused"), fields

        # Stored while private addresses were allowed (the laptop server shares the
        # database): refused at call time, and not a single request reaches the host.
        stored = await _create(gql, team, f"http://127.0.0.1:{port}/v1")
        assert not stored.get("errors"), stored
        result = await _test(prod, team, stored["data"]["createLlmProvider"]["id"])
        assert result["ok"] is False
        assert result["error"].startswith("bad_request: egress refused"), result
        # A DNS name that resolves to a private address passes the write-time check
        # and is refused after resolution.
        name = socket.gethostname()
        resolved = {i[4][0] for i in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)}
        if all(not ipaddress.ip_address(a.split("%")[0]).is_global for a in resolved):
            named = await _create(prod, team, f"http://{name}:{port}/v1")
            assert not named.get("errors"), named
            result = await _test(prod, team, named["data"]["createLlmProvider"]["id"])
            assert result["ok"] is False and "egress refused" in result["error"], result
        assert hits == [0]

        # The laptop server still reaches it (local models keep working).
        laptop = await _test(gql, team, stored["data"]["createLlmProvider"]["id"])
        assert laptop["ok"] is True, laptop
        assert hits == [1]

    # An allow-listed address works in production.
    async with aclosing(GQL(production_url)) as prod, _counting_server("127.0.0.2") as (port, hits):
        team = await register(prod)
        allowed = await _create(prod, team, f"http://127.0.0.2:{port}/v1")
        assert not allowed.get("errors"), allowed
        result = await _test(prod, team, allowed["data"]["createLlmProvider"]["id"])
        assert result["ok"] is True, result
        assert hits == [1]


async def test_laptop_profile_still_reaches_the_scripted_model(gql: GQL, team: Team) -> None:
    data = await gql.ok("LlmProvidersRuntime", {"first": 100}, token=team.token)
    local = [e["node"] for e in data["llmProviders"]["edges"] if e["node"]["model"] == "scripted"]
    result = await _test(gql, team, local[0]["id"])
    assert result["ok"] is True, result
