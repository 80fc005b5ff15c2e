"""Tool sandbox backends: user code never runs in the API or worker process.

One interface (:class:`domain.sandbox.Sandbox`), two backends:

- :class:`sandbox.docker.DockerSandbox`: a locked-down container per run (optional
  per-tenant warm pool), when a Docker engine answers;
- :class:`sandbox.bubblewrap.BubblewrapSandbox`: bubblewrap namespaces + rlimits (+ a
  cgroup per run when the host allows), the local fallback.

:func:`create_sandbox` picks one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Literal

from domain.errors import NotConfigured
from domain.sandbox import Sandbox, SandboxLimits
from sandbox.images import DEFAULT_IMAGE
from sandbox.limits import DEFAULT_MAX_LIMITS

log = logging.getLogger(__name__)

Backend = Literal["auto", "docker", "bubblewrap"]
BACKENDS: tuple[str, ...] = ("auto", "docker", "bubblewrap")

__all__ = ["BACKENDS", "Backend", "create_sandbox", "create_sandbox_from_env", "docker_available"]


async def docker_available(docker_host: str | None = None, *, timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers at ``docker_host`` (else ``DOCKER_HOST``, else the
    default sockets); otherwise why not."""
    import aiodocker

    try:
        client = aiodocker.Docker(url=docker_host)
    except (ValueError, AssertionError, OSError) as exc:
        return f"no Docker socket found ({exc or 'DOCKER_HOST unset, no default socket'})"
    try:
        await asyncio.wait_for(client.version(), timeout)
        return None
    except Exception as exc:
        return f"no Docker engine answers at {client.docker_host}: {exc or type(exc).__name__}"
    finally:
        await client.close()


async def create_sandbox(
    *,
    backend: Backend | str = "auto",
    docker_host: str | None = None,
    image: str = DEFAULT_IMAGE,
    ceiling: SandboxLimits = DEFAULT_MAX_LIMITS,
    warm_pool: bool = False,
    python: str = "/usr/bin/python3",
    probe_timeout: float = 3.0,
) -> Sandbox:
    """The sandbox this deployment can run.

    ``backend="auto"``: Docker when an engine answers and ``image`` is present, else
    bubblewrap, else :class:`NotConfigured` with both reasons. ``"docker"`` /
    ``"bubblewrap"`` force one (NotConfigured when it cannot run). ``python`` is the
    interpreter path for the bubblewrap backend (the image's ``python3`` is used in Docker).
    """
    if backend == "bwrap":
        backend = "bubblewrap"
    if backend not in BACKENDS:
        raise NotConfigured(
            f"unknown sandbox backend {backend!r}; use one of {', '.join(BACKENDS)}"
        )
    reasons: list[str] = []
    if backend in ("auto", "docker"):
        why = await docker_available(docker_host, timeout=probe_timeout)
        if why is None:
            from sandbox.docker import DockerSandbox

            try:
                return await DockerSandbox.open(
                    url=docker_host, image=image, ceiling=ceiling, warm_pool=warm_pool
                )
            except NotConfigured as exc:
                why = exc.message
        if backend == "docker":
            raise NotConfigured(f"Docker sandbox unavailable: {why}")
        reasons.append(f"docker: {why}")
        log.warning("sandbox: Docker unavailable (%s); trying bubblewrap", why)
    from sandbox.bubblewrap import BubblewrapSandbox

    try:
        return await BubblewrapSandbox.open(
            python=python, ceiling=ceiling, prestart=1 if warm_pool else 0
        )
    except NotConfigured as exc:
        if backend == "bubblewrap":
            raise
        reasons.append(f"bubblewrap: {exc.message}")
    raise NotConfigured(
        "no tool sandbox backend is available (" + "; ".join(reasons) + "); run "
        "scripts/docker-up.sh and scripts/build-sandbox-image.sh, or scripts/sandbox-deps.sh"
    )


async def create_sandbox_from_env() -> Sandbox:
    """:func:`create_sandbox` configured from ``CREWGRAPH_SANDBOX_BACKEND`` (auto),
    ``CREWGRAPH_SANDBOX_IMAGE``, ``CREWGRAPH_SANDBOX_WARM_POOL`` (0/1), ``DOCKER_HOST``
    and ``CREWGRAPH_SANDBOX_PYTHON``."""
    return await create_sandbox(
        backend=os.environ.get("CREWGRAPH_SANDBOX_BACKEND", "auto"),
        docker_host=os.environ.get("DOCKER_HOST") or None,
        image=os.environ.get("CREWGRAPH_SANDBOX_IMAGE", DEFAULT_IMAGE),
        warm_pool=os.environ.get("CREWGRAPH_SANDBOX_WARM_POOL", "1") in ("1", "true", "yes"),
        python=os.environ.get("CREWGRAPH_SANDBOX_PYTHON", "/usr/bin/python3"),
    )
