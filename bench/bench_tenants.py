"""Tenant provisioning at 1, 100 and 1,000 tenants, and a query's latency with 1,000
tenants against 1.

- Provisioning: `IdentityService.register` in this process on the real repositories
  (persistence/), with a hasher that costs nothing, so argon2 is excluded. "Schema ready"
  is the `create_schema` step alone. With the pool on, a spare schema made ahead of time
  at the head is claimed and renamed (what `register` does now); with the pool empty the
  claim finds none and the rendered DDL goes in one round trip (the path before, and the
  fallback). Registrations alternate, spare then empty pool, in the same windows of the
  same installation. The bench refills the pool (one spare) before each spare
  registration, off the clock, and times it: the API does that in the background after
  the registration commits. The floor is the same DDL script sent by asyncpg alone
  (PostgreSQL's own time), rolled back.
- Queries: two `crewgraph serve` processes, one on a database with 1 tenant and one on a
  database with 1,000 (the provisioned ones), the same tenant data in each (20 agents, 2
  tools each); `me` and `agents(first: 20)` sent one at a time, the two servers
  alternating in small batches; the ratio is of the p50s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._harness import Server, machine, percentile, server, services  # noqa: E402
from domain.auth import IdentityService  # noqa: E402
from domain.identity import Tenant  # noqa: E402
from persistence.db import Database  # noqa: E402
from persistence.migrate import provision_tenant, tenant_ddl, upgrade_public  # noqa: E402
from persistence.repositories.identity import SqlTenants  # noqa: E402
from persistence.spare_schemas import SpareSchemas  # noqa: E402
from persistence.uow import SqlUnitOfWork  # noqa: E402
from server.security import JwtCodec  # noqa: E402
from tests.support import builders as b  # noqa: E402
from tests.support.client import GQL  # noqa: E402
from tests.support.services import TestServices  # noqa: E402

ME = "{ me { id email role } }"
AGENTS = "{ agents(first: 20) { edges { node { id name role goal tools { id name } } } } }"
TARGET_MS = 20.0
FLAT = 1.25  # the 1,000th window's p50 against the 1st's
QUERY_TARGET = 1.10
PASSWORD = "correct horse battery"
POPULATE_AT_ONCE = 4  # registrations under way at once between windows (off the clock)


class FreeHasher:
    """Argon2 is excluded from the provisioning figures: the same hash every time."""

    _HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"

    async def hash(self, password: str) -> str:
        return self._HASH

    async def verify(self, stored: str | None, password: str) -> bool:
        return stored == self._HASH


@dataclass
class Timings:
    ready: list[float] = field(default_factory=list)  # create_schema, ms
    register: list[float] = field(default_factory=list)  # the whole register, ms
    claimed: list[bool] = field(default_factory=list)  # whether a spare was claimed


class _TimedTenants(SqlTenants):
    def __init__(self, conn: Any, into: Timings) -> None:
        super().__init__(conn)
        self._into = into

    async def create_schema(self, tenant: Tenant) -> None:
        started = time.perf_counter()
        # What SqlTenants.create_schema does, keeping whether a spare was claimed.
        claimed = await provision_tenant(self._conn, tenant.schema_name)
        self._into.ready.append((time.perf_counter() - started) * 1000)
        self._into.claimed.append(claimed)


class _TimedUnitOfWork(SqlUnitOfWork):
    factory: _Factory

    async def __aenter__(self) -> _TimedUnitOfWork:
        await super().__aenter__()
        self.tenants = _TimedTenants(self.conn, self.factory.into)
        return self


class _Factory:
    """`SqlUnitOfWorkFactory` whose tenants repository times `create_schema`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.into = Timings()

    def __call__(self, tenant_schema: str | None = None) -> SqlUnitOfWork:
        uow = _TimedUnitOfWork(self.db, tenant_schema)
        uow.factory = self
        return uow


@dataclass
class Window:
    first: int  # the number of the window's first tenant in the installation
    spare: Timings = field(default_factory=Timings)
    empty: Timings = field(default_factory=Timings)
    floor: list[float] = field(default_factory=list)
    refill: list[float] = field(default_factory=list)  # making one spare, ms


async def _register(service: IdentityService, factory: _Factory) -> tuple[Timings, str]:
    """One registration; its timings and its access token."""
    factory.into = Timings()
    started = time.perf_counter()
    email = f"t{uuid.uuid4().hex[:10]}@example.com"
    session = await service.register(f"bench tenant {uuid.uuid4().hex[:8]}", email, PASSWORD)
    factory.into.register.append((time.perf_counter() - started) * 1000)
    return factory.into, session.access_token


async def _populate(service: IdentityService, factory: _Factory, n: int) -> None:
    """`n` more tenants (pool empty: each makes its schema), a few at a time."""
    pending = iter(range(n))

    async def one_by_one() -> None:
        for _ in pending:
            email = f"p{uuid.uuid4().hex[:10]}@example.com"
            await service.register(f"bench tenant {uuid.uuid4().hex[:8]}", email, PASSWORD)

    await asyncio.gather(*(one_by_one() for _ in range(POPULATE_AT_ONCE)))


