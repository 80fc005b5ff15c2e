"""The sandbox scripts: syntax, and idempotence when the engine and image already exist."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from sandbox import docker_available
from sandbox.images import DEFAULT_IMAGE, image_exists

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
NAMES = ["docker-up.sh", "sandbox-deps.sh", "build-sandbox-image.sh"]

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", NAMES)
def test_scripts_parse_and_document_themselves(name: str) -> None:
    script = SCRIPTS / name
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)
    head = script.read_text().splitlines()[:6]
    assert head[0] == "#!/usr/bin/env bash" and any(name in line for line in head)


@pytest.mark.docker
async def test_docker_up_is_fast_and_writes_the_env_file(tmp_path: Path) -> None:
    if why := await docker_available():
        pytest.skip(f"no Docker engine: {why}")
    env = {**os.environ, "CREWGRAPH_DATA_DIR": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "docker-up.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 10
    line = proc.stdout.strip()
    assert line.startswith("export DOCKER_HOST=unix://") or line.startswith("export DOCKER_HOST=")
    assert (tmp_path / "docker.env").read_text().strip() == line


@pytest.mark.docker
async def test_build_image_skips_an_existing_image() -> None:
    if why := await docker_available():
        pytest.skip(f"no Docker engine: {why}")
    import aiodocker

    async with aiodocker.Docker() as docker:
        if not await image_exists(docker, DEFAULT_IMAGE):  # never start a real build here
            pytest.skip(f"{DEFAULT_IMAGE} is not built here (scripts/build-sandbox-image.sh)")
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "build-sandbox-image.sh"), DEFAULT_IMAGE],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "already exists" in proc.stderr
