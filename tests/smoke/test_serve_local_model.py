"""`crewgraph serve` with the real tiny model installed: it starts (or finds) the model,
new teams get it as a provider that answers, and on exit it stops only a model it
started itself."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import httpx

from server.local_model import PROVIDER_NAME, LocalModelInstall, status
from tests.support.serve import serving
from tests.support.services import free_port

REGISTER = """
mutation($input: RegisterInput!) { register(input: $input) { accessToken } }
"""
PROVIDERS = "{ llmProviders(first: 20) { edges { node { id name provider model baseUrl } } } }"
TEST_PROVIDER = "mutation($id: ID!) { testLlmProvider(id: $id) }"


async def _gql(
    client: httpx.AsyncClient, query: str, token: str | None = None, **variables: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = (
        await client.post(
            "/graphql", json={"query": query, "variables": variables}, headers=headers
        )
    ).json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


async def test_serve_registers_the_local_model(
    local_model_install: LocalModelInstall, settings: Any, tmp_path: Path
) -> None:
    was_running = status(local_model_install) is not None
    port = free_port()
    env = {
        **os.environ,
        "CREWGRAPH_ENV": "laptop",
        "CREWGRAPH_PORT": str(port),
        "CREWGRAPH_DATA_DIR": str(tmp_path / "data"),
        "CREWGRAPH_LOCAL_MODEL_DIR": str(local_model_install.root),
        "CREWGRAPH_LOCAL_MODEL_PORT": str(free_port()),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CREWGRAPH_REDIS_PREFIX": f"cgserve{secrets.token_hex(4)}",
        "CREWGRAPH_SECRET_KEY": settings.secret_key,
        "CREWGRAPH_JWT_SECRET": settings.signing_secret,
        "CREWGRAPH_LOG_LEVEL": "WARNING",
    }
    async with serving(env, port, ready_within=120, timeout=120) as client:
        running = status(local_model_install)
        assert running is not None, "serve did not start the installed local model"
        registered = await _gql(
            client,
            REGISTER,
            input={
                "tenantName": f"Smoke {secrets.token_hex(3)}",
                "email": f"smoke-{secrets.token_hex(4)}@example.com",
                "password": "correct horse battery",
            },
        )
        token = registered["register"]["accessToken"]
        edges = (await _gql(client, PROVIDERS, token))["llmProviders"]["edges"]
        providers = {e["node"]["name"]: e["node"] for e in edges}
        assert PROVIDER_NAME in providers, providers
        local = providers[PROVIDER_NAME]
        assert local["baseUrl"] == running.base_url
        result = (await _gql(client, TEST_PROVIDER, token, id=local["id"]))["testLlmProvider"]
        assert result["ok"] is True, result
    # A model serve found keeps running; one it started is stopped with it.
    assert (status(local_model_install) is not None) == was_running
