"""The real tiny local model as an LLM provider of every new tenant (laptop profile).

`crewgraph serve` starts (or finds) the model, then registration seeds this provider in
the new tenant's schema, inside the registration transaction, next to the scripted one.
The model listens on a fixed loopback port (`CREWGRAPH_LOCAL_MODEL_PORT`), so the stored
base URL stays valid across restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from domain.auth import TenantSeed
from domain.identity import Tenant
from domain.providers import LlmProvider
from persistence.repositories.resources import SqlProviders
from persistence.tables import TENANT
from server.local_model import MODEL_ALIAS, PROVIDER_NAME

# A 135M model on two shared cores: a CrewAI agent step can take tens of seconds.
TIMEOUT_SECONDS = 300.0


def local_model_provider(base_url: str, now: datetime) -> LlmProvider:
    """SmolLM2 behind llama.cpp's OpenAI-compatible server: no key, no price."""
    return LlmProvider(
        id=str(uuid.uuid4()),
        name=PROVIDER_NAME,
        provider="openai",
        model=MODEL_ALIAS,
        base_url=base_url,
        api_key=None,
        version=1,
        created_at=now,
        updated_at=now,
        timeout_seconds=TIMEOUT_SECONDS,
        max_retries=0,
    )


def local_model_seed(base_url: str) -> TenantSeed:
    """A registration seed adding the real local model at `base_url` as a provider."""

    async def seed(uow: Any, tenant: Tenant) -> None:
        # The registration's unit of work is on the public schema; point tenant tables at
        # the new schema, as the scripted provider's seed does.
        conn = uow.conn
        await conn.execution_options(schema_translate_map={TENANT: tenant.schema_name})
        await SqlProviders(conn).add(local_model_provider(base_url, datetime.now(UTC)))

    return seed


def combine_seeds(seeds: Sequence[TenantSeed | None]) -> TenantSeed | None:
    """One seed running each given one in order (None when there are none)."""
    present = [s for s in seeds if s is not None]
    if not present:
        return None

    async def seed(uow: Any, tenant: Tenant) -> None:
        for each in present:
            await each(uow, tenant)

    return seed
