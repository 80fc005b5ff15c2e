"""A schedule every minute fires exactly once per due time with two `crewgraph worker`
processes scanning for due schedules at the same time.

What this proves, and what it does not: the two workers are real subprocesses whose
scheduler loops tick every 50 ms against the same database, while the session server's
scheduler is paused. Instead of waiting for the wall clock to reach each minute, the test
moves the schedule's due time into the past (in the tenant row and the due index, as the
clock would), five times: "the minute has come". Each time both processes race for the
same due row, and exactly one run must be created, with `nextRunAt` moved to the next
minute boundary. It does not wait through real minutes; `next_run` itself (cron and
timezones) is checked in tests/api/test_schedules.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_schedules import CREATE, GET, make_due
from tests.conftest import Team
from tests.support import flows as f
from tests.support.client import GQL

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5


@pytest.fixture
async def paused_scheduler(container: Any) -> AsyncIterator[None]:
    container.schedules.paused = True
    yield
    container.schedules.paused = False


@pytest.fixture
def two_workers(settings: Any, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CREWGRAPH_REDIS_PREFIX": settings.redis_prefix + "sched",
        "CREWGRAPH_SECRET_KEY": settings.secret_key,
        "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
        "CREWGRAPH_SCHEDULE_TICK_SECONDS": "0.05",
        "CREWGRAPH_WEBHOOK_POLL_SECONDS": "1",
        "CREWGRAPH_LOG_LEVEL": "WARNING",
        "CREWGRAPH_DATA_DIR": str(tmp_path / "data"),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.cli", "worker"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _scheduled_runs(container: Any, schema: str, schedule_id: str) -> list[str]:
    pool = await container.db.raw()
    rows = await pool.fetch(
        f'SELECT id FROM "{schema}".executions WHERE created_by = $1 ORDER BY created_at',
        f"schedule:{schedule_id}",
    )
    return [str(r["id"]) for r in rows]


async def test_every_minute_fires_once_per_due_time_with_two_workers(
    gql: GQL,
    team: Team,
    container: Any,
    paused_scheduler: None,
    two_workers: list[subprocess.Popen[bytes]],
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    created = (
        await gql.ok(
            CREATE,
            {"input": {"flowId": flow["id"], "cron": "* * * * *", "inputs": {"score": 3}}},
            token=team.token,
        )
    )["createSchedule"]
    pool = await container.db.raw()
    schema = await pool.fetchval(
        "SELECT schema_name FROM public.tenants WHERE id = $1::uuid", team.tenant_id
    )
    loop = asyncio.get_running_loop()
    last: str | None = None
    for round_ in range(1, ROUNDS + 1):
        await make_due(container, created["id"], timedelta(seconds=1))
        deadline = loop.time() + 30  # the first round waits for the workers to start
        while True:
            got = (await gql.ok(GET, {"id": created["id"]}, token=team.token))["schedule"]
            if got["lastExecution"] and got["lastExecution"]["id"] != last:
                break
            assert all(p.poll() is None for p in two_workers), "a worker died"
            assert loop.time() < deadline, f"round {round_}: the schedule did not fire"
            await asyncio.sleep(0.05)
        last = got["lastExecution"]["id"]
        next_at = datetime.fromisoformat(got["nextRunAt"])
        assert next_at.second == 0 and next_at.microsecond == 0
        assert timedelta(0) < next_at - datetime.now(UTC) <= timedelta(seconds=60)
        # Give the other worker many ticks to fire the same due time a second time.
        await asyncio.sleep(0.5)
        runs = await _scheduled_runs(container, schema, created["id"])
        assert len(runs) == round_, f"round {round_}: {len(runs)} runs"
        assert runs[-1] == last
    assert all(p.poll() is None for p in two_workers)
