"""Schedule and webhook types."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain import schedules as ds
from domain import webhooks as dw
from domain.validation import page_size
from schema.context import Info
from schema.executions import Execution
from schema.fields import described
from schema.flows import Flow
from schema.relay import Connection, connection

WebhookEvent = strawberry.enum(dw.WebhookEvent, name="WebhookEvent")
WebhookDeliveryStatus = strawberry.enum(dw.DeliveryStatus, name="WebhookDeliveryStatus")


@strawberry.type(description="Runs a flow at the times of a cron expression.")
class Schedule:
    id: strawberry.ID
    cron: str = strawberry.field(description="Five-field cron expression.")
    timezone: str = strawberry.field(description='IANA timezone name; default "UTC".')
    inputs: JSON
    enabled: bool
    next_run_at: datetime | None = strawberry.field(
        description="When it runs next (null while disabled)."
    )
    created_at: datetime
    flow_id: strawberry.Private[str]
    last_execution_id: strawberry.Private[str | None]

    @strawberry.field
    async def flow(self, info: Info) -> Flow:
        p = await info.context.principal()
        return Flow.from_domain(await info.context.services.flows.get(p, self.flow_id))

    @described("The run this schedule started last.")
    async def last_execution(self, info: Info) -> Execution | None:
        if self.last_execution_id is None:
            return None
        found = await info.context.loaders.execution.load(self.last_execution_id)
        return Execution.from_domain(found) if found is not None else None

    @classmethod
    def from_domain(cls, s: ds.Schedule) -> Schedule:
        return cls(
            id=strawberry.ID(s.id),
            cron=s.cron,
            timezone=s.timezone,
            inputs=s.inputs,  # type: ignore[arg-type]
            enabled=s.enabled,
            next_run_at=s.next_run_at,
            created_at=s.created_at,
            flow_id=s.flow_id,
            last_execution_id=s.last_execution_id,
        )


@strawberry.input(description="On update, null optional fields keep the stored value.")
class ScheduleInput:
    flow_id: strawberry.ID
    cron: str
    timezone: str | None = None
    inputs: JSON | None = None
    enabled: bool | None = None

    def to_domain(self) -> ds.ScheduleInput:
        return ds.ScheduleInput(
            str(self.flow_id), self.cron, self.timezone, self.inputs, self.enabled
        )


@strawberry.type(description="One delivery of one event to one webhook, with its attempts.")
class WebhookDelivery:
    id: strawberry.ID
    event: WebhookEvent  # type: ignore[valid-type]
    status: WebhookDeliveryStatus  # type: ignore[valid-type]
    attempts: int
    response_status: int | None
    error: str | None
    created_at: datetime
    delivered_at: datetime | None
    execution_id: strawberry.Private[str]

    @strawberry.field
    async def execution(self, info: Info) -> Execution:
        found = await info.context.loaders.execution.load(self.execution_id)
        if found is None:  # deliveries go with their execution; a race at worst
            p = await info.context.principal()
            found = await info.context.services.executions.get(p, self.execution_id)
        return Execution.from_domain(found)

    @classmethod
    def from_domain(cls, d: dw.WebhookDelivery) -> WebhookDelivery:
        return cls(
            id=strawberry.ID(d.id),
            event=d.event,
            status=d.status,
            attempts=d.attempts,
            response_status=d.response_status,
            error=d.error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            execution_id=d.execution_id,
        )


@strawberry.type(description="An endpoint that receives signed execution events.")
class Webhook:
    id: strawberry.ID
    url: str
    events: list[WebhookEvent]  # type: ignore[valid-type]
    enabled: bool
    created_at: datetime

    @described("Deliveries to this webhook, newest first.")
    async def deliveries(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[WebhookDelivery]:
        p = await info.context.principal()
        size = page_size(first, info.context.settings.page_size_max)
        page = await info.context.services.webhooks.deliveries(p, str(self.id), size, after)
        return connection(page, WebhookDelivery.from_domain)

    @classmethod
    def from_domain(cls, w: dw.Webhook) -> Webhook:
        return cls(
            id=strawberry.ID(w.id),
            url=w.url,
            events=list(w.events),
            enabled=w.enabled,
            created_at=w.created_at,
        )


@strawberry.input(description="On update, null `enabled` keeps the stored value.")
class WebhookInput:
    url: str
    events: list[WebhookEvent]  # type: ignore[valid-type]
    enabled: bool | None = None

    def to_domain(self) -> dw.WebhookInput:
        return dw.WebhookInput(self.url, list(self.events), self.enabled)


@strawberry.type
class CreateWebhookPayload:
    webhook: Webhook
    secret: str = strawberry.field(
        description="The Standard Webhooks signing secret (`whsec_...`); shown only now."
    )

    @classmethod
    def from_domain(cls, c: dw.CreatedWebhook) -> CreateWebhookPayload:
        return cls(webhook=Webhook.from_domain(c.webhook), secret=c.secret)
