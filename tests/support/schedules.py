"""Schedules through the API, and helpers that make one due and wait for the session
server's scheduler loop to act on it (instead of waiting for the clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.client import GQL

SCHEDULE = """
fragment ScheduleFields on Schedule {
  id cron timezone inputs enabled nextRunAt createdAt
  flow { id name }
  lastExecution { id status inputs }
}
"""
CREATE = (
    "mutation($input: ScheduleInput!) { createSchedule(input: $input) { ...ScheduleFields } }"
    + SCHEDULE
)
GET = "query($id: ID!) { schedule(id: $id) { ...ScheduleFields } }" + SCHEDULE


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def create_schedule(gql: GQL, token: str, **input: Any) -> dict[str, Any]:
    created: dict[str, Any] = (await gql.ok(CREATE, {"input": input}, token=token))[
        "createSchedule"
    ]
    return created


async def make_due(container: Any, schedule_id: str, ago: timedelta) -> None:
    """Move the schedule's next run into the past, as if the clock had got there."""
    pool = await container.db.raw()
    row = await pool.fetchrow(
        "SELECT tenant_schema FROM public.schedule_due WHERE schedule_id = $1::uuid",
        schedule_id,
    )
    assert row is not None, "an enabled schedule is in the due index"
    schema = row["tenant_schema"]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            f'UPDATE "{schema}".schedules SET next_run_at = now() - $2::interval '
            "WHERE id = $1::uuid",
            schedule_id,
            ago,
        )
        await conn.execute(
            "UPDATE public.schedule_due SET next_run_at = now() - $2::interval "
            "WHERE schedule_id = $1::uuid",
            schedule_id,
            ago,
        )


async def wait_fired(
    gql: GQL, token: str, schedule_id: str, last: str | None, timeout: float = 15.0
) -> dict[str, Any]:
    """The schedule once it has started a run other than `last`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got: dict[str, Any] = (await gql.ok(GET, {"id": schedule_id}, token=token))["schedule"]
        if got["lastExecution"] and got["lastExecution"]["id"] != last:
            return got
        assert asyncio.get_running_loop().time() < deadline, "the schedule did not fire"
        await asyncio.sleep(0.1)


async def wait_moved_on(
    gql: GQL, token: str, schedule_id: str, timeout: float = 15.0
) -> dict[str, Any]:
    """The schedule once its next run is no longer in the past (fired or skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got: dict[str, Any] = (await gql.ok(GET, {"id": schedule_id}, token=token))["schedule"]
        if at(got["nextRunAt"]) > datetime.now(UTC) - timedelta(seconds=1):
            return got
        assert asyncio.get_running_loop().time() < deadline, "the schedule did not move on"
        await asyncio.sleep(0.1)
