"""The daily execution quota holds across API processes: two `crewgraph serve` processes
on one database, many concurrent executeFlow calls on each, exactly the quota succeeds
(the count runs under a PostgreSQL lock in the creating transaction, not in memory)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.tenants import TenantAdminService
from persistence.db import Database
from persistence.repositories.tenants import SqlTenantAdminStore
from server.tenants_cli import default_quota
from tests.conftest import register
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.serve import serve_env, spawn, stop, wait_until_ready
from tests.support.services import free_port

QUOTA = 5
CALLS_PER_PROCESS = 12


@pytest.fixture
async def two_apis(settings: Any, tmp_path: Path) -> AsyncIterator[list[GQL]]:
    """Two `crewgraph serve` processes sharing the session's PostgreSQL and Redis."""
    procs: list[subprocess.Popen[bytes]] = []
    async with AsyncExitStack() as stack:
        try:
            clients: list[GQL] = []
            for i in range(2):
                port = free_port()
                env = serve_env(settings, port, tmp_path / f"data{i}")
                procs.append(spawn(env, tmp_path / f"serve{i}.log"))
                clients.append(
                    await stack.enter_async_context(aclosing(GQL(f"http://127.0.0.1:{port}")))
                )
            for i, (client, proc) in enumerate(zip(clients, procs, strict=True)):
                await wait_until_ready(client.http, proc, tmp_path / f"serve{i}.log", 180)
            yield clients
        finally:
            for proc in procs:
                stop(proc)


async def test_two_processes_never_pass_the_daily_quota(
    gql: GQL, settings: Any, two_apis: list[GQL]
) -> None:
    team = await register(gql)
    db = Database(settings.database_url, pool_size=1)
    try:
        admin = TenantAdminService(
            SqlTenantAdminStore(db.engine), default_quota(settings), lambda: datetime.now(UTC)
        )
        await admin.set_quota(team.slug, {"max_executions_per_day": QUOTA})
    finally:
        await db.dispose()
    flow = await f.create_flow(gql, team.token, f.branching())

    async def one(api: GQL, score: int) -> dict[str, Any]:
        return await api.op(
            "ExecuteFlow", {"id": flow["id"], "inputs": {"score": score}}, token=team.token
        )

    bodies = await asyncio.gather(
        *(one(api, i) for api in two_apis for i in range(CALLS_PER_PROCESS))
    )
    succeeded = [b for b in bodies if not b.get("errors")]
    refused = [b for b in bodies if b.get("errors")]
    assert len(succeeded) == QUOTA, [b.get("errors") for b in bodies]
    assert all(error_code(b) == "LIMIT_EXCEEDED" for b in refused), refused
    assert {b["errors"][0]["extensions"]["quota"] for b in refused} == {"maxExecutionsPerDay"}
    # Both processes took part (the gather interleaves them), and the store agrees.
    listed = (await gql.ok("Executions", {"flowId": flow["id"], "first": 50}, token=team.token))[
        "executions"
    ]
    assert len(listed["edges"]) == QUOTA
