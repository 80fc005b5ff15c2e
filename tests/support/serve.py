"""`crewgraph serve` in a subprocess, for the tests that exercise the real entry point."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

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
