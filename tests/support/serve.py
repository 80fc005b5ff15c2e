"""`crewgraph serve` in a subprocess, for the tests that exercise the real entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
_POLL_SECONDS = 0.25


@asynccontextmanager
async def serving(
    env: Mapping[str, str], port: int, *, ready_within: float, timeout: float = 10
) -> AsyncIterator[httpx.AsyncClient]:
    """Start `python -m server.cli serve` with `env`, yield a client of it once /readyz
    answers, and stop it with SIGINT (what Ctrl-C sends) on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        env=dict(env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            await _wait_ready(client, proc, ready_within)
            yield client
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_ready(
    client: httpx.AsyncClient, proc: subprocess.Popen[bytes], within: float
) -> None:
    for _ in range(int(within / _POLL_SECONDS)):
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"serve exited early:\n{output}")
        await asyncio.sleep(_POLL_SECONDS)
    raise AssertionError(f"serve was not ready within {within:g} s")


# ---- a `crewgraph serve` subprocess the test stops itself (signals, exit codes, output)


def serve_env(settings: Any, port: int, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment of a `crewgraph serve` subprocess sharing the test session's
    PostgreSQL, Redis (and key prefix), MongoDB and secrets; `extra` on top."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CREWGRAPH_REDIS_PREFIX": settings.redis_prefix,
        "CREWGRAPH_SECRET_KEY": settings.secret_key,
        "CREWGRAPH_JWT_SECRET": settings.jwt_secret,
        "CREWGRAPH_PORT": str(port),
        "CREWGRAPH_DATA_DIR": str(data_dir),
        "CREWGRAPH_LOG_LEVEL": "WARNING",
    }
    if getattr(settings, "mongodb_url", None):
        env["MONGODB_URL"] = settings.mongodb_url
    if getattr(settings, "mongodb_database", None):
        env["CREWGRAPH_MONGODB_DATABASE"] = settings.mongodb_database
    env.update(extra)
    return env


def spawn(
    env: Mapping[str, str], output: Path, *args: str, module: str = "server.cli"
) -> subprocess.Popen[bytes]:
    """`python -m <module> serve <args>`, stdout and stderr into `output` (a file, not a
    pipe nobody reads: a chatty server would block on a full pipe)."""
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module, "serve", *args],
            env=dict(env),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def wait_until_ready(
    client: httpx.AsyncClient, proc: subprocess.Popen[bytes], output: Path, within: float
) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{output.read_text()}")
        await asyncio.sleep(_POLL_SECONDS)
    raise AssertionError(f"serve was not ready within {within:g} s:\n{output.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send `sig` unless the process has ended; its exit code (killed after `timeout`)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
