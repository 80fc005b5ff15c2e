"""`crewgraph serve` with no DATABASE_URL / REDIS_URL: what `make run` does on a laptop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.services import free_port


async def test_serve_on_embedded_services(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CREWGRAPH_DATA_DIR=str(tmp_path / "data"), CREWGRAPH_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(240):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                await asyncio.sleep(0.25)
            else:
                raise AssertionError("embedded server never became ready")
            query = 'mutation { register(input: {tenantName: "Laptop", email: "me@example.com", password: "password123"}) { accessToken } }'
            token = (await client.post("/graphql", json={"query": query})).json()["data"][
                "register"
            ]["accessToken"]
            me = await client.post(
                "/graphql",
                json={"query": "{ me { email tenant { slug } } }"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert me.json()["data"]["me"] == {
                "email": "me@example.com",
                "tenant": {"slug": "laptop"},
            }
        assert (tmp_path / "data" / "postgres").is_dir()
        assert (tmp_path / "data" / "jwt.secret").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert f"http://127.0.0.1:{port}/graphql" in output