async def _floor(conn: Any, script_for: Any) -> float:
    """PostgreSQL's own time for the DDL: the script alone, in a transaction rolled back,
    on a connection kept open (its catalog caches warm, as a pooled one's are)."""
    transaction = conn.transaction()
    await transaction.start()
    started = time.perf_counter()
    await conn.execute(script_for(f"tenant_{secrets.token_hex(6)}"))
    took = (time.perf_counter() - started) * 1000
    await transaction.rollback()
    return took


@contextlib.asynccontextmanager
async def _second_database(svc: TestServices) -> AsyncIterator[TestServices]:
    """Another database on the same PostgreSQL (and the same Redis and MongoDB)."""
    other = TestServices()
    other.admin_dsn, other.redis_url, other.mongo_url = svc.admin_dsn, svc.redis_url, ""
    await other.create_database()
    try:
        yield other
    finally:
        await other.drop_database()


@contextlib.asynccontextmanager
async def _servers(
    many: TestServices, one: TestServices, jwt_secret: str
) -> AsyncIterator[tuple[Server, Server]]:
    """Both API servers, started side by side (each start is mostly imports)."""
    # No spares of their own: the bench alone decides when the crowded database has one.
    managers = [
        server(svc, CREWGRAPH_JWT_SECRET=jwt_secret, CREWGRAPH_TENANT_SCHEMA_POOL="0")
        for svc in (many, one)
    ]
    started = await asyncio.gather(*(m.__aenter__() for m in managers), return_exceptions=True)
    try:
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        yield started[0], started[1]  # type: ignore[misc]
    finally:
        for manager, srv in zip(managers, started, strict=True):
            if not isinstance(srv, BaseException):
                await manager.__aexit__(None, None, None)


async def _query_tenant(url: str, jwt_secret: str) -> tuple[IdentityService, Database]:
    db = Database(url)
    async with db.engine.begin() as conn:
        await upgrade_public(conn)
    service = IdentityService(_Factory(db), FreeHasher(), JwtCodec(jwt_secret, 3600), 86400)
    return service, db


async def _fill(gql: GQL, token: str) -> None:
    tools = [await b.tool(gql, token) for _ in range(4)]
    for i in range(20):
        await b.agent(gql, token, toolIds=[tools[i % 4]["id"], tools[(i + 1) % 4]["id"]])


