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

from domain.egress import EgressPolicy
from persistence.rate_limits import parse_rules
from server.persisted_queries import load_manifest

# Moving windows counted in Redis (persistence/rate_limits.py); `CREWGRAPH_RATE_LIMITS`
# overrides any of them. `login` counts per account (email, from any address), `login_ip`,
# `register` and `refresh` per client address. Operations count once each: `query`,
# `mutation`, `subscribe` per caller (a user, an API key on its own, or an anonymous client
# address) and `tenant_*` per team over all its callers; `validate_tool` / `execute_flow`
# count each such root field besides the mutation itself.
DEFAULT_RATE_LIMITS: Mapping[str, str] = MappingProxyType(
    {
        "login": "20/minute",
        "login_ip": "30/minute",
        "register": "30/hour",
        "refresh": "120/minute",
        "query": "1200/minute",
        "tenant_query": "6000/minute",
        "mutation": "300/minute",
        "tenant_mutation": "1500/minute",
        "subscribe": "300/minute",
        "tenant_subscribe": "1500/minute",
        "validate_tool": "60/minute",
        "tenant_validate_tool": "300/minute",
        "execute_flow": "120/minute",
        "tenant_execute_flow": "600/minute",
    }
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
    # The database Crewgraph's documents live in (chat messages, audit entries).
    mongodb_database: str = Field("crewgraph", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    # Server selection and connect timeout: a MongoDB outage fails a request after this
    # long with a clear error instead of hanging (pymongo's default is 30 s).
    mongodb_timeout_seconds: float = Field(3.0, gt=0, le=60)
    # A started operation that gets no answer for this long fails (a hung server).
    mongodb_socket_timeout_seconds: float = Field(20.0, gt=0, le=600)
    # Audit entries older than this are removed by MongoDB (a TTL index).
    audit_retention_days: float = Field(90, gt=0, le=36500)
    # Entries waiting to be written while MongoDB is slow or down; past this they are
    # dropped (with a warning in the log) rather than slowing requests down.
    audit_buffer_size: int = Field(10_000, ge=10, le=1_000_000)

    # Signs JWTs. When unset a random one is made per process (tokens die on
    # restart), except under `make run`, which keeps one in the data dir.
    jwt_secret: str | None = None
    access_token_ttl: int = Field(900, ge=30, le=86400)
    refresh_token_ttl: int = Field(30 * 86400, ge=300)
    # A just-rotated refresh token presented again within this many seconds (two tabs
    # refreshing at once) gets a fresh pair of the same family; later it revokes the family.
    refresh_reuse_seconds: float = Field(5.0, ge=0, le=60)
    # An authenticated principal is reused by the next HTTP requests with the same
    # credentials for this long at most; revocations drop it at once (server/principal_cache.py).
    # 0 checks the credentials on every request.
    principal_cache_seconds: float = Field(5.0, ge=0, le=60)

    # Master key (32 bytes, base64) for stored secrets; or a file holding it.
    secret_key: str | None = None
    secret_key_file: Path | None = None
    previous_secret_keys: str | None = None  # comma-separated, still accepted for reading
    max_nodes_per_flow: int = Field(2000, ge=2)
    # Largest flow document importFlow reads (its compact JSON), refused before it is
    # parsed further; the request body limit (max_request_bytes) applies first.
    flow_document_max_bytes: int = Field(1_000_000, ge=10_000)

    # Tool sandbox: auto = Docker when an engine answers (DOCKER_HOST), else bubblewrap.
    sandbox_backend: str = Field("auto", pattern="^(auto|docker|bubblewrap)$")
    sandbox_image: str = "crewgraph/sandbox-python:1"
    # Pre-start the next sandbox in the background after a python run: a container of the
    # same tenant and shape (Docker) or a bwrap process of the same shape; each serves one
    # run. Off: every run starts its own sandbox (slower, no idle processes).
    sandbox_warm_pool: bool = True
    sandbox_python: str = "/usr/bin/python3"
    # Images DOCKER tools may use, comma-separated; unset = the built-in sandbox image only.
    sandbox_image_allowlist: str | None = None
    # Sandbox runs under way at once, per process: in total and per tenant. validateTool
    # past a cap is refused (LIMIT_EXCEEDED); a flow's tool run waits for a slot up to
    # `sandbox_slot_wait_seconds`, then fails with LIMIT_EXCEEDED.
    sandbox_max_concurrent: int = Field(16, ge=1, le=10_000)
    sandbox_max_concurrent_per_tenant: int = Field(4, ge=1, le=10_000)
    sandbox_slot_wait_seconds: float = Field(120.0, ge=0)

    # Pooled PostgreSQL connections per process (SQLAlchemy; overflow connections are
    # opened and closed per use, which costs a backend start each time under load).
    db_pool_size: int = Field(20, ge=1, le=500)
    # Spare tenant schemas kept ready at the migration head (persistence/spare_schemas.py):
    # a registration renames one instead of creating ~25 tables; 0 creates every tenant's
    # schema at registration.
    tenant_schema_pool: int = Field(2, ge=0, le=20)

    # Prefix for every Redis key and channel; tests give each run its own.
    redis_prefix: str = "cg"

    # `name=rule,...` over DEFAULT_RATE_LIMITS, e.g. `login=5/minute,query=10/second;2000/hour`;
    # a rule `off` drops that limit, the whole value `off` every limit (README: Security).
    rate_limits: str = ""

    # Persisted queries (server/persisted_queries.py): Apollo's APQ, documents kept in
    # Redis for the TTL, at most `_max_entries` of at most `_max_bytes` each; or, with
    # `trusted_documents` (a manifest file), only the manifest's operations run.
    persisted_queries: bool = True
    persisted_query_ttl_seconds: int = Field(86_400, ge=60)
    persisted_query_max_entries: int = Field(2_000, ge=10)
    persisted_query_max_bytes: int = Field(32_000, ge=1_000)
    trusted_documents: Path | None = None

    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_query_depth: int = Field(12, ge=2)
    max_aliases: int = Field(30, ge=1)
    max_tokens: int = Field(5000, ge=100)
    page_size_max: int = Field(100, ge=1)
    # Query cost budget per operation (per event for subscriptions), schema/cost.py.
    max_query_cost: int = Field(20_000, ge=100)
    # Largest serialised response (HTTP body, WebSocket frame); larger is LIMIT_EXCEEDED.
    max_response_bytes: int = Field(10_000_000, ge=10_000)

    # Executions. `worker_mode`: "inprocess" runs them in the API process (make run, the
    # API tests); "arq" only enqueues them for `crewgraph worker` processes.
    worker_mode: Literal["inprocess", "arq"] = "inprocess"
    worker_concurrency: int = Field(50, ge=1, le=10_000)  # runs per process
    worker_queue: str | None = None  # arq queue name; default "<redis_prefix>:executions"
    execution_lease_seconds: float = Field(30.0, ge=0.3, le=3600)
    sweep_interval_seconds: float = Field(5.0, ge=0.05, le=3600)
    redispatch_after_seconds: float = Field(30.0, ge=0.1)
    # How often a run with an APPROVAL node waiting (while other branches still run)
    # looks for its answer and its deadline; a run with nothing else to do stops instead.
    approval_poll_seconds: float = Field(1.0, ge=0.05, le=60)
    flow_timeout_seconds: float = Field(3600.0, gt=0)
    max_execution_attempts: int = Field(5, ge=1, le=100)
    max_concurrent_executions: int = Field(20, ge=1)  # RUNNING per tenant; the rest wait
    max_active_executions: int = Field(1000, ge=1)  # PENDING + RUNNING per tenant
    # Default per-tenant quotas (operators override them with `crewgraph tenants set-quota`);
    # 0: no limit. Days are UTC days (domain/quotas.py).
    max_executions_per_day: int = Field(10_000, ge=0)
    max_tokens_per_day: int = Field(10_000_000, ge=0)
    max_chat_sessions: int = Field(1000, ge=0)
    max_execution_input_bytes: int = Field(256_000, ge=64)
    subscription_idle_poll_seconds: float = Field(5.0, gt=0)
    subscription_queue_size: int = Field(1000, ge=10)  # frames per WebSocket before closing
    # Share one upstream per identical execution subscription (server/ws.py); off = stock
    # Strawberry (each subscriber resolves and serialises every event; for benchmarks).
    subscription_multiplex: bool = True
    # Subscriptions over plain HTTP too (server/http_streams.py): Apollo's multipart
    # protocol and graphql-sse, for networks that block WebSockets. Open streams per
    # caller (user or API key) and per team in each API process; one more is
    # LIMIT_EXCEEDED. A chunk the client does not take within the send timeout ends it.
    http_subscriptions: bool = True
    http_streams_per_caller: int = Field(10, ge=1)
    http_streams_per_tenant: int = Field(100, ge=1)
    http_stream_send_timeout_seconds: float = Field(30.0, gt=0)

    # Chat. A session holds at most its `messageLimit` messages (default below, at most
    # `chat_max_message_limit` for every team); a reply's worker renews its claim every
    # third of `chat_reply_lease_seconds` (an abandoned reply fails after it expires);
    # `chat_context_tokens` is the context window assumed for models LiteLLM does not know.
    chat_default_message_limit: int = Field(100, ge=2)
    chat_max_message_limit: int = Field(1000, ge=2)
    chat_max_message_chars: int = Field(32_000, ge=1, le=1_000_000)
    chat_reply_lease_seconds: float = Field(30.0, ge=0.3, le=3600)
    chat_context_tokens: int = Field(8192, ge=256)

    # Schedules and outgoing webhooks (README: Schedules, Webhooks). Every API and worker
    # process scans for due schedules every `schedule_tick_seconds` and for due webhook
    # deliveries every `webhook_poll_seconds`; a delivery is retried with exponential
    # backoff (from `webhook_retry_base_seconds`, at most `webhook_retry_max_delay_seconds`
    # apart, with jitter) until `webhook_retry_window_seconds` after its event, then FAILED.
    schedule_tick_seconds: float = Field(5.0, ge=0.05, le=60)
    max_schedules_per_tenant: int = Field(200, ge=1)
    max_webhooks_per_tenant: int = Field(25, ge=1)
    webhook_poll_seconds: float = Field(1.0, ge=0.05, le=60)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_concurrency: int = Field(8, ge=1, le=200)  # deliveries in flight per process
    webhook_retry_base_seconds: float = Field(10.0, gt=0)
    webhook_retry_max_delay_seconds: float = Field(3600.0, gt=0)
    webhook_retry_window_seconds: float = Field(86_400.0, gt=0)

    # Profile: "laptop" (make run, tests: the local scripted model on) or "production"
    # (no introspection, no GraphiQL, no schema hints in error messages).
    env: Literal["laptop", "production"] = "laptop"
    # Browser origins allowed to call the API cross-origin, comma-separated; none by default.
    cors_origins: str = ""
    # Proxy addresses whose X-Forwarded-For / -Proto `crewgraph serve` believes,
    # comma-separated (uvicorn's forwarded_allow_ips); none by default: the peer address
    # is the client address.
    trusted_proxies: str = ""
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
    # Egress policy of every outbound call (domain/egress.py). None = allow loopback and
    # private addresses in laptop only; the allow-list (hosts, *.suffix, CIDRs) always.
    egress_allow_private: bool | None = None
    egress_allowlist: str = ""
    egress_resolve_timeout_seconds: float = Field(5.0, gt=0, le=60)

    log_level: str = "INFO"
    log_json: bool = True
    # One JSON line per HTTP request and per WebSocket operation (server/access_log.py).
    access_log: bool = True
    # Prometheus (server/metrics.py, README: Operating Crewgraph). `GET /metrics` on the
    # API port needs `Authorization: Bearer <metrics_token>`; without a token it is served
    # to loopback clients in the laptop profile only (production: 404). A `crewgraph
    # worker` serves its own metrics on `metrics_host:metrics_port` when a port is set.
    metrics_token: str | None = Field(None, min_length=16)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # PostgreSQL-backed gauges (executions by status, queue depth) are read at most this often.
    metrics_cache_seconds: float = Field(5.0, ge=0, le=3600)
    # Distinct GraphQL operation names kept as label values per process; later: "_other".
    metrics_max_operations: int = Field(200, ge=1, le=10_000)

    # `crewgraph serve` on SIGTERM / SIGINT: how long in-flight requests may take to
    # finish before the process stops anyway (server/lifecycle.py).
    shutdown_grace_seconds: float = Field(20.0, ge=0, le=3600)
    # TLS for `crewgraph serve` (also --ssl-certfile / --ssl-keyfile): PEM files.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @cached_property
    def egress_policy(self) -> EgressPolicy:
        """Raises ValueError on a malformed `CREWGRAPH_EGRESS_ALLOWLIST` entry."""
        return EgressPolicy.build(
            allow_private=(
                self.egress_allow_private
                if self.egress_allow_private is not None
                else self.env == "laptop"
            ),
            allowlist=self.egress_allowlist.split(","),
            resolve_timeout_seconds=self.egress_resolve_timeout_seconds,
        )

    @property
    def sandbox_images(self) -> frozenset[str]:
        """The images DOCKER tools may use (CREWGRAPH_SANDBOX_IMAGE_ALLOWLIST)."""
        raw = self.sandbox_image_allowlist
        if raw is None or not raw.strip():
            return frozenset({self.sandbox_image})
        return frozenset(part.strip() for part in raw.split(",") if part.strip())

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
            scheme = "https" if self.ssl_certfile else "http"
            base = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{self.port}"
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

    @field_validator("metrics_token", "metrics_port", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("egress_allowlist")
    @classmethod
    def _egress_allowlist(cls, value: str) -> str:
        EgressPolicy.build(allow_private=False, allowlist=value.split(","))  # ValueError
        return value

    @field_validator("trusted_documents", mode="before")
    @classmethod
    def _trusted_documents(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str | Path):
            load_manifest(Path(value))  # ValueError naming the unreadable file or bad entry
        return value

    @property
    def trusted_document_map(self) -> dict[str, str] | None:
        """hash -> document of `CREWGRAPH_TRUSTED_DOCUMENTS`, or None (any document runs);
        read from the file on each use (not cached: `model_copy` would carry a cached value
        over to a copy with another file)."""
        return None if self.trusted_documents is None else load_manifest(self.trusted_documents)

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, value: str) -> str:
        parse_rules(value, DEFAULT_RATE_LIMITS)  # ValueError naming the bad entry
        return value

    @property
    def rate_limit_rules(self) -> dict[str, str]:
        """The rate limits in force: the defaults with `CREWGRAPH_RATE_LIMITS` applied."""
        return parse_rules(self.rate_limits, DEFAULT_RATE_LIMITS)

    @field_validator("mongodb_url")
    @classmethod
    def _mongodb_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("MONGODB_URL must be a mongodb:// or mongodb+srv:// URL")
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
