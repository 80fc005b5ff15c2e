"""Shared fixtures: one test database per run, a real server on a free port."""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

from tests.support.client import GQL
from tests.support.services import TestServices, free_port, wait_for_port

PASSWORD = "correct horse battery"

# `sandbox`, `any_sandbox` and `sandbox_registry` for every test directory.
pytest_plugins = ["tests.sandbox.fixtures"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`slow` tests (long variants) run under `make test-long` or an explicit `-m`."""
    if os.environ.get("CREWGRAPH_LONG_TESTS") or config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="long variant: make test-long (CREWGRAPH_LONG_TESTS=1)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def services() -> Iterator[TestServices]:
    svc = TestServices()
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def mongo_server(services: TestServices) -> Iterator[Any]:
    """The embedded MongoDB (nx-27017), for tests that stop and restart it; running again
    after the test. Skipped when the tests use an external MongoDB (MONGODB_URL)."""
    server = services.mongo_server
    if server is None:
        pytest.skip("MongoDB is external (MONGODB_URL): outage tests need the embedded one")
    yield server
    if not server.running:
        server.start()


@pytest.fixture(scope="session")
async def database(services: TestServices) -> AsyncIterator[str]:
    from persistence.db import Database
    from persistence.migrate import upgrade_public

    await services.create_database()
    db = Database(services.database_url)
    async with db.engine.begin() as conn:
        await upgrade_public(conn)
    await db.dispose()
    yield services.database_url
    await services.drop_database()


@pytest.fixture(scope="session")
def settings(services: TestServices, database: str) -> Any:
    from server.crypto import new_key_text
    from server.settings import Settings

    return Settings(
        secret_key=new_key_text(),
        database_url=database,
        redis_url=services.redis_url,
        mongodb_url=services.mongo_url,
        mongodb_database=services.mongo_database,
        # A stopped MongoDB fails an operation within a second (outage tests).
        mongodb_timeout_seconds=1.0,
        jwt_secret=secrets.token_urlsafe(40),
        # Any reuse of a rotated refresh token revokes its family at once here; the reuse
        # window has its own server in tests/security/test_auth_attacks.py.
        refresh_reuse_seconds=0.0,
        redis_prefix=f"cgtest{secrets.token_hex(4)}",
        log_json=True,
        log_level="WARNING",
        # Executions: short leases / sweeps / polls so recovery paths run in seconds.
        execution_lease_seconds=3.0,
        sweep_interval_seconds=0.5,
        redispatch_after_seconds=5.0,
        subscription_idle_poll_seconds=1.0,
        # Chat: an abandoned reply expires (and fails) within seconds.
        chat_reply_lease_seconds=3.0,
        # The scripted model's request log: tests prove with it what reached the model.
        local_llm_request_log=True,
        # Schedules and webhooks: scheduler ticks and delivery retries in fractions of a
        # second (a delivery gives up 4 s after its event).
        schedule_tick_seconds=0.2,
        webhook_poll_seconds=0.1,
        webhook_timeout_seconds=2.0,
        webhook_retry_base_seconds=0.2,
        webhook_retry_max_delay_seconds=1.0,
        webhook_retry_window_seconds=4.0,
        # Every test has its own tenants: a pre-started sandbox per tenant would never be
        # used (the warm pools are tested in tests/sandbox/).
        sandbox_warm_pool=False,
    )


@pytest.fixture(scope="session")
async def container(settings: Any) -> AsyncIterator[Any]:
    from server.bootstrap import build_container
    from tests.support.slow_executors import wrap

    # Test-only slow TOOL nodes (tests/support/slow_executors.py) beside the real ones.
    c = build_container(settings, rate_limits={}, wrap_executors=wrap)
    yield c
    await c.aclose()


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` served on a free local port for the block; yields its URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def server_url(container: Any) -> AsyncIterator[str]:
    from server.app import create_app

    async with serving(create_app(container)) as url:
        container.settings.self_url = url  # the `Local (scripted)` provider resolves to it
        yield url


@pytest.fixture
async def gql(server_url: str) -> AsyncIterator[GQL]:
    async with aclosing(GQL(server_url)) as client:
        yield client


@dataclass
class Team:
    token: str
    refresh: str
    user_id: str
    tenant_id: str
    slug: str
    email: str


async def register(gql: GQL, name: str | None = None) -> Team:
    email = f"admin-{uuid.uuid4().hex[:10]}@example.com"
    data = await gql.ok(
        "Register",
        {
            "input": {
                "tenantName": name or f"Team {uuid.uuid4().hex[:6]}",
                "email": email,
                "password": PASSWORD,
            }
        },
    )
    s = data["register"]
    return Team(
        s["accessToken"],
        s["refreshToken"],
        s["user"]["id"],
        s["user"]["tenant"]["id"],
        s["user"]["tenant"]["slug"],
        email,
    )


@pytest.fixture
async def team(gql: GQL) -> Team:
    return await register(gql)


@pytest.fixture
async def other_team(gql: GQL) -> Team:
    return await register(gql)


@dataclass
class Member:
    id: str
    email: str
    token: str
    refresh: str


async def add_member(gql: GQL, team: Team, role: str, email: str | None = None) -> Member:
    """A user of `team` with `role`, logged in."""
    email = email or f"{role.lower()}-{uuid.uuid4().hex[:8]}@example.com"
    created = await gql.ok(
        "CreateUser",
        {"input": {"email": email, "password": PASSWORD, "role": role}},
        token=team.token,
    )
    data = await gql.ok(
        "Login", {"input": {"email": email, "password": PASSWORD, "tenantSlug": team.slug}}
    )
    login = data["login"]
    return Member(created["createUser"]["id"], email, login["accessToken"], login["refreshToken"])


async def member_token(gql: GQL, team: Team, role: str) -> str:
    """A user of `team` with `role`, logged in; returns its access token."""
    return (await add_member(gql, team, role)).token
