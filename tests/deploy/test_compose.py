"""docker-compose.yml and its override files, validated by `docker-compose config`
(Debian's docker-compose, which `make deploy-deps` installs; no engine needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(
    COMPOSE is None and os.environ.get("CI") != "true",
    reason="docker-compose not installed (make deploy-deps installs Debian's docker-compose)",
)

SECRETS = {
    "CREWGRAPH_SECRET_KEY": "a2V5LWtleS1rZXkta2V5LWtleS1rZXkta2V5LWtleS0=",
    "CREWGRAPH_JWT_SECRET": "j" * 40,
}


def config(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert COMPOSE is not None, "CI: make deploy-deps must have installed docker-compose"
    files = ["-f", "docker-compose.yml"]
    for o in overrides:
        files += ["-f", f"deploy/compose/{o}"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CREWGRAPH_", "POSTGRES_"))}
    clean.pop("MONGODB_URL", None)
    return subprocess.run(
        [COMPOSE, "--project-directory", str(ROOT), *files, "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


_SERVICES: dict[tuple[str, ...], dict[str, Any]] = {}


def services(*overrides: str) -> dict[str, Any]:
    """The resolved services; one `docker-compose config` per set of files (a second or
    more each)."""
    if overrides not in _SERVICES:
        done = config(*overrides, env=SECRETS)
        assert done.returncode == 0, done.stderr
        _SERVICES[overrides] = yaml.safe_load(done.stdout)["services"]
    return _SERVICES[overrides]


def test_refuses_to_start_without_the_two_secrets() -> None:
    done = config()
    assert done.returncode != 0
    assert "CREWGRAPH_SECRET_KEY" in done.stderr
    done = config(env={"CREWGRAPH_SECRET_KEY": SECRETS["CREWGRAPH_SECRET_KEY"]})
    assert done.returncode != 0
    assert "CREWGRAPH_JWT_SECRET" in done.stderr


def test_stack_api_worker_and_data_stores_from_one_image() -> None:
    svc = services()
    assert {"api", "worker", "postgres", "redis", "mongodb"} <= set(svc)
    api, worker = svc["api"], svc["worker"]
    assert api["image"] == worker["image"]
    assert api["command"] == ["serve"] and worker["command"] == ["worker"]
    for s in (api, worker):
        assert s["user"].split(":")[0] not in ("0", "root")
        assert s["read_only"] is True
        assert s["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in s["security_opt"]
        env = s["environment"]
        assert env["CREWGRAPH_WORKER_MODE"] == "arq"
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert env["REDIS_URL"].startswith("redis://")
        assert env["MONGODB_URL"].startswith("mongodb://")
        assert env["CREWGRAPH_SECRET_KEY"] == SECRETS["CREWGRAPH_SECRET_KEY"]
        # The sandbox engine: the host's socket, by default.
        assert any(v.startswith("/var/run/docker.sock:/var/run/docker.sock") for v in s["volumes"])
        assert s["healthcheck"]["test"][-1] == "/usr/local/bin/crewgraph-healthcheck"
    # The worker's health is its metrics port: it serves no API.
    assert worker["environment"]["CREWGRAPH_HEALTHCHECK_URL"].endswith(":9100/metrics")
    # The API is published on loopback only unless CREWGRAPH_BIND says otherwise.
    assert api["ports"][0].startswith("127.0.0.1:8000:8000")
    assert svc["mongodb"]["image"].startswith("mongo:")
    assert svc["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_nx_27017_override_runs_mongodb_from_the_app_image() -> None:
    svc = services("nx-27017.yml")
    assert svc["mongodb"]["image"] == svc["api"]["image"]
    assert svc["mongodb"]["entrypoint"] == ["nx-27017"]


def test_dind_override_points_the_sandbox_at_the_inner_engine() -> None:
    svc = services("dind.yml")
    assert svc["sandbox-engine"]["privileged"] is True
    for name in ("api", "worker"):
        assert svc[name]["environment"]["DOCKER_HOST"] == "unix:///run/sandbox/docker.sock"


def test_smoke_override_keeps_everything_on_loopback() -> None:
    svc = services("smoke.yml")
    for name, s in svc.items():
        assert s.get("network_mode") == "host", name
    env = svc["api"]["environment"]
    for key in ("DATABASE_URL", "REDIS_URL", "MONGODB_URL"):
        assert "@127.0.0.1:" in env[key] or "//127.0.0.1:" in env[key], key
    assert env["CREWGRAPH_HOST"] == "127.0.0.1"
