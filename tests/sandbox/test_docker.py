"""Docker specifics: container lifecycle, labels, orphan reaping, images, warm pool."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from domain.errors import NotConfigured
from domain.sandbox import SandboxLimits, SandboxRequest
from sandbox.docker import (
    EXPIRES_LABEL,
    MANAGED_LABEL,
    TENANT_LABEL,
    DockerSandbox,
    host_config,
)
from sandbox.images import ensure_image
from tests.sandbox.fixtures import get_backend

pytestmark = [pytest.mark.timeout(90), pytest.mark.docker]


@pytest.fixture
async def docker_sb(sandbox_registry: dict) -> DockerSandbox:  # type: ignore[type-arg]
    backend = await get_backend("docker", sandbox_registry)
    assert isinstance(backend, DockerSandbox)
    return backend


@pytest.fixture
async def warm_sb(sandbox_registry: dict) -> DockerSandbox:  # type: ignore[type-arg]
    backend = await get_backend("docker-warm", sandbox_registry)
    assert isinstance(backend, DockerSandbox)
    return backend


async def _managed(sb: DockerSandbox, **labels: str) -> list[dict]:  # type: ignore[type-arg]
    wanted = [f"{MANAGED_LABEL}=1", *(f"{k}={v}" for k, v in labels.items())]
    listed = await sb.docker.containers.list(all="true", filters=json.dumps({"label": wanted}))
    return [c._container for c in listed]


def test_host_config_locks_the_container_down() -> None:
    config = host_config(SandboxLimits())
    assert config["NetworkMode"] == "none"
    assert config["ReadonlyRootfs"] is True
    assert config["Memory"] == config["MemorySwap"] == 512 * 1024 * 1024
    assert config["NanoCpus"] == 500_000_000
    assert config["PidsLimit"] == 64
    assert config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in config["SecurityOpt"]
    assert config["Init"] is True
    assert "size=64m" in config["Tmpfs"]["/tmp"]
    assert config["AutoRemove"] is False


async def test_container_is_labelled_and_always_removed(docker_sb: DockerSandbox) -> None:
    code = "import time\ndef run(x):\n    time.sleep(0.5)\n    return 1\n"
    request = SandboxRequest(
        tenant_id="t-labels", code=code, limits=SandboxLimits(timeout_seconds=10)
    )
    task = asyncio.create_task(docker_sb.run(request))
    seen: list[dict] = []  # type: ignore[type-arg]
    for _ in range(40):
        await asyncio.sleep(0.05)
        seen = await _managed(docker_sb, **{TENANT_LABEL: "t-labels"})
        if seen:
            break
    result = await task
    assert result.ok, result
    assert seen, "the running container was not labelled crewgraph.managed=1 + tenant"
    config = await docker_sb.docker.containers.list(all="true")
    assert not await _managed(docker_sb, **{TENANT_LABEL: "t-labels"}), config
    # also after failures (timeout, OOM are covered in the security suite)
    bad = await docker_sb.run(
        SandboxRequest(tenant_id="t-labels", code="def run(x):\n    raise SystemExit(1)\n")
    )
    assert not bad.ok
    assert not await _managed(docker_sb, **{TENANT_LABEL: "t-labels"})


async def test_fast_exiting_output_is_never_lost(docker_sb: DockerSandbox) -> None:
    requests = [
        SandboxRequest(tenant_id="t-fast", kind="command", command=("echo", f"line-{i}"))
        for i in range(8)
    ]
    results = await asyncio.gather(*(docker_sb.run(r) for r in requests))
    assert [r.stdout for r in results] == [f"line-{i}\n" for i in range(8)]


async def test_reap_orphans_removes_expired_leftovers_only(docker_sb: DockerSandbox) -> None:
    docker = docker_sb.docker
    base = {
        "Image": docker_sb.image,
        "Cmd": ["sleep", "60"],
        "User": "65534:65534",
        "HostConfig": {"NetworkMode": "none"},
    }
    expired = await docker.containers.create(
        {
            **base,
            "Labels": {
                MANAGED_LABEL: "1",
                TENANT_LABEL: "t-orphan",
                EXPIRES_LABEL: str(int(time.time()) - 5),
            },
        }
    )
    live = await docker.containers.create(
        {
            **base,
            "Labels": {
                MANAGED_LABEL: "1",
                TENANT_LABEL: "t-live",
                EXPIRES_LABEL: str(int(time.time()) + 600),
            },
        }
    )
    await expired.start()
    try:
        removed = await docker_sb.reap_orphans()
        assert removed >= 1
        assert not await _managed(docker_sb, **{TENANT_LABEL: "t-orphan"})
        assert await _managed(docker_sb, **{TENANT_LABEL: "t-live"})
    finally:
        for c in (expired, live):
            try:
                await c.delete(force=True)
            except Exception:
                pass


async def test_missing_image_is_reported_not_pulled(docker_sb: DockerSandbox) -> None:
    with pytest.raises(NotConfigured, match=r"build-sandbox-image\.sh"):
        await ensure_image(docker_sb.docker, "crewgraph/does-not-exist:0")
    with pytest.raises(NotConfigured, match="not in the Docker engine"):
        await docker_sb.run(
            SandboxRequest(
                tenant_id="t1", code="def run(x): return 1", image="crewgraph/does-not-exist:0"
            )
        )


async def test_warm_pool_prestarts_one_container_per_run_per_tenant(
    warm_sb: DockerSandbox,
) -> None:
    code = (
        "def run(x):\n    return open('/proc/self/cgroup').read() + open('/etc/hostname').read()\n"
    )

    async def run_as(tenant: str, body: str = code) -> str | None:
        result = await warm_sb.run(
            SandboxRequest(tenant_id=tenant, code=body, limits=SandboxLimits(timeout_seconds=10))
        )
        return str(result.output) if result.ok else None

    async def settled() -> None:
        for _ in range(100):
            if not warm_sb._background:
                return
            await asyncio.sleep(0.05)

    a1 = await run_as("t-warm-a")
    await settled()
    waiting = await _managed(warm_sb, **{"crewgraph.pool": "warm", TENANT_LABEL: "t-warm-a"})
    assert len(waiting) == 1 and waiting[0]["State"] == "running", "the next one is started"
    a2 = await run_as("t-warm-a")
    assert a1 and a2 and a1 != a2, "a container serves one run only"
    await settled()
    assert not [
        c
        for c in await _managed(warm_sb, **{TENANT_LABEL: "t-warm-a"})
        if c["Id"] == waiting[0]["Id"]
    ], "the pre-started container was used, then removed"
    await settled()
    b1 = await run_as("t-warm-b")
    assert b1 and b1 not in (a1, a2)
    await settled()
    tenants = {
        c["Labels"][TENANT_LABEL] for c in await _managed(warm_sb, **{"crewgraph.pool": "warm"})
    }
    assert {"t-warm-a", "t-warm-b"} <= tenants, "each tenant gets its own pre-started container"
    assert await run_as("t-warm-a", "def run(x):\n    raise ValueError()\n") is None
    await settled()
    assert await run_as("t-warm-a"), "a failed run does not spoil the next one"


async def test_warm_pool_containers_are_removed_on_close(docker_sb: DockerSandbox) -> None:
    sb = DockerSandbox(warm_pool=True, warm_ttl_seconds=0.5)
    await sb.start(reap=False)
    try:
        req = SandboxRequest(tenant_id="t-warm-close", code="def run(x):\n    return 1\n")
        assert (await sb.run(req)).ok
        for _ in range(100):
            if sb.warm_containers():
                break
            await asyncio.sleep(0.05)
        assert sb.warm_containers() == 1
        await asyncio.sleep(0.6)
        assert (await sb.run(req)).ok, "a stale pre-started container is replaced, not used"
    finally:
        await sb.close()
    assert sb.warm_containers() == 0
    assert not await _managed(docker_sb, **{TENANT_LABEL: "t-warm-close"})


async def test_a_dead_or_removed_prestarted_container_is_discarded_and_the_run_goes_on(
    docker_sb: DockerSandbox,
) -> None:
    """Something outside (an operator's `docker kill`, the OOM killer, an engine restart,
    `docker rm -f`) ended the waiting container: the run starts a fresh one instead."""
    sb = DockerSandbox(warm_pool=True)
    await sb.start(reap=False)
    req = SandboxRequest(
        tenant_id="t-warm-dead",
        code="def run(x):\n    return 41 + 1\n",
        limits=SandboxLimits(timeout_seconds=10),
    )

    async def prestarted() -> str:
        for _ in range(200):
            if sb.warm_containers() and not sb._background:
                (ident,) = sb.waiting_ids()
                return ident
            await asyncio.sleep(0.05)
        raise AssertionError("no container was pre-started")

    try:
        assert (await sb.run(req)).ok
        killed = await prestarted()
        await sb.docker.containers.container(killed).kill(signal="SIGKILL")  # docker kill
        for _ in range(100):
            state = (await sb.docker.containers.container(killed).show())["State"]
            if not state["Running"]:
                break
            await asyncio.sleep(0.05)
        result = await sb.run(req)
        assert result.ok and result.output == 42, result
        assert killed not in sb.waiting_ids()

        removed = await prestarted()
        await sb.docker.containers.container(removed).delete(force=True)  # docker rm -f
        result = await sb.run(req)
        assert result.ok and result.output == 42, result

        assert (await sb.run(req)).ok, "the pool refills after a dead container"
    finally:
        await sb.close()
    assert not await _managed(docker_sb, **{TENANT_LABEL: "t-warm-dead"})
