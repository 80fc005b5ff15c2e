"""`crewgraph worker` processes over arq: a SIGKILLed worker's execution finishes on another.

The API here runs with CREWGRAPH_WORKER_MODE=arq (it only dispatches; its sweeper
re-dispatches), and the workers are real subprocesses (`python -m tests.support.cli worker`:
`crewgraph worker` with the test-only slow TOOL nodes) and a 2 s lease. The session
server's own sweeper is paused, so only the workers can pick executions up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Team, serving
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL

ROOT = Path(__file__).resolve().parents[2]
LEASE = 2.0


@pytest.fixture(scope="module")
def arq_settings(settings: Any) -> Any:
    return settings.model_copy(
        update={
            "worker_mode": "arq",
            "redis_prefix": f"cgarq{secrets.token_hex(4)}",
            "execution_lease_seconds": LEASE,
            "sweep_interval_seconds": 0.5,
        }
    )


@pytest.fixture(scope="module")
async def arq_api(arq_settings: Any) -> AsyncIterator[str]:
    from server.app import create_app
    from server.bootstrap import build_container
    from tests.support.slow_executors import wrap

    app = create_app(build_container(arq_settings, rate_limits={}, wrap_executors=wrap))
    async with serving(app) as url:
        yield url


@pytest.fixture
async def api(arq_api: str) -> AsyncIterator[GQL]:
    async with aclosing(GQL(arq_api)) as client:
        yield client


@pytest.fixture
async def paused_sweeper(container: Any) -> AsyncIterator[None]:
    container.runtime.sweeper.paused = True
    yield
    container.runtime.sweeper.paused = False


class Workers:
    def __init__(self, settings: Any, log: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "MONGODB_URL": settings.mongodb_url,
            "CREWGRAPH_MONGODB_DATABASE": settings.mongodb_database,
            "CREWGRAPH_REDIS_PREFIX": settings.redis_prefix,
            "CREWGRAPH_SECRET_KEY": settings.secret_key,
            "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
            "CREWGRAPH_EXECUTION_LEASE_SECONDS": str(LEASE),
            "CREWGRAPH_SWEEP_INTERVAL_SECONDS": "0.5",
            "CREWGRAPH_TEST_EXECUTOR_LOG": str(log),
            "CREWGRAPH_LOG_LEVEL": "WARNING",
            "CREWGRAPH_DATA_DIR": str(log.parent / "data"),
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cli", "worker"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(arq_settings: Any, tmp_path: Path) -> Iterator[Workers]:
    log = tmp_path / "runs.log"
    log.touch()
    pool = Workers(arq_settings, log)
    yield pool
    pool.stop()


def runs(log: Path, execution_id: str) -> list[tuple[str, int]]:
    out = []
    for line in log.read_text().splitlines():
        ident, node, pid = line.split()
        if ident == execution_id:
            out.append((node, int(pid)))
    return out


async def wait_until(check: Any, timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def _killed_worker_run(
    api: GQL, team: Team, workers: Workers, executions: int, timeout: float
) -> None:
    log = Path(workers.env["CREWGRAPH_TEST_EXECUTOR_LOG"])
    tool = await b.tool(api, team.token)
    flow = await f.create_flow(api, team.token, f.slow_chain(tool["id"], [0.2, 0.2, 3.0, 0.2]))
    first = workers.start()
    ids = [(await f.execute(api, team.token, flow["id"]))["id"] for _ in range(executions)]

    async def all_on_s2() -> bool:
        found = [runs(log, i) for i in ids]
        return all(("s2", first.pid) in r for r in found)

    await wait_until(all_on_s2, 30)
    first.send_signal(signal.SIGKILL)  # no shutdown hook, no lease release
    first.wait()
    second = workers.start()
    for ident in ids:
        done = await f.wait_status(api, team.token, ident, timeout=timeout)
        assert done["status"] == "COMPLETED", done
        assert done["attempts"] == 2
        ran = runs(log, ident)
        # Completed nodes ran once, on the killed worker; the interrupted node ran again,
        # and the rest ran once, on the other worker.
        assert ran == [
            ("s0", first.pid),
            ("s1", first.pid),
            ("s2", first.pid),
            ("s2", second.pid),
            ("s3", second.pid),
        ], ran
        events = (
            await api.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=team.token)
        )["execution"]["events"]
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        completed = [e["nodeId"] for e in events if e["type"] == "NODE_COMPLETED"]
        assert completed == ["in", "s0", "s1", "s2", "s3", "out"]
        assert [e["data"]["resumed"] for e in events if e["type"] == "EXECUTION_STARTED"] == [
            False,
            True,
        ]


async def test_killed_worker_execution_completes_on_another_worker(
    api: GQL, workers: Workers, paused_sweeper: None
) -> None:
    from tests.conftest import register

    team = await register(api)
    await _killed_worker_run(api, team, workers, executions=1, timeout=30)


@pytest.mark.slow
async def test_killed_worker_with_many_executions(
    api: GQL, workers: Workers, paused_sweeper: None
) -> None:
    from tests.conftest import register

    team = await register(api)
    await _killed_worker_run(api, team, workers, executions=12, timeout=90)


async def test_worker_cancels_within_a_second(
    api: GQL, workers: Workers, paused_sweeper: None
) -> None:
    from tests.conftest import register

    team = await register(api)
    tool = await b.tool(api, team.token)
    flow = await f.create_flow(api, team.token, f.slow_chain(tool["id"], [30]))
    workers.start()
    run = await f.execute(api, team.token, flow["id"])
    await f.wait_node(api, team.token, run["id"], "s0", "RUNNING", timeout=30)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await api.ok("CancelExecution", {"id": run["id"]}, token=team.token)
    done = await f.wait_status(api, team.token, run["id"], timeout=5)
    assert done["status"] == "CANCELLED"
    assert loop.time() - t0 < 1.5  # the Redis signal, not the heartbeat (LEASE / 3)
