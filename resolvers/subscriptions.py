"""Subscriptions. Every one authenticates its own caller, whatever the protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

from domain.errors import BadUserInput
from schema.context import Info


async def heartbeat(info: Info, interval_seconds: float = 10.0) -> AsyncGenerator[datetime, None]:
    """Server time every `interval_seconds`: lets dashboards see the socket is alive."""
    await info.context.principal()
    if not 0.05 <= interval_seconds <= 3600:
        raise BadUserInput(
            "intervalSeconds must be between 0.05 and 3600",
            {"intervalSeconds": "must be between 0.05 and 3600"},
        )
    while True:
        yield datetime.now(UTC)
        await asyncio.sleep(interval_seconds)
