"""Sandbox backends for tests, opened once per session and shared.

tests/conftest.py registers them for every test as ``sandbox``, ``any_sandbox`` and
``sandbox_registry``. A backend that cannot run on this machine is
skipped with the reason; set ``CREWGRAPH_REQUIRE_SANDBOX=docker,bubblewrap`` (CI) to
make that a failure instead. Start the engine and build the image with
``scripts/docker-up.sh`` and ``scripts/build-sandbox-image.sh``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from domain.errors import NotConfigured
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest, SandboxResult

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "bubblewrap"]
BACKENDS_WITH_WARM = [
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("docker-warm", marks=pytest.mark.docker),
    "bubblewrap",
]

#: limits small enough to keep the suite fast
FAST = SandboxLimits(timeout_seconds=10, output_bytes=200_000)


def required_backends() -> set[str]:
    raw = os.environ.get("CREWGRAPH_REQUIRE_SANDBOX", "")
    return {part.strip() for part in raw.split(",") if part.strip()}


async def open_backend(name: str) -> tuple[Sandbox | None, str]:
    try:
        if name.startswith("docker"):
            from sandbox import docker_available
            from sandbox.docker import DockerSandbox

            why = await docker_available()
            if why is not None:
                return None, why
            return await DockerSandbox.open(warm_pool=name == "docker-warm"), ""
        from sandbox.bubblewrap import BubblewrapSandbox

        return await BubblewrapSandbox.open(), ""
    except NotConfigured as exc:
        return None, exc.message


@pytest.fixture(scope="session", name="sandbox_registry")
async def sandbox_registry_fixture() -> AsyncIterator[dict[str, tuple[Sandbox | None, str]]]:
    registry: dict[str, tuple[Sandbox | None, str]] = {}
    yield registry
    for backend, _ in registry.values():
        if backend is not None:
            await backend.close()


async def get_backend(name: str, registry: dict[str, tuple[Sandbox | None, str]]) -> Sandbox:
    if name not in registry:
        registry[name] = await open_backend(name)
    backend, why = registry[name]
    if backend is None:
        base = name.removesuffix("-warm")
        message = f"{name} sandbox backend unavailable here: {why}"
        if base in required_backends():
            pytest.fail(message + " (required by CREWGRAPH_REQUIRE_SANDBOX)")
        pytest.skip(message)
    return backend


@pytest.fixture(params=BACKENDS, name="sandbox")
async def sandbox_fixture(request: pytest.FixtureRequest, sandbox_registry: Any) -> Sandbox:
    return await get_backend(request.param, sandbox_registry)


@pytest.fixture(params=BACKENDS_WITH_WARM, name="any_sandbox")
async def any_sandbox_fixture(request: pytest.FixtureRequest, sandbox_registry: Any) -> Sandbox:
    """Both backends plus the Docker warm pool."""
    return await get_backend(request.param, sandbox_registry)


async def run_code(
    sandbox: Sandbox,
    code: str,
    payload: dict[str, Any] | None = None,
    *,
    tenant: str = "tenant-test",
    **limits: Any,
) -> SandboxResult:
    request = SandboxRequest(
        tenant_id=tenant,
        code=code,
        input=payload or {},
        limits=dataclasses.replace(FAST, **limits),
        execution_id=uuid.uuid4().hex,
    )
    return await sandbox.run(request)
