"""What a new tenant's schema starts with, written inside the registration transaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from domain.auth import TenantSeed
from domain.identity import Tenant
from domain.providers import LlmProvider
from persistence.repositories.resources import SqlProviders
from persistence.tables import TENANT

ProviderFactory = Callable[[datetime], LlmProvider]


def provider_seed(factories: Sequence[ProviderFactory]) -> TenantSeed | None:
    """A seed adding one LLM provider per factory (the local models of the laptop profile),
    so a newcomer can run an AI flow right after `register`; None when there are none."""
    if not factories:
        return None

    async def seed(uow: Any, tenant: Tenant) -> None:
        # The registration's unit of work is on the public schema: point its connection at
        # the new schema for tenant tables (public ones name their schema).
        conn = uow.conn
        await conn.execution_options(schema_translate_map={TENANT: tenant.schema_name})
        providers = SqlProviders(conn)
        now = datetime.now(UTC)
        for make in factories:
            await providers.add(make(now))

    return seed
