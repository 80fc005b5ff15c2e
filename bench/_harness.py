"""Shared pieces of the service benchmarks: a throwaway database and a real server process.

The server runs as `python -m tests.support.cli serve` (`crewgraph serve` plus the test-only
slow nodes) in its own process (so its CPU and memory can be measured apart from the clients), against the machine's PostgreSQL / Redis when
they answer (else embedded ones), in a database created for the run and dropped after.
Slow and paced nodes come from tests/support/slow_executors.py: TOOL nodes with
`testSleepSeconds` / `testLogEvents` / `testLogIntervalSeconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINT = "tests.support.cli"  # `crewgraph` with the test-only slow nodes
_STDERR_TAIL = 16_384  # bytes of a server's stderr kept for its error message
sys.path.insert(0, str(ROOT))

from tests.support.services import TestServices, free_port  # noqa: E402


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        # The server's stderr is read as it comes (its tail kept for a start-up failure):
        # a pipe nobody reads blocks the server once it fills, e.g. with the tracebacks of
        # PostgreSQL refusing connections on a crowded machine.
        self._tail = b""
        self._reader: threading.Thread | None = None
        if proc.stderr is not None:
            self._reader = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
            self._reader.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            self._tail = (self._tail + chunk)[-_STDERR_TAIL:]

    def stderr_tail(self) -> str:
        if self._reader is not None:
            self._reader.join(5)  # the process has ended: the rest of its output
        return self._tail.decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def services() -> AsyncIterator[TestServices]:
    svc = TestServices()
    svc.start()
    await svc.create_database()
    try:
        yield svc
    finally:
        await svc.drop_database()
        svc.stop()


@contextlib.asynccontextmanager
async def server(svc: TestServices, *, worker: bool = False, **env: str) -> AsyncIterator[Server]:
    """The API process; with `worker`, executions run in a separate `crewgraph worker`
    (CREWGRAPH_WORKER_MODE=arq), so the API process only serves and fans out."""
    port = free_port()
    if worker:
        env = {**env, "CREWGRAPH_WORKER_MODE": "arq"}
    # The run's MongoDB and database (dropped after) rather than one more embedded server
    # that `serve` would start in the data dir.
    mongo = (
        {"MONGODB_URL": svc.mongo_url, "CREWGRAPH_MONGODB_DATABASE": svc.mongo_database}
        if svc.mongo_url
        else {}
    )
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": svc.database_url,
        "REDIS_URL": svc.redis_url,
        "CREWGRAPH_REDIS_PREFIX": f"cgbench{secrets.token_hex(4)}",
        "CREWGRAPH_JWT_SECRET": secrets.token_urlsafe(40),
        "CREWGRAPH_SECRET_KEY": _key(),
        "CREWGRAPH_LOG_LEVEL": "ERROR",
        "CREWGRAPH_DATA_DIR": str(ROOT / ".crewgraph" / "bench"),
        "CREWGRAPH_MAX_CONCURRENT_EXECUTIONS": "500",
        "CREWGRAPH_WORKER_CONCURRENCY": "500",
        # Benchmarks drive one user far past the default per-caller limits.
        "CREWGRAPH_RATE_LIMITS": "off",
        **mongo,
        **env,
    }
    runner = os.environ.get("BENCH_SERVER_RUNNER")  # e.g. a profiling wrapper script
    command = [sys.executable, runner] if runner else [sys.executable, "-m", ENTRY_POINT]
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(port)],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    srv = Server(proc, url)
    workers: list[Server] = []
    try:
        await _ready(srv)
        if worker:
            worker_proc = subprocess.Popen(
                [sys.executable, "-m", ENTRY_POINT, "worker"],
                cwd=ROOT,
                env=full_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            workers.append(Server(worker_proc, ""))
        yield srv
    finally:
        for w in workers:
            w.stop()
        srv.stop()


def _key() -> str:
    from server.crypto import new_key_text

    return new_key_text()


async def _ready(srv: Server, timeout: float = 240.0) -> None:
    # Generous: on a shared, loaded machine importing the application alone can take a minute.
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if srv.proc.poll() is not None:
                raise RuntimeError(f"server exited: {srv.stderr_tail()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(srv.url + "/readyz")).status_code == 200:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("server did not become ready")
            await asyncio.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine() -> str:
    import platform

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def flow_chain(tool_id: str, nodes: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """input → TOOL nodes (configs given) → output."""
    ids = [f"s{i}" for i in range(len(nodes))]
    graph_nodes: list[dict[str, Any]] = [{"id": "in", "kind": "INPUT"}]
    graph_nodes += [
        {"id": nid, "kind": "TOOL", "config": {"toolId": tool_id, **cfg}}
        for nid, cfg in zip(ids, nodes, strict=True)
    ]
    graph_nodes.append({"id": "out", "kind": "OUTPUT"})
    chain = ["in", *ids, "out"]
    return {
        "name": name,
        "nodes": graph_nodes,
        "edges": [{"source": a, "target": b} for a, b in itertools.pairwise(chain)],
    }


async def bench_tenant(gql: Any) -> tuple[str, str]:
    """A fresh tenant with a trivial CUSTOM_PYTHON tool: (access token, tool id)."""
    email = f"b{uuid.uuid4().hex[:6]}@example.com"
    password = "correct horse battery"
    reg = await gql.ok(
        "Register", {"input": {"tenantName": "bench", "email": email, "password": password}}
    )
    token = reg["register"]["accessToken"]
    tool_input = {
        "name": "t",
        "description": "d",
        "kind": "CUSTOM_PYTHON",
        "config": {"code": "def run(i):\n    return i\n"},
    }
    tool = (await gql.ok("CreateTool", {"input": tool_input}, token=token))["createTool"]
    return token, tool["id"]
