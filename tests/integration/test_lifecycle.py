"""Graceful shutdown of real `crewgraph serve` / `crewgraph worker` processes.

SIGTERM (what an orchestrator sends) and SIGINT (Ctrl-C) both drain a server: `/readyz`
answers 503 "draining", new GraphQL requests are refused, requests under way finish,
WebSockets close with 1001, running executions are handed back (their leases released,
so another process resumes them at once, not when the lease expires), embedded services
stop, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn

from tests.conftest import register, serving
from tests.support import builders as b
from tests.support import flows as f
from tests.support import ws as w
from tests.support.client import GQL, error_code, op
from tests.support.serve import REPO, serve_env, spawn, stop, wait_until_ready
from tests.support.services import free_port

GRACE = 10.0
LEASE = "60"  # far longer than any test here: a quick resume can only be the release


def runs(log: Path, execution_id: str) -> list[tuple[str, int]]:
    """(node, pid) of each start of a slow node of the execution (slow_executors.py)."""
    out = []
    for line in log.read_text().splitlines():
        ident, node, pid = line.split()
        if ident == execution_id:
            out.append((node, int(pid)))
    return out


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


@pytest.fixture
def runs_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where every process (this one's session server included) notes slow node starts."""
    log = tmp_path / "runs.log"
    log.touch()
    monkeypatch.setenv("CREWGRAPH_TEST_EXECUTOR_LOG", str(log))
    return log


async def test_sigterm_drains_and_hands_the_run_back(
    gql: GQL, settings: Any, tmp_path: Path, runs_log: Path
) -> None:
    """The session server (in-process runner, 0.5 s sweeps) is "another worker" here."""
    port = free_port()
    output = tmp_path / "serve.log"
    env = serve_env(
        settings,
        port,
        tmp_path / "data",
        CREWGRAPH_SHUTDOWN_GRACE_SECONDS=str(GRACE),
        CREWGRAPH_EXECUTION_LEASE_SECONDS=LEASE,
        CREWGRAPH_TEST_EXECUTOR_LOG=str(runs_log),
        CREWGRAPH_LOCAL_LLM_REQUEST_LOG="true",  # shows when the slow request is under way
    )
    proc = spawn(env, output, module="tests.support.cli")
    loop = asyncio.get_running_loop()
    try:
        async with aclosing(GQL(f"http://127.0.0.1:{port}")) as api:
            await wait_until_ready(api.http, proc, output, 60)
            team = await register(gql)
            tool = await b.tool(gql, team.token)
            flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [30]))
            run = await f.execute(api, team.token, flow["id"])  # runs in the subprocess

            async def started_there() -> bool:
                return runs(runs_log, run["id"]) == [("s0", proc.pid)]

            await eventually(started_there, 20)
            async with api.connect_ws() as socket:
                ack = await w.init(socket, {"authorization": f"Bearer {team.token}"})
                assert ack["type"] == "connection_ack"
                await w.subscribe(socket, "updates", op("ExecutionUpdates"))
                # 8 tokens of the scripted slow model, 0.2 s each: under way at SIGTERM.
                slow = asyncio.create_task(
                    api.http.post(
                        "/local-llm/v1/chat/completions",
                        json={
                            "model": "scripted-slow",
                            "messages": [{"role": "user", "content": "hello"}],
                            "max_tokens": 8,
                        },
                    )
                )

                async def slow_under_way() -> bool:
                    seen = await api.http.get("/local-llm/v1/_requests?model=scripted-slow")
                    return any(r["status"] == "running" for r in seen.json()["requests"])

                await eventually(slow_under_way, 5)
                sent = loop.time()
                proc.send_signal(signal.SIGTERM)

                async with httpx.AsyncClient(base_url=api.base_url, timeout=5) as fresh:

                    async def draining() -> bool:
                        ready = await fresh.get("/readyz")
                        return ready.status_code == 503 and ready.json() == {"status": "draining"}

                    await eventually(draining, 2)
                    refused = await fresh.post("/graphql", json={"query": "{ me { id } }"})
                    assert refused.status_code == 503
                    assert error_code(refused.json()) == "SERVICE_UNAVAILABLE"
                    extensions = refused.json()["errors"][0]["extensions"]
                    assert extensions["requestId"] == refused.headers["x-request-id"]
                    assert refused.headers["retry-after"] == "1"

                assert await w.close_code(socket) == 1001
                answer = await slow
                assert answer.status_code == 200, answer.text
                assert answer.json()["choices"][0]["message"]["content"]

            code = await asyncio.to_thread(proc.wait, GRACE + 10)
            assert code == 0, output.read_text()
            assert loop.time() - sent < GRACE, output.read_text()

        # Handed back: the session server resumes s0 within its sweep interval, long
        # before the subprocess's 60 s lease would have expired.
        async def resumed_here() -> bool:
            return ("s0", os.getpid()) in runs(runs_log, run["id"])

        await eventually(resumed_here, 10)
        assert loop.time() - sent < 15
        found = (await gql.ok("Execution", {"id": run["id"]}, token=team.token))["execution"]
        assert found["attempts"] == 2 and found["status"] == "RUNNING", found
        await gql.ok("CancelExecution", {"id": run["id"]}, token=team.token)
        await f.wait_status(gql, team.token, run["id"], timeout=10)
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)


