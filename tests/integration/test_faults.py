"""Faults of the real services under load.

- Redis restarted while runs stream: a private redis-server (the machine's Redis is
  shared, so it is never touched) behind an API in arq mode and a `crewgraph worker`
  subprocess; it is killed and started again mid-run. Subscribers get an error or keep
  going, resume with `afterSequence`, the run finishes and no stored event is missing.
- PostgreSQL connections killed with `pg_terminate_backend` (this run's database only):
  the request in flight fails with a GraphQL error code, the next one works.

Covered elsewhere, not repeated here:
- MongoDB stopped during chat: tests/api/test_chat.py
  `test_a_mongodb_outage_is_a_clear_error_and_nothing_is_lost_or_duplicated`.
- A worker SIGKILLed mid-node (resumed elsewhere, completed nodes not re-run):
  tests/integration/test_worker_processes.py
  `test_killed_worker_execution_completes_on_another_worker`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import Team, register, serving
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, op
from tests.support.serve import REPO
from tests.support.services import free_port, wait_for_port
from tests.support.ws import init, recv, subscribe


class PrivateRedis:
    """A redis-server of this test alone, on a fixed port so a restart keeps the URL."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    await redis.start()
    yield redis
    redis.kill()


@pytest.fixture
def worker_proc(settings: Any, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": private_redis.url,
        "MONGODB_URL": settings.mongodb_url,
        "CREWGRAPH_MONGODB_DATABASE": settings.mongodb_database,
        "CREWGRAPH_REDIS_PREFIX": "cgfault",
        "CREWGRAPH_SECRET_KEY": settings.secret_key,
        "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
        "CREWGRAPH_EXECUTION_LEASE_SECONDS": "2",
        "CREWGRAPH_SWEEP_INTERVAL_SECONDS": "0.5",
        "CREWGRAPH_LOG_LEVEL": "WARNING",
        "CREWGRAPH_DATA_DIR": str(tmp_path / "data"),
    }
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli", "worker"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture
async def private_api(
    settings: Any, private_redis: PrivateRedis, worker_proc: Any
) -> AsyncIterator[GQL]:
    from server.app import create_app
    from server.bootstrap import build_container
    from tests.support.slow_executors import wrap

    own = settings.model_copy(
        update={
            "redis_url": private_redis.url,
            "redis_prefix": "cgfault",
            "worker_mode": "arq",
            "execution_lease_seconds": 2.0,
            "sweep_interval_seconds": 0.5,
            "redispatch_after_seconds": 2.0,
        }
    )
    container = build_container(own, rate_limits={}, wrap_executors=wrap)
    try:
        async with serving(create_app(container)) as url, aclosing(GQL(url)) as client:
            yield client
    finally:
        await container.aclose()


async def _stream(gql: GQL, team: Team, execution_id: str, after: int, seen: list[Any]) -> bool:
    """Events after `after` into `seen` until `complete` (True) or an error / a dropped
    socket (False)."""
    try:
        async with gql.connect_ws() as ws:
            ack = await init(ws, {"authorization": f"Bearer {team.token}"})
            if ack["type"] != "connection_ack":
                return False
            await subscribe(
                ws,
                "ev",
                op("ExecutionEvents"),
                {"executionId": execution_id, "afterSequence": after},
            )
            while True:
                msg = await recv(ws, 20)
                if msg["type"] == "complete":
                    return True
                errors = msg["payload"] if msg["type"] == "error" else None
                if msg["type"] == "next":
                    errors = msg["payload"].get("errors")
                if errors is not None:
                    # A clean error the client can act on, never an internal one.
                    codes = [e["extensions"]["code"] for e in errors]
                    assert codes == ["SERVICE_UNAVAILABLE"], msg
                    return False
                assert msg["type"] == "next", msg
                seen.append(msg["payload"]["data"]["executionEvents"])
    except AssertionError:
        raise
    except Exception as exc:  # the socket closed under us: resume
        print(f"stream interrupted: {type(exc).__name__}: {exc}")
        return False


async def _follow(gql: GQL, team: Team, execution_id: str, first: Any, seen: list[Any]) -> None:
    """Wait for the first stream, then resume after the last event seen until complete."""
    finished = await first
    for _ in range(10):
        if finished:
            return
        after = seen[-1]["sequence"] if seen else 0
        finished = await _stream(gql, team, execution_id, after, seen)
    raise AssertionError(f"the stream of {execution_id} never completed: {seen}")


async def test_redis_restarted_while_runs_stream(
    private_api: GQL, private_redis: PrivateRedis, worker_proc: Any
) -> None:
    gql = private_api
    team = await register(gql)
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.3, 2.0, 0.3, 0.3]))
    runs = [(await f.execute(gql, team.token, flow["id"]))["id"] for _ in range(2)]
    seen: dict[str, list[Any]] = {r: [] for r in runs}
    streams = {r: asyncio.create_task(_stream(gql, team, r, 0, seen[r])) for r in runs}
    for r in runs:
        await f.wait_node(gql, team.token, r, "s1", "RUNNING", timeout=30)
    private_redis.kill()  # mid-node, with subscribers attached
    await asyncio.sleep(0.5)
    await private_redis.start()  # empty: queue, pub/sub and locks are gone

    await asyncio.gather(*(_follow(gql, team, r, streams[r], seen[r]) for r in runs))
    assert worker_proc.poll() is None, "the worker died with Redis"
    for r in runs:
        done = await f.wait_status(gql, team.token, r, timeout=30)
        assert done["status"] == "COMPLETED", done
        stored = (await gql.ok("ExecutionEventLog", {"id": r, "first": 1000}, token=team.token))[
            "execution"
        ]["events"]
        assert [e["sequence"] for e in stored] == list(range(1, len(stored) + 1))
        # Each subscriber saw every stored event once, in order, across its resumes.
        assert [e["sequence"] for e in seen[r]] == [e["sequence"] for e in stored]
        completed = [e["nodeId"] for e in stored if e["type"] == "NODE_COMPLETED"]
        assert completed == ["in", "s0", "s1", "s2", "s3", "out"]


async def test_postgres_connections_killed_mid_request(gql: GQL, team: Team, services: Any) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.1]))
    admin = await asyncpg.connect(services.admin_dsn)

    async def kill_backends() -> int:
        # Only this run's database: other sessions share the server.
        await asyncio.sleep(0.02)
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            services.database,
        )
        return len(rows)

    failed = 0
    try:
        # No API request holds a query long enough to aim at, so the kill races bursts of
        # reads until it has hit at least one in flight.
        for _ in range(5):
            reads = [gql.op("Flow", {"id": flow["id"]}, token=team.token) for _ in range(10)]
            killed, *bodies = await asyncio.gather(kill_backends(), *reads)
            assert killed > 0
            for body in bodies:
                if body.get("errors"):  # failed cleanly: a code, a message, no traceback
                    assert [e["extensions"]["code"] for e in body["errors"]] == [
                        "SERVICE_UNAVAILABLE"
                    ], body
                    assert "retry" in body["errors"][0]["message"]
                    failed += 1
                else:
                    assert body["data"]["flow"]["id"] == flow["id"]
            if failed:
                break
        assert failed, "no request was in flight when its backend was terminated"
        # The pool replaced the dead connections: the next requests work.
        for _ in range(3):
            again = await gql.ok("Flow", {"id": flow["id"]}, token=team.token)
            assert again["flow"]["id"] == flow["id"]
    finally:
        await admin.close()
