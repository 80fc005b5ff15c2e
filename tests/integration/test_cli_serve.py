"""`crewgraph serve` with no DATABASE_URL / REDIS_URL: what `make run` does on a laptop."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.serve import serving
from tests.support.services import free_port


async def test_serve_on_embedded_services(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(CREWGRAPH_DATA_DIR=str(tmp_path / "data"), CREWGRAPH_PORT=str(port))
    async with serving(env, port, ready_within=60) as client:
        query = 'mutation { register(input: {tenantName: "Laptop", email: "me@example.com", password: "password123"}) { accessToken } }'
        token = (await client.post("/graphql", json={"query": query})).json()["data"]["register"][
            "accessToken"
        ]
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