async def _latencies(client: httpx.AsyncClient, url: str, query: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post(url + "/graphql", json={"query": query})
        out.append((time.perf_counter() - started) * 1000)
        body = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise RuntimeError(f"query failed: {response.status_code} {body}")
    return out


async def run(short: bool) -> None:
    starts = [1, 5] if short else [1, 100, 1000]
    per_path = 2 if short else 10  # registrations per path per window
    rounds, batch = (2, 5) if short else (20, 10)
    jwt_secret = secrets.token_urlsafe(40)
    windows = [Window(first) for first in starts]
    async with services() as svc, _second_database(svc) as single:
        many_service, many_db = await _query_tenant(svc.database_url, jwt_secret)
        one_service, one_db = await _query_tenant(single.database_url, jwt_secret)
        async with _servers(svc, single, jwt_secret) as (many_srv, one_srv):
            factory = many_service.uow
            assert isinstance(factory, _Factory)
            async with many_db.engine.connect() as conn:
                started = time.perf_counter()
                ddl = await tenant_ddl(conn)
                render_ms = (time.perf_counter() - started) * 1000
                await conn.rollback()
            # Not started: the bench refills it itself, off the clock (see the docstring).
            pool = SpareSchemas(many_db, target=1)
            floor_conn = await asyncpg.connect(svc.database_dsn)
            tenants = 0
            populate_s = 0.0
            many_token = ""  # the crowded installation's query tenant is its first
            for window in windows:
                started = time.perf_counter()
                await _populate(many_service, factory, window.first - 1 - tenants)
                populate_s += time.perf_counter() - started
                tenants = max(tenants, window.first - 1)
                for _ in range(per_path):
                    started = time.perf_counter()
                    await pool.refill()
                    window.refill.append((time.perf_counter() - started) * 1000)
                    spare, token = await _register(many_service, factory)
                    empty, _ = await _register(many_service, factory)  # the pool is empty
                    if spare.claimed != [True] or empty.claimed != [False]:
                        raise RuntimeError(f"unexpected claims: {spare} {empty}")
                    many_token = many_token or token
                    tenants += 2
                    for mine, theirs in ((window.spare, spare), (window.empty, empty)):
                        mine.ready += theirs.ready
                        mine.register += theirs.register
                    window.floor.append(await _floor(floor_conn, ddl.script))
            one_token = (
                await one_service.register("query", "q@example.com", PASSWORD)
            ).access_token
            many_gql, one_gql = GQL(many_srv.url), GQL(one_srv.url)
            await _fill(many_gql, many_token)
            await _fill(one_gql, one_token)
            await many_gql.aclose()
            await one_gql.aclose()
            queries: dict[str, dict[str, list[float]]] = {}
            clients = {
                "one": (one_srv.url, httpx.AsyncClient(headers=_auth(one_token), timeout=30)),
                "many": (many_srv.url, httpx.AsyncClient(headers=_auth(many_token), timeout=30)),
            }
            try:
                for name, query in (("me", ME), ("agents", AGENTS)):
                    for url, client in clients.values():
                        await _latencies(client, url, query, 5)  # warm both
                    for i in range(rounds):
                        sides = list(clients.items())
                        for side, (url, client) in sides[::-1] if i % 2 else sides:
                            lat = await _latencies(client, url, query, batch)
                            queries.setdefault(name, {}).setdefault(side, []).extend(lat)
            finally:
                for _, client in clients.values():
                    await client.aclose()
        await many_db.dispose()
        await one_db.dispose()
    _report(windows, render_ms, populate_s, tenants, queries, short)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def _report(
    windows: list[Window],
    render_ms: float,
    populate_s: float,
    tenants: int,
    queries: dict[str, dict[str, list[float]]],
    short: bool,
) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Tenant provisioning ({machine()}, load average {load} at the end); PostgreSQL "
        "and the API servers on this machine; "
        f"{tenants:,} tenants registered in-process (`IdentityService.register`, argon2 "
        "replaced by a free hasher). In each window registrations alternate: one claiming "
        "a spare schema (the pool refilled to one spare before it, off the clock, as the "
        "API does in the background after each registration), then one finding the pool "
        "empty (the rendered DDL inline, the path before); p50 over the window."
    )
    print()
    print(
        "| tenants | registrations | schema ready: spare claimed p50 | p90 | ≤ 20 ms "
        "| pool empty (DDL inline) p50 | empty / spare | register without hashing: spare "
        "p50 | pool empty p50 | DDL alone (PostgreSQL) p50 | making one spare (background) "
        "p50 |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        n = len(w.spare.ready) + len(w.empty.ready)
        spare, empty = _p50(w.spare.ready), _p50(w.empty.ready)
        print(
            f"| {_ordinal(w.first)} (tenants {w.first:,}–{w.first + n - 1:,}) | {n} "
            f"| **{spare:.1f} ms** | {percentile(w.spare.ready, 90):.1f} ms "
            f"| {'OK' if spare <= TARGET_MS else 'MISSED'} | {empty:.1f} ms "
            f"| {empty / spare:.0f}x | {_p50(w.spare.register):.1f} ms "
            f"| {_p50(w.empty.register):.1f} ms | {_p50(w.floor):.1f} ms "
            f"| {_p50(w.refill):.1f} ms |"
        )
    first, last = windows[0], windows[-1]
    flat = _p50(last.spare.ready) / _p50(first.spare.ready)
    floor = statistics.median(_p50(w.floor) for w in windows)
    print()
    print(
        f"Rendering the DDL (Alembic migrating a throwaway schema once per process, rolled "
        f"back; `crewgraph serve` does it at start-up): {render_ms:.0f} ms, once. "
        f"Registering the tenants between windows ({POPULATE_AT_ONCE} at a time, pool "
        f"empty): {populate_s:.0f} s."
    )
    print()
    points = "; ".join(
        f"{_ordinal(w.first)}: {_p50(w.spare.ready):.1f} ms "
        f"{'OK' if _p50(w.spare.ready) <= TARGET_MS else 'MISSED'}"
        for w in windows
    )
    print(
        f"Targets, pool on: schema ready p50 ≤ {TARGET_MS:.0f} ms at the {points}; "
        f"flat to the {_ordinal(last.first)} tenant (p50 {_ordinal(last.first)} / "
        f"{_ordinal(first.first)} ≤ {FLAT}): {flat:.2f}: {'OK' if flat <= FLAT else 'MISSED'}. "
        f"Pool empty (for comparison): worst p50 "
        f"{max(_p50(w.empty.ready) for w in windows):.1f} ms, against PostgreSQL's own "
        f"{floor:.1f} ms for the DDL: creating ~25 tables with their TOAST tables and ~35 "
        "indexes (~130 relation files) is what the pool takes off the registration."
    )
    print()
    print(
        f"| query (tenant 1 of the installation) | 1 tenant p50 | p90 | {tenants:,} tenants "
        "p50 | p90 | ratio | target | |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, sides in queries.items():
        one, many = sides["one"], sides["many"]
        ratio = _p50(many) / _p50(one)
        print(
            f"| `{name}` | {_p50(one):.1f} ms | {percentile(one, 90):.1f} ms "
            f"| {_p50(many):.1f} ms | {percentile(many, 90):.1f} ms | {ratio:.2f} "
            f"| ≤ {QUERY_TARGET} | {'OK' if ratio <= QUERY_TARGET else 'MISSED'} |"
        )
    count = sum(len(v) for sides in queries.values() for v in sides.values())
    print()
    print(
        f"{count} requests, one at a time, the two servers alternating every few requests "
        "(same code, same PostgreSQL, one database each)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true")
    asyncio.run(run(parser.parse_args().short))
