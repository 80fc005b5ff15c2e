"""Webhooks of one tenant, their deliveries (the outbox), and the delivery loop's claims.

Deliveries are inserted by `execution_events.append` (see `OUTBOX_CTES`) in the statement
that stores the execution event, each with its row of `public.webhook_outbox`; that row
lives while the delivery is PENDING and holds when it is next due. A claim pushes
`next_attempt_at` forward by a lease (rows other claimers hold are skipped), so a
delivery whose sender died is retried once the lease ran out.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.auth import is_uuid
from domain.ports import Page
from domain.secrets import Sealed
from domain.webhooks import (
    ClaimedDelivery,
    DeliveryResult,
    DeliveryStatus,
    OutgoingDelivery,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)
from persistence import tables as t
from persistence.db import Database
from persistence.pagination import paginate
from persistence.repositories.quotas import WEBHOOKS_LOCK_NS, locked_count
from persistence.repositories.sql import ConnectionStatements, PoolStatements, in_schema

# Appended to the CTEs of the event insert (`ev`: the stored events, `s`: the execution
# row): one delivery per subscribed enabled webhook and event, at most once per run for
# everything but EXECUTION_WAITING, and its row in the public outbox. The payload is
# frozen now: what the event said when it was stored, with the status the event moves
# the run to (whether the status column is written before or after the event).
OUTBOX_CTES = """
, wh AS (
    INSERT INTO {s}.webhook_deliveries
        (id, webhook_id, execution_id, event, payload, status, attempts, created_at,
         next_attempt_at)
    SELECT gen_random_uuid(), h.id, s.id, ev.type,
           jsonb_build_object(
               'type', ev.type,
               'timestamp', to_jsonb(ev.at),
               'data', jsonb_build_object(
                   'executionId', s.id, 'flowId', s.flow_id, 'flowVersion', s.flow_version,
                   'crewId', s.crew_id, 'sequence', ev.sequence,
                   'status', CASE ev.type WHEN 'EXECUTION_STARTED' THEN 'RUNNING'
                                          ELSE substr(ev.type, 11) END,
                   'event', ev.data)),
           'PENDING', 0, now(), now()
    FROM ev CROSS JOIN s JOIN {s}.webhooks h ON h.enabled AND ev.type = ANY(h.events)
    ON CONFLICT (webhook_id, execution_id, event) WHERE event <> 'EXECUTION_WAITING'
    DO NOTHING
    RETURNING id
), ob AS (
    INSERT INTO public.webhook_outbox (delivery_id, tenant_id, tenant_schema, next_attempt_at)
    SELECT wh.id, tn.id, tn.schema_name, now()
    FROM wh JOIN public.tenants tn ON tn.schema_name = $7
)
"""

# A suspended tenant's deliveries wait (PENDING, attempts unchanged) until it is activated.
_CLAIM = """
UPDATE public.webhook_outbox SET next_attempt_at = now() + $1::interval
WHERE delivery_id IN (
    SELECT o.delivery_id FROM public.webhook_outbox o
    WHERE o.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM public.tenants t
                      WHERE t.id = o.tenant_id AND t.status = 'SUSPENDED')
    ORDER BY o.next_attempt_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED
)
RETURNING delivery_id, tenant_id, tenant_schema
"""

_LOAD = """
SELECT d.id, d.webhook_id, d.event, d.payload, d.attempts, d.created_at, d.status,
       h.url, h.enabled, h.secret_ciphertext, h.secret_key_id