async def test_the_grace_bounds_the_drain() -> None:
    """A request that outlasts the grace is cut off (one more second), not waited for."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from server.lifecycle import GracefulServer, Lifecycle

    async def endless(_: Request) -> PlainTextResponse:
        await asyncio.sleep(60)
        return PlainTextResponse("too late")

    lifecycle = Lifecycle()
    port = free_port()
    app = lifecycle.guard(Starlette(routes=[Route("/endless", endless)]))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", timeout_graceful_shutdown=1
    )
    server = GracefulServer(config, lifecycle, grace=0.5)
    serving_task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        async def up() -> bool:
            try:
                return (await client.get("/readyz")).status_code == 404
            except httpx.TransportError:
                return False

        await eventually(up, 10)
        request = asyncio.create_task(client.get("/endless"))

        async def under_way() -> bool:
            return lifecycle.in_flight == 1

        await eventually(under_way, 5)
        sent = loop.time()
        server.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(serving_task, 5)
        assert loop.time() - sent < 0.5 + 1 + 1
        # Cancelled before it answered: uvicorn's 500 (a dropped connection, had it begun).
        cut = await asyncio.gather(request, return_exceptions=True)
        assert isinstance(cut[0], httpx.TransportError) or cut[0].status_code == 500, cut


def _embedded_processes(data_dir: Path) -> list[psutil.Process]:
    """Processes working in `data_dir` (PostgreSQL, Redis) or naming it (nx-27017)."""
    found = []
    needle = str(data_dir)
    for proc in psutil.process_iter():
        try:
            cmdline = " ".join(proc.cmdline())
            cwd = proc.cwd()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if needle in cmdline or cwd.startswith(needle):
            found.append(proc)
    return found


async def test_sigterm_stops_the_embedded_services(tmp_path: Path) -> None:
    """No DATABASE_URL / REDIS_URL / MONGODB_URL: what `make run` does on a laptop."""
    port = free_port()
    data = tmp_path / "data"
    output = tmp_path / "serve.log"
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MONGODB_URL")
    }
    env.update(CREWGRAPH_DATA_DIR=str(data), CREWGRAPH_PORT=str(port))
    proc = spawn(env, output)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_until_ready(client, proc, output, 90)
        embedded = _embedded_processes(data)
        names = " ".join(" ".join(p.cmdline()) for p in embedded)
        assert "postgres" in names and "redis-server" in names, names
        assert stop(proc, signal.SIGTERM) == 0, output.read_text()
        _, alive = psutil.wait_procs(embedded, timeout=5)
        assert not alive, [p.cmdline() for p in alive]
        assert _embedded_processes(data) == []
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
        for leftover in _embedded_processes(data):  # never leave servers behind
            leftover.kill()


# --------------------------------------------------------------------------- workers


@pytest.fixture
async def arq_api(settings: Any) -> AsyncIterator[tuple[GQL, Any]]:
    """An API process that only enqueues (CREWGRAPH_WORKER_MODE=arq), on its own queue."""
    from server.app import create_app
    from server.bootstrap import build_container
    from tests.support.slow_executors import wrap

    arq_settings = settings.model_copy(
        update={
            "worker_mode": "arq",
            "redis_prefix": f"{settings.redis_prefix}lc",
            "execution_lease_seconds": float(LEASE),
        }
    )
    app = create_app(build_container(arq_settings, rate_limits={}, wrap_executors=wrap))
    async with serving(app) as url, aclosing(GQL(url)) as api:
        yield api, arq_settings


@pytest.fixture
def paused_sweeper(container: Any) -> Iterator[None]:
    """The session server's in-process runner must not take the released execution."""
    container.runtime.sweeper.paused = True
    yield
    container.runtime.sweeper.paused = False


def _worker(settings: Any, runs_log: Path, output: Path) -> subprocess.Popen[bytes]:
    env = serve_env(
        settings,
        free_port(),
        runs_log.parent / "data",
        CREWGRAPH_EXECUTION_LEASE_SECONDS=LEASE,
        CREWGRAPH_SWEEP_INTERVAL_SECONDS="0.5",
        CREWGRAPH_TEST_EXECUTOR_LOG=str(runs_log),
        CREWGRAPH_LOG_LEVEL="INFO",  # its "worker started" line says when it polls
    )
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.cli", "worker"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_sigint_worker_hands_its_run_to_another_worker(
    arq_api: tuple[GQL, Any], runs_log: Path, tmp_path: Path, paused_sweeper: None
) -> None:
    api, arq_settings = arq_api
    team = await register(api)
    tool = await b.tool(api, team.token)
    flow = await f.create_flow(api, team.token, f.slow_chain(tool["id"], [30]))
    first = _worker(arq_settings, runs_log, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    loop = asyncio.get_running_loop()
    try:
        run = await f.execute(api, team.token, flow["id"])

        async def started_on_first() -> bool:
            return runs(runs_log, run["id"]) == [("s0", first.pid)]

        await eventually(started_on_first, 30)
        second = _worker(arq_settings, runs_log, tmp_path / "second.log")

        async def second_started() -> bool:
            assert second is not None and second.poll() is None
            return "worker started" in (tmp_path / "second.log").read_text(errors="replace")

        # Its start-up (imports, LiteLLM) is not what is measured: the hand-over is.
        await eventually(second_started, 120)
        sent = loop.time()
        first.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(first.wait, 15)
        assert code == 0, (tmp_path / "first.log").read_text()

        async def resumed_on_second() -> bool:
            assert second is not None
            return ("s0", second.pid) in runs(runs_log, run["id"])

        await eventually(resumed_on_second, 20)
        assert loop.time() - sent < 20  # the lease is 60 s
        found = (await api.ok("Execution", {"id": run["id"]}, token=team.token))["execution"]
        assert found["attempts"] == 2 and found["status"] == "RUNNING", found
        await api.ok("CancelExecution", {"id": run["id"]}, token=team.token)
        await f.wait_status(api, team.token, run["id"], timeout=10)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop(proc, signal.SIGKILL)
