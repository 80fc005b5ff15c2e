"""Webhook deliveries over HTTP: Standard Webhooks signatures, the egress policy, httpx.

- `EgressResolver` resolves a URL's host now and judges every address with the egress
  policy (domain/egress.py); webhooks are checked with it when written and right before
  every delivery.
- `HttpWebhookTransport.send` checks the URL again, signs the body per the Standard
  Webhooks spec (`webhook-id`, `webhook-timestamp`, `webhook-signature`, with the
  `standardwebhooks` package) and POSTs it with short timeouts, no redirects (a redirect
  could lead anywhere) and no proxy from the environment. 2xx is delivered; anything
  else, a timeout or a connection error is a failure worth retrying; an egress refusal
  is final.

The HTTP stack resolves the name again when it connects, so a DNS answer that changes
between the check and the connection is not caught (as for model calls; see
docs/ai-runtime.md, "Outbound calls").
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from datetime import UTC, datetime

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
        if self.policy.host_allowed(where.host):
            return
        self.policy.check_addresses(where.host, await self.addresses(where.host, where.port))


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
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_seconds, connect=min(5.0, self.timeout_seconds)),
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=10),
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
            text = str(refused)
            if "cannot be resolved" in text or "timed out" in text:
                raise SendFailed(f"cannot reach the endpoint: {text}") from None
            raise SendRefused(f"egress refused: {text}") from None
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
        try:
            response = await self._http().post(url, content=payload, headers=headers)
        except httpx.TimeoutException:
            raise SendFailed(f"timed out after {self.timeout_seconds:g} s") from None
        except httpx.HTTPError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}"[:300] or "connection failed") from None
        if 200 <= response.status_code < 300:
            return response.status_code
        raise SendFailed(f"HTTP {response.status_code}", response.status_code)
