"""Webhook queries and mutations (admins)."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.automation import CreateWebhookPayload, Webhook, WebhookInput
from schema.context import Info
from schema.relay import Connection, connection


async def webhooks(
    info: Info, first: int | None = None, after: str | None = None
) -> Connection[Webhook]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(
        await info.context.services.webhooks.list(p, size, after), Webhook.from_domain
    )


async def webhook(info: Info, id: strawberry.ID) -> Webhook:
    p = await info.context.principal()
    return Webhook.from_domain(await info.context.services.webhooks.get(p, id))


async def create_webhook(info: Info, input: WebhookInput) -> CreateWebhookPayload:
    p = await info.context.principal()
    created = await info.context.services.webhooks.create(p, input.to_domain())
    return CreateWebhookPayload.from_domain(created)


async def rotate_webhook_secret(info: Info, id: strawberry.ID) -> CreateWebhookPayload:
    p = await info.context.principal()
    return CreateWebhookPayload.from_domain(
        await info.context.services.webhooks.rotate_secret(p, id)
    )


async def update_webhook(info: Info, id: strawberry.ID, input: WebhookInput) -> Webhook:
    p = await info.context.principal()
    return Webhook.from_domain(
        await info.context.services.webhooks.update(p, id, input.to_domain())
    )


async def delete_webhook(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.webhooks.delete(p, id)
