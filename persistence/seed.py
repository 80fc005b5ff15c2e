"""What a new tenant's schema starts with, written inside the registration transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.identity import Tenant
from domain.providers import local_provider
from persistence.repositories.resources import SqlProviders
from persistence.tables import TENANT


async def seed_local_provider(uow: Any, tenant: Tenant) -> None:
    """The `Local (scripted)` LLM provider (laptop profile), so a newcomer can run an AI
    flow right after `register`. `uow` is the registration's (public) unit of work: its
    connection is pointed at the new schema for tenant tables; public ones name theirs."""
    conn = uow.conn
    await conn.execution_options(schema_translate_map={TENANT: tenant.schema_name})
    await SqlProviders(conn).add(local_provider(datetime.now(UTC)))