FROM {s}.webhook_deliveries d JOIN {s}.webhooks h ON h.id = d.webhook_id
WHERE d.id = $1::uuid
"""

_FORGET = "DELETE FROM public.webhook_outbox WHERE delivery_id = $1::uuid"

_RECORD = """
WITH d AS (
    UPDATE {s}.webhook_deliveries
    SET status = $2, attempts = $3, response_status = $4, error = $5,
        next_attempt_at = $6, delivered_at = $7
    WHERE id = $1::uuid
    RETURNING id
), o AS (
    UPDATE public.webhook_outbox SET next_attempt_at = $6
    WHERE delivery_id = $1::uuid AND $6::timestamptz IS NOT NULL
), x AS (
    DELETE FROM public.webhook_outbox
    WHERE delivery_id = $1::uuid AND $6::timestamptz IS NULL
)
SELECT 1
"""


def _to_webhook(r: Any) -> Webhook:
    return Webhook(
        id=str(r["id"]),
        url=r["url"],
        events=[WebhookEvent(e) for e in r["events"]],
        enabled=bool(r["enabled"]),
        secret=Sealed(r["secret_key_id"], bytes(r["secret_ciphertext"])),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _to_delivery(r: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=str(r["id"]),
        webhook_id=str(r["webhook_id"]),
        execution_id=str(r["execution_id"]),
        event=WebhookEvent(r["event"]),
        status=DeliveryStatus(r["status"]),
        attempts=int(r["attempts"]),
        response_status=r["response_status"],
        error=r["error"],
        created_at=r["created_at"],
        delivered_at=r["delivered_at"],
    )


class SqlWebhooks:
    """`domain.webhooks.WebhookRepository` on the unit of work's connection."""

    def __init__(self, conn: AsyncConnection, schema: str) -> None:
        self._conn = conn
        self._schema = schema

    async def get(self, ident: str, *, for_update: bool = False) -> Webhook | None:
        if not is_uuid(ident):
            return None
        stmt = sa.select(t.webhooks).where(t.webhooks.c.id == ident)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self._conn.execute(stmt)).mappings().first()
        return _to_webhook(row) if row else None

    async def page(self, first: int, after: str | None) -> Page[Webhook]:
        return await paginate(
            self._conn,
            sa.select(t.webhooks),
            t.webhooks.c.created_at,
            t.webhooks.c.id,
            first,
            after,
            lambda r: _to_webhook(r._mapping),
        )

    async def lock_and_count(self) -> int:
        return await locked_count(self._conn, WEBHOOKS_LOCK_NS, self._schema, t.webhooks)

    def _values(self, w: Webhook) -> dict[str, Any]:
        return {
            "id": w.id,
            "url": w.url,
            "events": [e.value for e in w.events],
            "enabled": w.enabled,
            "secret_ciphertext": w.secret.blob,
            "secret_key_id": w.secret.key_id,
            "created_at": w.created_at,
            "updated_at": w.updated_at,
        }

    async def add(self, webhook: Webhook) -> None:
        await self._conn.execute(t.webhooks.insert().values(**self._values(webhook)))

    async def update(self, webhook: Webhook) -> None:
        values = self._values(webhook)
        values.pop("id")
        values.pop("created_at")
        await self._conn.execute(
            t.webhooks.update().where(t.webhooks.c.id == webhook.id).values(**values)
        )

    async def delete(self, ident: str) -> None:
        pending = sa.select(t.webhook_deliveries.c.id).where(
            t.webhook_deliveries.c.webhook_id == ident
        )
        await self._conn.execute(
            t.webhook_outbox.delete().where(t.webhook_outbox.c.delivery_id.in_(pending))
        )
        await self._conn.execute(t.webhooks.delete().where(t.webhooks.c.id == ident))

    async def deliveries(
        self, webhook_id: str, first: int, after: str | None
    ) -> Page[WebhookDelivery]:
        if not is_uuid(webhook_id):
            return Page(items=[], has_next_page=False)
        d = t.webhook_deliveries
        return await paginate(
            self._conn,
            sa.select(d).where(d.c.webhook_id == webhook_id),
            d.c.created_at,
            d.c.id,
            first,
            after,
            lambda r: _to_delivery(r._mapping),
            newest_first=True,
        )

    async def sealed_secrets(self) -> list[tuple[str, Sealed]]:
        rows = await self._conn.execute(
            sa.select(t.webhooks.c.id, t.webhooks.c.secret_key_id, t.webhooks.c.secret_ciphertext)
        )
        return [(str(r.id), Sealed(r.secret_key_id, bytes(r.secret_ciphertext))) for r in rows]

    async def store_secret(self, ident: str, sealed: Sealed) -> None:
        await self._conn.execute(
            t.webhooks.update()
            .where(t.webhooks.c.id == ident)
            .values(secret_key_id=sealed.key_id, secret_ciphertext=sealed.blob)
        )


class SqlOutbox:
    """`domain.webhooks.Outbox`: autocommit statements on the raw pool."""

    def __init__(self, db: Database) -> None:
        self._pool = PoolStatements(db)

    async def claim(self, limit: int, lease_seconds: float) -> list[ClaimedDelivery]:
        rows = await self._pool.fetch(_CLAIM, timedelta(seconds=lease_seconds), limit)
        return [
            ClaimedDelivery(str(r["delivery_id"]), str(r["tenant_id"]), r["tenant_schema"])
            for r in rows
        ]

    async def load(self, claimed: ClaimedDelivery) -> OutgoingDelivery | None:
        row = await self._pool.fetchrow(
            in_schema(_LOAD, claimed.tenant_schema), claimed.delivery_id
        )
        if row is None or row["status"] != DeliveryStatus.PENDING.value:
            await self._pool.execute(_FORGET, claimed.delivery_id)
            return None
        payload = row["payload"]
        return OutgoingDelivery(
            id=str(row["id"]),
            webhook_id=str(row["webhook_id"]),
            url=row["url"],
            secret=Sealed(row["secret_key_id"], bytes(row["secret_ciphertext"])),
            webhook_enabled=bool(row["enabled"]),
            event=row["event"],
            payload=dict(payload) if isinstance(payload, dict) else {},
            attempts=int(row["attempts"]),
            created_at=row["created_at"],
        )

    async def record(self, claimed: ClaimedDelivery, result: DeliveryResult) -> None:
        await self._pool.execute(
            in_schema(_RECORD, claimed.tenant_schema),
            claimed.delivery_id,
            result.status.value,
            result.attempts,
            result.response_status,
            result.error,
            result.next_attempt_at,
            result.delivered_at,
        )


async def delivery_rows(sql: ConnectionStatements | PoolStatements, schema: str) -> int:
    """How many deliveries the tenant has (tests of the outbox's transaction)."""
    return int(await sql.fetchval(in_schema("SELECT count(*) FROM {s}.webhook_deliveries", schema)))
