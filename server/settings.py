"""Settings from the environment, validated once at start-up."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Attempts per client address (and account) in a moving window, counted in Redis.
DEFAULT_RATE_LIMITS: Mapping[str, str] = MappingProxyType(
    {"login": "20/minute", "register": "30/hour", "refresh": "120/minute"}
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CREWGRAPH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Path(".crewgraph")

    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "CREWGRAPH_DATABASE_URL")
    )
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "CREWGRAPH_REDIS_URL")
    )
    mongodb_url: str | None = Field(
        None, validation_alias=AliasChoices("MONGODB_URL", "CREWGRAPH_MONGODB_URL")
    )

    # Signs JWTs. When unset a random one is made per process (tokens die on
    # restart), except under `make run`, which keeps one in the data dir.
    jwt_secret: str | None = None
    access_token_ttl: int = Field(900, ge=30, le=86400)
    refresh_token_ttl: int = Field(30 * 86400, ge=300)

    # Master key (32 bytes, base64) for stored secrets; or a file holding it.
    secret_key: str | None = None
    secret_key_file: Path | None = None
    previous_secret_keys: str | None = None  # comma-separated, still accepted for reading
    max_nodes_per_flow: int = Field(2000, ge=2)

    # Tool sandbox: auto = Docker when an engine answers (DOCKER_HOST), else bubblewrap.
    sandbox_backend: str = Field("auto", pattern="^(auto|docker|bubblewrap)$")
    sandbox_image: str = "crewgraph/sandbox-python:1"
    sandbox_warm_pool: bool = False
    sandbox_python: str = "/usr/bin/python3"

    # Pooled PostgreSQL connections per process (SQLAlchemy; overflow connections are
    # opened and closed per use, which costs a backend start each time under load).
    db_pool_size: int = Field(20, ge=1, le=500)

    # Prefix for every Redis key and channel; tests give each run its own.
    redis_prefix: str = "cg"

    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_query_depth: int = Field(12, ge=2)
    max_aliases: int = Field(30, ge=1)
    max_tokens: int = Field(5000, ge=100)
    page_size_max: int = Field(100, ge=1)

    # Executions. `worker_mode`: "inprocess" runs them in the API process (make run, the
    # API tests); "arq" only enqueues them for `crewgraph worker` processes.
    worker_mode: Literal["inprocess", "arq"] = "inprocess"
    worker_concurrency: int = Field(50, ge=1, le=10_000)  # runs per process
    worker_queue: str | None = None  # arq queue name; default "<redis_prefix>:executions"
    execution_lease_seconds: float = Field(30.0, ge=0.3, le=3600)
    sweep_interval_seconds: float = Field(5.0, ge=0.05, le=3600)
    redispatch_after_seconds: float = Field(30.0, ge=0.1)
    flow_timeout_seconds: float = Field(3600.0, gt=0)
    max_execution_attempts: int = Field(5, ge=1, le=100)
    max_concurrent_executions: int = Field(20, ge=1)  # RUNNING per tenant; the rest wait
    max_active_executions: int = Field(1000, ge=1)  # PENDING + RUNNING per tenant
    max_execution_input_bytes: int = Field(256_000, ge=64)
    subscription_idle_poll_seconds: float = Field(5.0, gt=0)
    subscription_queue_size: int = Field(1000, ge=10)  # frames per WebSocket before closing
    # Share one upstream per identical execution subscription (server/ws.py); off = stock
    # Strawberry (each subscriber resolves and serialises every event; for benchmarks).
    subscription_multiplex: bool = True

    # Profile: "laptop" (make run, tests: the local scripted model on) or "production".
    env: Literal["laptop", "production"] = "laptop"
    # The scripted OpenAI-compatible model at /local-llm/v1; None = on in laptop only.
    local_llm: bool | None = None
    # Keep and serve the scripted model's request log (GET /local-llm/v1/_requests): it
    # shows every tenant's prompts without authentication, so only tests switch it on.
    local_llm_request_log: bool = False
    # How this server reaches itself (the local model's provider resolves to it at call
    # time); None = http://<host>:<port> (a wildcard host means loopback).
    self_url: str | None = None
    # The real tiny model's base URL: set by `crewgraph serve` when it starts or finds one.
    local_model_url: str | None = None

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def local_llm_enabled(self) -> bool:
        return self.local_llm if self.local_llm is not None else self.env == "laptop"

    @property
    def local_llm_url(self) -> str | None:
        """Base URL of the local scripted model as this process reaches it, or None."""
        if not self.local_llm_enabled:
            return None
        base = self.self_url
        if not base:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            base = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
        return base.rstrip("/") + "/local-llm/v1"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @cached_property
    def signing_secret(self) -> str:
        if self.jwt_secret:
            if len(self.jwt_secret) < 32:
                raise ValueError("CREWGRAPH_JWT_SECRET must be at least 32 characters")
            return self.jwt_secret
        return secrets.token_urlsafe(48)

    def local_secret(self, name: str, make: Callable[[], str] | None = None) -> str:
        """A secret kept in the data dir so `make run` restarts keep sessions valid."""
        path = self.data_dir / f"{name}.secret"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        value = make() if make else secrets.token_urlsafe(48)
        path.write_text(value)
        path.chmod(0o600)
        return value
