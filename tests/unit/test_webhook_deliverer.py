"""The delivery loop's decisions (domain/webhooks.py) with fakes: delivered, retried with
backoff and jitter, given up after the window, refused, disabled, unreadable secret."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from domain.secrets import Sealed, SecretError
from domain.webhooks import (
    ClaimedDelivery,
    DeliveryResult,
    DeliveryStatus,
    OutgoingDelivery,
    RetryPolicy,
    SendFailed,
    SendRefused,
    WebhookDeliverer,
)

CLAIM = ClaimedDelivery("d1", "t1", "tenant_x")


class PlainBox:
    current_key_id = "k"

    def seal(self, plaintext: str, context: str) -> Sealed:
        return Sealed("k", f"{context}|{plaintext}".encode())

    def open(self, sealed: Sealed, context: str) -> str:
        if sealed.key_id != "k":
            raise SecretError("gone")
        bound, _, secret = sealed.blob.decode().partition("|")
        assert bound == context
        return secret


@dataclass
class FakeOutbox:
    delivery: OutgoingDelivery | None
    claims: list[ClaimedDelivery] = field(default_factory=lambda: [CLAIM])
    recorded: list[DeliveryResult] = field(default_factory=list)

    async def claim(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        claims, self.claims = self.claims, []
        return claims

    async def load(self, claimed: ClaimedDelivery) -> OutgoingDelivery | None:
        return self.delivery

    async def record(self, claimed: ClaimedDelivery, result: DeliveryResult) -> None:
        self.recorded.append(result)


@dataclass
class FakeTransport:
    outcome: int | Exception
    sent: list[tuple[str, str, str, bytes]] = field(default_factory=list)

    async def send(self, url: str, secret: str, message_id: str, payload: bytes) -> int:
        self.sent.append((url, secret, message_id, payload))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _delivery(
    *, attempts: int = 0, age: float = 0.0, enabled: bool = True, key: str = "k"
) -> OutgoingDelivery:
    return OutgoingDelivery(
        id="d1",
        webhook_id="w1",
        url="https://example.com/hook",
        secret=Sealed(key, b"webhook:t1:w1|whsec_abc"),
        webhook_enabled=enabled,
        event="EXECUTION_COMPLETED",
        payload={"type": "EXECUTION_COMPLETED", "data": {"executionId": "e1"}},
        attempts=attempts,
        created_at=datetime.now(UTC) - timedelta(seconds=age),
    )


async def _deliver(
    delivery: OutgoingDelivery, outcome: int | Exception, retry: RetryPolicy | None = None
) -> tuple[DeliveryResult, FakeTransport]:
    outbox, transport = FakeOutbox(delivery), FakeTransport(outcome)
    deliverer = WebhookDeliverer(outbox, transport, PlainBox(), retry=retry)
    assert await deliverer.deliver_due() == 1
    assert len(outbox.recorded) == 1
    return outbox.recorded[0], transport


async def test_delivered_with_the_opened_secret_and_the_delivery_id() -> None:
    result, transport = await _deliver(_delivery(), 204)
    assert (result.status, result.attempts, result.response_status) == (
        DeliveryStatus.DELIVERED,
        1,
        204,
    )
    assert result.delivered_at is not None and result.next_attempt_at is None
    [(url, secret, message_id, body)] = transport.sent
    assert (url, secret, message_id) == ("https://example.com/hook", "whsec_abc", "d1")
    assert body == b'{"type":"EXECUTION_COMPLETED","data":{"executionId":"e1"}}'


async def test_a_failure_is_retried_later_with_backoff() -> None:
    retry = RetryPolicy(base_seconds=10, max_delay_seconds=3600, window_seconds=86_400)
    before = datetime.now(UTC)
    result, _ = await _deliver(_delivery(attempts=3), SendFailed("HTTP 503", 503), retry)
    assert (result.status, result.attempts, result.response_status, result.error) == (
        DeliveryStatus.PENDING,
        4,
        503,
        "HTTP 503",
    )
    assert result.next_attempt_at is not None
    wait = (result.next_attempt_at - before).total_seconds()
    assert 40 <= wait <= 81  # 10 * 2**3, jittered into its upper half


async def test_gives_up_when_the_next_attempt_would_pass_the_window() -> None:
    retry = RetryPolicy(base_seconds=10, max_delay_seconds=3600, window_seconds=86_400)
    result, _ = await _deliver(
        _delivery(attempts=20, age=86_000), SendFailed("timed out after 10 s"), retry
    )
    assert result.status == DeliveryStatus.FAILED and result.next_attempt_at is None
    assert result.attempts == 21 and result.error == "timed out after 10 s"


async def test_refused_endpoints_fail_at_once() -> None:
    result, _ = await _deliver(_delivery(), SendRefused("egress refused: 10.0.0.1 is private"))
    assert result.status == DeliveryStatus.FAILED and result.attempts == 1
    assert result.error is not None and "egress refused" in result.error


async def test_disabled_webhooks_and_unreadable_secrets_are_not_sent() -> None:
    for delivery, word in (
        (_delivery(enabled=False), "disabled"),
        (_delivery(key="old"), "secret"),
    ):
        result, transport = await _deliver(delivery, 200)
        assert result.status == DeliveryStatus.FAILED and transport.sent == []
        assert result.error is not None and word in result.error


@pytest.mark.parametrize("attempts", [1, 2, 5, 30])
def test_delay_is_exponential_capped_and_jittered(attempts: int) -> None:
    policy = RetryPolicy(base_seconds=2, max_delay_seconds=100, window_seconds=1000)
    full = min(100.0, 2.0 * 2 ** (attempts - 1))
    assert policy.delay(attempts, lambda: 0.0) == full / 2
    assert policy.delay(attempts, lambda: 1.0) == full


async def test_a_slow_receiver_holds_up_only_its_own_slot() -> None:
    slow, fast = _delivery(), dataclasses.replace(_delivery(), id="d2")
    release = asyncio.Event()

    class Outbox(FakeOutbox):
        async def claim(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
            claims, self.claims = self.claims[:limit], self.claims[limit:]
            return claims

        async def load(self, claimed: ClaimedDelivery) -> OutgoingDelivery | None:
            return slow if claimed.delivery_id == "d1" else fast

    class Transport(FakeTransport):
        async def send(self, url: str, secret: str, message_id: str, payload: bytes) -> int:
            if message_id == "d1":
                await release.wait()
            return 200

    outbox = Outbox(None, claims=[CLAIM, ClaimedDelivery("d2", "t1", "tenant_x")])
    deliverer = WebhookDeliverer(outbox, Transport(0), PlainBox(), concurrency=2)
    loop_task = asyncio.create_task(deliverer.run_forever(0.01))
    try:
        for _ in range(200):
            if outbox.recorded:
                break
            await asyncio.sleep(0.01)
        assert len(outbox.recorded) == 1  # d2, while d1 still waits for its receiver
        release.set()
        for _ in range(200):
            if len(outbox.recorded) == 2:
                break
            await asyncio.sleep(0.01)
        assert [r.status for r in outbox.recorded] == [DeliveryStatus.DELIVERED] * 2
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
