"""Webhook deliveries over HTTP: Standard Webhooks signatures, the egress policy, httpx.

- `EgressResolver` resolves a URL's host now and judges every address with the egress
  policy (domain/egress.py); webhooks are checked with it when written and right before
  every delivery.
- `HttpWebhookTransport.send` checks the URL again, signs the body per the Standard
  Webhooks spec (`webhook-id`, `webhook-timestamp`, `webhook-signature`, with the
  `standardwebhooks` package) and POSTs it within one overall deadline (the response
  body is never read), no redirects (a redirect could lead anywhere) and no proxy from
  the environment. 2xx is delivered; anything
  else, a timeout or a connection error is a failure worth retrying; an egress refusal
  is final.

The connection itself is made by `_VettedBackend`: it resolves the name, judges every
address and connects to the address it judged, so a DNS answer that changes between the
check and the connection (rebinding) cannot lead a delivery to a private address. TLS
still verifies the URL's host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpcore
import httpx
from standardwebhooks import Webhook as Signer

from domain.egress import EgressPolicy, EgressRefused, IpAddress, literal_address
from domain.webhooks import SendFailed, SendRefused

USER_AGENT = "Crewgraph-Webhooks/1"


class EgressResolver:
    """`domain.webhooks.AddressResolver` over the operator's egress policy."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    async def addresses(self, host: str, port: int) -> list[IpAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                self.policy.resolve_timeout_seconds,
            )
        except TimeoutError:
            raise EgressRefused(f"{host!r}: name lookup timed out") from None
        except OSError as exc:
            raise EgressRefused(f"{host!r} cannot be resolved: {exc.strerror or exc}") from None
        except (UnicodeError, ValueError) as exc:  # e.g. an IDNA label over 63 characters
            raise EgressRefused(f"{host[:100]!r} is not a valid host name: {exc}") from None
        found: list[IpAddress] = []
        for info in infos:
            try:
                found.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
            except ValueError:
                continue
        return found

    async def check(self, url: str) -> None:
        where = self.policy.check_url(url)
        if not self.policy.host_allowed(where.host):
            await self.vetted(where.host, where.port)

    async def vetted(self, host: str, port: int) -> list[IpAddress]:
        """The addresses of `host` this policy lets us call (all of them, or EgressRefused)."""
        found = await self.addresses(host, port)
        if not self.policy.host_allowed(host):
            self.policy.check_addresses(host, found)
        if not found:
            raise EgressRefused(f"{host[:100]!r} cannot be resolved: no address")
        return found


class _VettedBackend(httpcore.AsyncNetworkBackend):
    """Connects to an address `EgressResolver.vetted` judged, never to a fresh lookup."""

    def __init__(self, resolver: EgressResolver) -> None:
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolver.vetted(host, port)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not called")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _VettedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, resolver: EgressResolver, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx takes no network backend; its pool does (the same pool, plus ours).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_VettedBackend(resolver),
        )


class HttpWebhookTransport:
    """`domain.webhooks.WebhookTransport` with httpx."""

    def __init__(self, resolver: EgressResolver, *, timeout_seconds: float = 10.0) -> None:
        self.resolver = resolver
        self.timeout_seconds = timeout_seconds
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            limits = httpx.Limits(max_connections=50, max_keepalive_connections=10)
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_seconds, connect=min(5.0, self.timeout_seconds)),
                follow_redirects=False,
                trust_env=False,
                transport=_VettedTransport(self.resolver, limits),
            )
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, url: str, secret: str, message_id: str, payload: bytes) -> int:
        try:
            await self.resolver.check(url)
        except EgressRefused as refused:
            raise _failure(refused) from None
        now = datetime.now(UTC)
        body = payload.decode()
        signature = Signer(secret).sign(message_id, now, body)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        # httpx's timeouts are per read: a receiver trickling its headers or streaming a
        # body for ever would hold the delivery (and fill memory). One deadline covers the
        # whole exchange, and only the status line and headers are read, never the body.
        try:
            async with asyncio.timeout(self.timeout_seconds):
                request = self._http().build_request("POST", url, content=payload, headers=headers)
                response = await self._http().send(request, stream=True)
                await response.aclose()
        except EgressRefused as refused:  # at connect time: the name answers otherwise now
            raise _failure(refused) from None
        except (TimeoutError, httpx.TimeoutException):
            raise SendFailed(f"timed out after {self.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}"[:300] or "connection failed") from None
        if 200 <= response.status_code < 300:
            return response.status_code
        raise SendFailed(f"HTTP {response.status_code}", response.status_code)


def _failure(refused: EgressRefused) -> SendFailed | SendRefused:
    """A name that does not resolve (now) is worth retrying; a refused address is final."""
    text = str(refused)
    if "cannot be resolved" in text or "timed out" in text:
        return SendFailed(f"cannot reach the endpoint: {text}")
    return SendRefused(f"egress refused: {text}")
