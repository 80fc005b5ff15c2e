"""Outgoing webhooks: signed POSTs to the team's endpoints on execution events.

- Managed by admins (`Action.MANAGE_WEBHOOKS`). `create` and `rotate_secret` return the
  Standard Webhooks signing secret (`whsec_<base64>`) once; it is stored sealed like
  provider keys, bound to the tenant and webhook, and a rotation replaces it at once.
- The URL passes the egress policy when written (scheme, literal and resolved addresses:
  loopback, private, link-local and metadata addresses are refused unless the operator
  allows them) and again right before every delivery (DNS may have changed meanwhile).
- The outbox: a delivery row is written by the statement that stores its execution event
  (persistence/repositories/execution_events.py), so a delivery exists exactly when the
  event does, and never for a rolled-back change. EXECUTION_STARTED is delivered once per
  run (not again when a run resumes elsewhere).
- `WebhookDeliverer` (a loop in every process) claims due deliveries across tenants with
  locks other processes skip, POSTs them with short timeouts and bounded concurrency,
  retries failures with exponential backoff and jitter for the retry window (24 h by
  default), then gives up (FAILED). Delivery is at least once: receivers deduplicate on
  the `webhook-id` header (the delivery id, the same on every attempt).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import random
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from domain.audit import NO_AUDIT, AuditRecorder
from domain.egress import EgressPolicy, EgressRefused
from domain.errors import BadUserInput, LimitExceeded, NotFound
from domain.identity import Principal
from domain.ports import Page, UnitOfWork
from domain.rbac import Action
from domain.resources import require_id
from domain.secrets import Sealed, SecretBox, SecretError
from domain.validation import Checker

log = logging.getLogger("crewgraph.webhooks")

MAX_URL = 2048
DEFAULT_MAX_WEBHOOKS = 25  # per tenant
MAX_ERROR = 500

# Audit actions (admin changes to where the team's events go; never the secret).
WEBHOOK_CREATED = "webhook.created"
WEBHOOK_UPDATED = "webhook.updated"
WEBHOOK_SECRET_ROTATED = "webhook.secret_rotated"
WEBHOOK_DELETED = "webhook.deleted"


class WebhookEvent(enum.StrEnum):
    EXECUTION_STARTED = "EXECUTION_STARTED"
    EXECUTION_WAITING = "EXECUTION_WAITING"
    EXECUTION_COMPLETED = "EXECUTION_COMPLETED"
    EXECUTION_FAILED = "EXECUTION_FAILED"
    EXECUTION_CANCELLED = "EXECUTION_CANCELLED"


WEBHOOK_EVENT_TYPES = frozenset(e.value for e in WebhookEvent)


class DeliveryStatus(enum.StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"  # gave up after the retry window (or the endpoint is refused)


@dataclass(slots=True)
class Webhook:
    id: str
    url: str
    events: list[WebhookEvent]
    enabled: bool
    secret: Sealed
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookInput:
    """On update, None keeps the stored `enabled`."""

    url: str
    events: Sequence[WebhookEvent | str]
    enabled: bool | None = None


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: Webhook
    secret: str  # shown once


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    webhook_id: str
    execution_id: str
    event: WebhookEvent
    status: DeliveryStatus
    attempts: int
    response_status: int | None
    error: str | None
    created_at: datetime
    delivered_at: datetime | None


class WebhookRepository(Protocol):
    async def get(self, ident: str, *, for_update: bool = False) -> Webhook | None: ...
    async def page(self, first: int, after: str | None) -> Page[Webhook]: ...
    async def lock_and_count(self) -> int:
        """How many webhooks the tenant has, holding its webhook lock until the unit of
        work ends: concurrent creates queue up, so the limit check and insert are one."""
        ...

    async def add(self, webhook: Webhook) -> None: ...
    async def update(self, webhook: Webhook) -> None: ...
    async def delete(self, ident: str) -> None: ...
    async def deliveries(
        self, webhook_id: str, first: int, after: str | None
    ) -> Page[WebhookDelivery]:
        """Newest first."""
        ...

    async def sealed_secrets(self) -> list[tuple[str, Sealed]]: ...
    async def store_secret(self, ident: str, sealed: Sealed) -> None: ...


class WebhookUnitOfWork(UnitOfWork, Protocol):
    @property
    def webhooks(self) -> WebhookRepository: ...


class WebhookUnitOfWorkFactory(Protocol):
    def __call__(self, tenant_schema: str | None = None) -> WebhookUnitOfWork: ...


class AddressResolver(Protocol):
    async def check(self, url: str) -> None:
        """Resolve the URL's host now and judge every address; raises EgressRefused."""
        ...


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _context(tenant_id: str, webhook_id: str) -> str:
    """Bound into the ciphertext: a secret copied to another row or tenant fails to open."""
    return f"webhook:{tenant_id}:{webhook_id}"


