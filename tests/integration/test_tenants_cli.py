"""Operator commands on tenants: the Python use cases and `crewgraph tenants ...`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.errors import BadUserInput, NotFound
from domain.identity import TenantStatus
from domain.tenants import TenantAdminService, TenantQuota
from persistence.db import Database
from persistence.repositories.tenants import SqlTenantAdminStore
from tests.conftest import Team
from tests.support.client import GQL, error_code
from tests.support.serve import REPO
from tests.support.ws import close_code, init

DEFAULTS = TenantQuota(
    max_concurrent_executions=20,
    max_executions_per_day=100,
    max_tokens_per_day=1000,
    max_chat_sessions=10,
)


Done = subprocess.CompletedProcess[str]


def _cli(settings: Any, *args: str) -> Done:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        # The servers' Redis prefix and MongoDB: the suspension reaches their sockets and
        # runs, the audit entries their log.
        "CREWGRAPH_REDIS_PREFIX": settings.redis_prefix,
        "MONGODB_URL": settings.mongodb_url,
        "CREWGRAPH_MONGODB_DATABASE": settings.mongodb_database,
        "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
        "CREWGRAPH_SECRET_KEY": settings.secret_key,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "tenants", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_use_cases_suspend_activate_and_quota(settings: Any, team: Team) -> None:
    db = Database(settings.database_url, pool_size=1)
    try:
        service = TenantAdminService(
            SqlTenantAdminStore(db.engine), DEFAULTS, lambda: datetime.now(UTC)
        )
        record = await service.show(team.slug)
        assert record.status is TenantStatus.ACTIVE
        assert service.quota_of(record) == DEFAULTS

        await service.suspend(team.slug, "unpaid invoice")
        record = await service.show(team.slug)
        assert record.status is TenantStatus.SUSPENDED
        assert record.suspended_reason == "unpaid invoice"
        assert record.suspended_at is not None

        await service.set_quota(team.slug, {"max_tokens_per_day": 5, "max_chat_sessions": None})
        record = await service.show(team.slug)
        assert service.quota_of(record).max_tokens_per_day == 5
        assert service.quota_of(record).max_chat_sessions == 10

        await service.activate(team.slug)
        record = await service.show(team.slug)
        assert record.status is TenantStatus.ACTIVE
        assert record.suspended_reason is None
        assert service.quota_of(record).max_tokens_per_day == 5

        with pytest.raises(NotFound):
            await service.show("no-such-tenant")
        with pytest.raises(BadUserInput):
            await service.suspend(team.slug, "   ")
        with pytest.raises(BadUserInput):
            await service.set_quota(team.slug, {"max_tokens_per_day": -1})
        assert team.slug in {r.slug for r in await service.list()}
    finally:
        await db.dispose()


def test_cli_commands_and_exit_codes(settings: Any, team: Team) -> None:
    # Each command is a process that loads the servers' whole wiring (seconds of CPU): the
    # two that do not depend on the others' changes run beside that sequence.
    with ThreadPoolExecutor(2) as pool:
        listing = pool.submit(_cli, settings, "list")
        showing_missing = pool.submit(_cli, settings, "show", "no-such-tenant")
        suspended, quota, activated = _suspend_quota_activate(settings, team)
        listed, missing = listing.result(), showing_missing.result()

    assert listed.returncode == 0, listed.stderr
    assert team.slug in listed.stdout

    assert suspended.returncode == 0, suspended.stderr
    assert "SUSPENDED" in suspended.stdout and "abuse report" in suspended.stdout
    assert "recorded only" not in suspended.stderr  # it is enforced

    assert quota.returncode == 0, quota.stderr
    assert "max-executions-per-day" in quota.stdout and " 7" in quota.stdout

    assert activated.returncode == 0, activated.stderr
    assert "ACTIVE" in activated.stdout and "SUSPENDED" not in activated.stdout

    assert missing.returncode == 1
    assert "not found" in missing.stderr


def _suspend_quota_activate(settings: Any, team: Team) -> tuple[Done, Done, Done]:
    suspended = _cli(settings, "suspend", team.slug, "--reason", "abuse report")
    assert suspended.returncode == 0, suspended.stderr
    quota = _cli(settings, "set-quota", team.slug, "--max-executions-per-day", "7")
    assert quota.returncode == 0, quota.stderr
    return suspended, quota, _cli(settings, "activate", team.slug)


async def test_cli_suspension_is_enforced_and_audited(
    settings: Any, gql: GQL, team: Team, server_url: str
) -> None:
    async with gql.connect_ws() as ws:
        assert (await init(ws, {"authorization": f"Bearer {team.token}"}))["type"] == (
            "connection_ack"
        )
        done = await asyncio.to_thread(_cli, settings, "suspend", team.slug, "--reason", "fraud")
        assert done.returncode == 0, done.stderr
        assert await close_code(ws, "next", timeout=5) == 4403  # the server heard it
    body = await gql.op("Me", token=team.token)
    assert error_code(body) == "FORBIDDEN", body
    assert body["errors"][0]["extensions"]["reason"] == "TENANT_SUSPENDED"

    done = await asyncio.to_thread(_cli, settings, "activate", team.slug)
    assert done.returncode == 0, done.stderr
    assert (await gql.ok("Me", token=team.token))["me"]["email"] == team.email
    actions: dict[str, dict[str, Any]] = {}
    for _ in range(50):  # written by the commands' own processes, before they exit
        edges = (await gql.ok("AuditLog", {"first": 50}, token=team.token))["auditLog"]["edges"]
        actions = {e["node"]["action"]: e["node"] for e in edges}
        if "tenant.activated" in actions:
            break
        await asyncio.sleep(0.1)
    assert actions["tenant.suspended"]["data"] == {"reason": "fraud"}
    assert actions["tenant.suspended"]["actor"] is None
    assert actions["tenant.activated"]["actor"] is None
