"""The built application image (`make image`; CI builds it): non-root, health-checked,
`crewgraph` as entry point, and `serve` / `worker` / `migrate` really running from it with
a read-only root against this machine's PostgreSQL and Redis (host network: the engine
started by scripts/docker-up.sh has no bridge). Skips, saying why, when no engine
answers or the image is not built; CREWGRAPH_REQUIRE_IMAGE=1 (CI) fails instead."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest

from tests.support.services import free_port

if TYPE_CHECKING:
    from tests.support.services import TestServices

IMAGE = os.environ.get("CREWGRAPH_IMAGE", "crewgraph/crewgraph:dev")
DOCKER = shutil.which("docker")


def _engine_and_image() -> str | None:
    """Why the image tests cannot run, or None."""
    if DOCKER is None:
        return "no docker CLI"
    probe = subprocess.run([DOCKER, "info"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        return "no Docker engine answers (scripts/docker-up.sh)"
    found = subprocess.run([DOCKER, "image", "inspect", IMAGE], capture_output=True, timeout=20)
    if found.returncode != 0:
        return f"{IMAGE} is not built (make image)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    reason = _engine_and_image()
    if reason:
        if os.environ.get("CREWGRAPH_REQUIRE_IMAGE") == "1":
            pytest.fail(reason + " (required by CREWGRAPH_REQUIRE_IMAGE)")
        pytest.skip(reason)
    return IMAGE


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


# What every container here gets: the hardening the manifests ask for.
HARDENED = [
    "--read-only",
    "--tmpfs",
    "/tmp:size=256m",
    "--tmpfs",
    "/var/lib/crewgraph:size=512m,uid=10001,gid=10001,mode=0700",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]


def test_image_metadata(image: str) -> None:
    (info,) = json.loads(docker("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["User"].split(":")[0] == "10001"
    assert config["Entrypoint"] == ["crewgraph"]
    assert config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"][-1] == "/usr/local/bin/crewgraph-healthcheck"
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["CREWGRAPH_DATA_DIR"] == "/var/lib/crewgraph"
    # Build-time index settings and certificates stay in the builder stage.
    assert not any(k.startswith(("PIP_", "UV_")) or k == "SSL_CERT_FILE" for k in env)


def test_runs_non_root_with_a_read_only_root_and_no_build_tools(image: str) -> None:
    done = docker(
        "run",
        "--rm",
        *HARDENED,
        "--entrypoint",
        "python3",
        image,
        "-c",
        # The builder's tools venv, its env script and CA bundle stay behind (CrewAI's
        # own `uv` dependency is in /opt/venv, and that is fine).
        "import os; print(os.getuid(), os.getgid(), os.path.exists('/opt/uv'),"
        " os.path.exists('/opt/build-env.sh') or os.path.exists('/opt/build-ca.pem'),"
        " os.access('/opt/venv', os.W_OK), os.path.exists('/src'))",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10001", "10001", "False", "False", "False", "False"]
    help_text = docker("run", "--rm", *HARDENED, "-e", "COLUMNS=160", image, "--help")
    assert help_text.returncode == 0, help_text.stderr
    for command in ("serve", "worker", "migrate", "backup", "restore", "tenants"):
        assert f" {command} " in help_text.stdout


@pytest.fixture
def database(services: TestServices) -> Iterator[str]:
    """A database of its own on the test run's PostgreSQL (libpq URL)."""
    name = f"crewgraph_image_{secrets.token_hex(4)}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(services.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base, _, query = services.admin_dsn.partition("?")
    yield base.rsplit("/", 1)[0] + "/" + name + ("?" + query if query else "")
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def wait_http(url: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read()
        except Exception as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout}s: {last}")


def test_migrate_serve_and_worker_from_the_image(
    image: str, services: TestServices, database: str
) -> None:
    port, metrics = free_port(), free_port()
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": services.redis_url,
        "MONGODB_URL": services.mongo_url,
        "CREWGRAPH_MONGODB_DATABASE": f"image_{secrets.token_hex(4)}",
        "CREWGRAPH_REDIS_PREFIX": f"image{secrets.token_hex(4)}",
        "CREWGRAPH_ENV": "production",
        "CREWGRAPH_WORKER_MODE": "arq",
        "CREWGRAPH_SECRET_KEY": "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleS0=",
        "CREWGRAPH_JWT_SECRET": secrets.token_urlsafe(40),
        "CREWGRAPH_HOST": "127.0.0.1",
        "CREWGRAPH_PORT": str(port),
        "CREWGRAPH_METRICS_HOST": "127.0.0.1",
        "CREWGRAPH_METRICS_PORT": str(metrics),
    }
    flags = [f"--env={k}={v}" for k, v in env.items()]
    common = ["--network", "host", *HARDENED, *flags]

    migrated = docker("run", "--rm", *common, image, "migrate", timeout=300)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated public" in migrated.stderr

    names = [f"crewgraph-image-test-{secrets.token_hex(4)}" for _ in range(2)]
    try:
        api = docker("run", "-d", "--name", names[0], *common, image, "serve")
        assert api.returncode == 0, api.stderr
        worker = docker("run", "-d", "--name", names[1], *common, image, "worker")
        assert worker.returncode == 0, worker.stderr
        status, body = wait_http(f"http://127.0.0.1:{port}/readyz", 240)
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, _ = wait_http(f"http://127.0.0.1:{metrics}/metrics", 120)
        assert status == 200
        # The image's own health check agrees, for the API and (by its URL) the worker.
        check = docker("exec", names[0], "python3", "/usr/local/bin/crewgraph-healthcheck")
        assert check.returncode == 0, check.stderr
        check = docker(
            "exec",
            "-e",
            f"CREWGRAPH_HEALTHCHECK_URL=http://127.0.0.1:{metrics}/metrics",
            names[1],
            "python3",
            "/usr/local/bin/crewgraph-healthcheck",
        )
        assert check.returncode == 0, check.stderr
        # SIGTERM drains and exits 0 well within the grace (README: Lifecycle).
        for name in names:
            stopped = docker("stop", "--time", "40", name, timeout=60)
            assert stopped.returncode == 0, stopped.stderr
            code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert code == "0", (name, docker("logs", "--tail", "30", name).stderr)
    finally:
        for name in names:
            docker("rm", "-f", name)