# --------------------------------------------------------------------------- management


class WebhookService:
    def __init__(
        self,
        uow: WebhookUnitOfWorkFactory,
        box: SecretBox,
        resolver: AddressResolver,
        *,
        egress: EgressPolicy | None = None,
        max_webhooks: int = DEFAULT_MAX_WEBHOOKS,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        self._uow = uow
        self._box = box
        self._resolver = resolver
        self._egress = egress or EgressPolicy()
        self.max_webhooks = max_webhooks
        self._audit = audit

    def _record(self, p: Principal, action: str, webhook: Webhook) -> None:
        data = {"url": webhook.url[:200], "events": ",".join(webhook.events)}
        self._audit.record(p.tenant_id, action, principal=p, target=webhook.id, data=data)

    async def _clean(self, data: WebhookInput) -> tuple[str, list[WebhookEvent]]:
        check = Checker("input.")
        url = check.text("url", data.url, max_len=MAX_URL) or ""
        events: list[WebhookEvent] = []
        for raw in data.events:
            try:
                event = WebhookEvent(raw)
            except ValueError:
                check.fail("events", f"unknown event {str(raw)[:50]!r}")
                continue
            if event not in events:
                events.append(event)
        if not events and "input.events" not in check.errors:
            check.fail("events", "must name at least one event")
        check.raise_if_any()
        try:
            self._egress.check_url(url)
            await self._resolver.check(url)
        except EgressRefused as refused:
            raise BadUserInput(
                f"url refused by the egress policy: {refused}",
                {"input.url": f"egress refused: {refused}"},
            ) from None
        return url, events

    async def list(self, p: Principal, first: int, after: str | None) -> Page[Webhook]:
        p.require(Action.MANAGE_WEBHOOKS)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.webhooks.page(first, after)

    async def get(self, p: Principal, ident: str) -> Webhook:
        p.require(Action.MANAGE_WEBHOOKS)
        async with self._uow(p.tenant_schema) as uow:
            found = await uow.webhooks.get(require_id("webhook", ident))
        if found is None:
            raise NotFound("webhook", ident)
        return found

    async def deliveries(
        self, p: Principal, webhook_id: str, first: int, after: str | None
    ) -> Page[WebhookDelivery]:
        p.require(Action.MANAGE_WEBHOOKS)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.webhooks.deliveries(webhook_id, first, after)

    async def create(self, p: Principal, data: WebhookInput) -> CreatedWebhook:
        p.require(Action.MANAGE_WEBHOOKS)
        url, events = await self._clean(data)
        now = datetime.now(UTC)
        ident = str(uuid.uuid4())
        secret = new_secret()
        webhook = Webhook(
            ident,
            url,
            events,
            True if data.enabled is None else data.enabled,
            self._box.seal(secret, _context(p.tenant_id, ident)),
            now,
            now,
        )
        async with self._uow(p.tenant_schema) as uow:
            count = await uow.webhooks.lock_and_count()
            if count >= self.max_webhooks:
                raise LimitExceeded(
                    f"the team already has {count} webhooks; the limit is {self.max_webhooks}",
                    extensions={"limit": "maxWebhooks", "max": self.max_webhooks},
                )
            await uow.webhooks.add(webhook)
            await uow.commit()
        self._record(p, WEBHOOK_CREATED, webhook)
        return CreatedWebhook(webhook, secret)

    async def update(self, p: Principal, ident: str, data: WebhookInput) -> Webhook:
        p.require(Action.MANAGE_WEBHOOKS)
        url, events = await self._clean(data)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.webhooks.get(require_id("webhook", ident), for_update=True)
            if current is None:
                raise NotFound("webhook", ident)
            current.url, current.events = url, events
            if data.enabled is not None:
                current.enabled = data.enabled
            current.updated_at = datetime.now(UTC)
            await uow.webhooks.update(current)
            await uow.commit()
        self._record(p, WEBHOOK_UPDATED, current)
        return current

    async def rotate_secret(self, p: Principal, ident: str) -> CreatedWebhook:
        """A new secret; deliveries sent from now on (retries too) are signed with it."""
        p.require(Action.MANAGE_WEBHOOKS)
        secret = new_secret()
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.webhooks.get(require_id("webhook", ident), for_update=True)
            if current is None:
                raise NotFound("webhook", ident)
            current.secret = self._box.seal(secret, _context(p.tenant_id, ident))
            current.updated_at = datetime.now(UTC)
            await uow.webhooks.update(current)
            await uow.commit()
        self._record(p, WEBHOOK_SECRET_ROTATED, current)
        return CreatedWebhook(current, secret)

    async def delete(self, p: Principal, ident: str) -> bool:
        """The webhook and its deliveries (pending ones are never sent)."""
        p.require(Action.MANAGE_WEBHOOKS)
        async with self._uow(p.tenant_schema) as uow:
            current = await uow.webhooks.get(require_id("webhook", ident), for_update=True)
            if current is None:
                raise NotFound("webhook", ident)
            await uow.webhooks.delete(ident)
            await uow.commit()
        self._record(p, WEBHOOK_DELETED, current)
        return True


async def rotate_webhook_secrets(
    uow: WebhookUnitOfWorkFactory, box: SecretBox, tenants: list[tuple[str, str]]
) -> int:
    """Re-encrypt every stored signing secret under the current master key (as
    `providers.rotate_keys` does for API keys): one transaction per tenant."""
    rotated = 0
    for tenant_id, schema in tenants:
        async with uow(schema) as tx:
            for webhook_id, sealed in await tx.webhooks.sealed_secrets():
                if sealed.key_id == box.current_key_id:
                    continue
                context = _context(tenant_id, webhook_id)
                await tx.webhooks.store_secret(
                    webhook_id, box.seal(box.open(sealed, context), context)
                )
                rotated += 1
            await tx.commit()
    return rotated


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    delivery_id: str
    tenant_id: str
    tenant_schema: str


@dataclass(frozen=True, slots=True)
class OutgoingDelivery:
    """A claimed delivery with what sending it needs."""

    id: str
    webhook_id: str
    url: str
    secret: Sealed
    webhook_enabled: bool
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: DeliveryStatus
    attempts: int
    response_status: int | None
    error: str | None
    next_attempt_at: datetime | None  # PENDING only
    delivered_at: datetime | None


class Outbox(Protocol):
    async def claim(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        """Due deliveries of any tenant, each hidden from other claims for the lease."""
        ...

    async def load(self, claimed: ClaimedDelivery) -> OutgoingDelivery | None:
        """None when the delivery (or its webhook) is gone; its index row goes too."""
        ...

    async def record(self, claimed: ClaimedDelivery, result: DeliveryResult) -> None:
        """Store the attempt; a PENDING result is due again at `next_attempt_at`."""
        ...


class SendFailed(Exception):
    """The attempt failed and may succeed later (connection, timeout, HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SendRefused(Exception):
    """The endpoint may not be called (egress policy): retrying will not help."""


class WebhookTransport(Protocol):
    async def send(self, url: str, secret: str, message_id: str, payload: bytes) -> int:
        """POST `payload` signed with `secret`; the 2xx status, else SendFailed/SendRefused."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 10.0
    max_delay_seconds: float = 3600.0
    window_seconds: float = 86_400.0

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """Exponential, capped, with full jitter in its upper half."""
        exp = min(self.max_delay_seconds, self.base_seconds * float(2 ** max(0, attempts - 1)))
        return exp * (0.5 + 0.5 * rand())


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


class WebhookDeliverer:
    def __init__(
        self,
        outbox: Outbox,
        transport: WebhookTransport,
        box: SecretBox,
        *,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        lease_seconds: float = 60.0,
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._box = box
        self.retry = retry or RetryPolicy()
        self.concurrency = max(1, concurrency)
        self.lease_seconds = lease_seconds
        self.paused = False

    async def deliver_due(self) -> int:
        """Send one batch of due deliveries and wait for them; returns how many were
        claimed (tests and the loop's first tick; the loop itself does not wait)."""
        claimed = await self._outbox.claim(self.concurrency, self.lease_seconds)
        if claimed:
            await asyncio.gather(*(self._deliver(c) for c in claimed), return_exceptions=True)
        return len(claimed)

    async def _deliver(self, claimed: ClaimedDelivery) -> None:
        try:
            delivery = await self._outbox.load(claimed)
            if delivery is None:
                return
            result = await self._attempt(claimed, delivery)
            await self._outbox.record(claimed, result)
        except Exception:
            # The claim runs out and another attempt follows.
            log.exception("webhook delivery %s failed unexpectedly", claimed.delivery_id)

    async def _attempt(
        self, claimed: ClaimedDelivery, delivery: OutgoingDelivery
    ) -> DeliveryResult:
        attempts = delivery.attempts + 1
        if not delivery.webhook_enabled:
            return DeliveryResult(
                DeliveryStatus.FAILED, delivery.attempts, None, "webhook is disabled", None, None
            )
        try:
            secret = self._box.open(
                delivery.secret, _context(claimed.tenant_id, delivery.webhook_id)
            )
        except SecretError:
            # The master key that sealed it is gone: no retry can sign this delivery.
            return DeliveryResult(
                DeliveryStatus.FAILED,
                delivery.attempts,
                None,
                "the signing secret cannot be read (master key rotated away); "
                "rotate the webhook's secret",
                None,
                None,
            )
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        try:
            status = await self._transport.send(delivery.url, secret, delivery.id, body)
        except SendRefused as refused:
            return DeliveryResult(
                DeliveryStatus.FAILED, attempts, None, _truncate(str(refused)), None, None
            )
        except SendFailed as failed:
            now = datetime.now(UTC)
            due = now + timedelta(seconds=self.retry.delay(attempts))
            give_up = due > delivery.created_at + timedelta(seconds=self.retry.window_seconds)
            return DeliveryResult(
                DeliveryStatus.FAILED if give_up else DeliveryStatus.PENDING,
                attempts,
                failed.status,
                _truncate(str(failed)),
                None if give_up else due,
                None,
            )
        return DeliveryResult(
            DeliveryStatus.DELIVERED, attempts, status, None, None, datetime.now(UTC)
        )

    async def run_forever(self, interval: float) -> None:
        """The delivery loop of this process: at most `concurrency` deliveries in flight,
        each in its own task, so one slow receiver holds up only its own slot."""
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                free = self.concurrency - len(in_flight)
                claimed: list[ClaimedDelivery] = []
                if not self.paused and free > 0:
                    try:
                        claimed = await self._outbox.claim(free, self.lease_seconds)
                    except Exception:
                        log.exception("claiming webhook deliveries failed")
                for c in claimed:
                    task = asyncio.create_task(self._deliver(c))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if not claimed or len(claimed) < free:
                    await asyncio.sleep(interval)
                elif len(in_flight) >= self.concurrency:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in list(in_flight):
                task.cancel()
            for task in list(in_flight):
                with contextlib.suppress(BaseException):
                    await task
