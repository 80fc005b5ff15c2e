"""create_sandbox(): Docker when an engine answers, else bubblewrap, else NotConfigured."""

from __future__ import annotations

import pytest

from domain.errors import NotConfigured
from domain.sandbox import Sandbox, SandboxRequest
from sandbox import create_sandbox, docker_available
from tests.sandbox.fixtures import get_backend

pytestmark = pytest.mark.timeout(60)

NO_ENGINE = "unix:///nonexistent/crewgraph-docker.sock"


async def _roundtrip(sb: Sandbox) -> None:
    try:
        result = await sb.run(
            SandboxRequest(tenant_id="t-factory", code="def run(x):\n    return 5\n")
        )
        assert result.ok and result.output == 5, result
    finally:
        await sb.close()


async def test_auto_prefers_docker(sandbox_registry: dict) -> None:  # type: ignore[type-arg]
    await get_backend("docker", sandbox_registry)
    sb = await create_sandbox()
    assert sb.name == "docker"
    await _roundtrip(sb)


async def test_auto_falls_back_to_bubblewrap(sandbox_registry: dict) -> None:  # type: ignore[type-arg]
    await get_backend("bubblewrap", sandbox_registry)
    assert await docker_available(NO_ENGINE) is not None
    sb = await create_sandbox(docker_host=NO_ENGINE)
    assert sb.name == "bubblewrap"
    await _roundtrip(sb)


async def test_forced_backends_and_clear_errors(sandbox_registry: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(NotConfigured, match="Docker sandbox unavailable"):
        await create_sandbox(backend="docker", docker_host=NO_ENGINE)
    with pytest.raises(NotConfigured, match="unknown sandbox backend"):
        await create_sandbox(backend="chroot")
    with pytest.raises(NotConfigured, match="no tool sandbox backend is available"):
        await create_sandbox(docker_host=NO_ENGINE, python="/nonexistent/python3")
    await get_backend("bubblewrap", sandbox_registry)
    sb = await create_sandbox(backend="bubblewrap")
    assert sb.name == "bubblewrap"
    await _roundtrip(sb)
