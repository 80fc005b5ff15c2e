"""The one wiring place: builds adapters and hands them to the use cases."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from domain.agents import AgentService
from domain.auth import IdentityService
from domain.crews import CrewService
from domain.errors import RateLimited
from domain.flows.service import FlowService
from domain.providers import ProviderService
from domain.sandbox import Sandbox, SandboxRequest, SandboxResult
from domain.tool_runs import ToolNodeExecutor, ToolRunner, ToolRunService
from domain.tools import ToolService
from persistence.db import Database
from persistence.uow import SqlUnitOfWorkFactory
from server.crypto import box_from_settings
from server.security import Argon2Hasher, JwtCodec
from server.settings import Settings

DEFAULT_RATE_LIMITS = {
    "login": "20/minute",
    "register": "30/hour",
    "refresh": "120/minute",
}


class RateLimiter:
    def __init__(self, redis_url: str, prefix: str, rules: dict[str, str]) -> None:
        uri = "async+" + redis_url.replace("unix://", "redis+unix://", 1)
        self._storage = RedisStorage(uri, implementation="redispy", key_prefix=f"{prefix}:rl")
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._rules: dict[str, RateLimitItem] = {k: parse(v) for k, v in rules.items()}

    async def hit(self, name: str, *identifiers: str) -> None:
        rule = self._rules.get(name)
        if rule is not None and not await self._limiter.hit(rule, name, *identifiers):
            raise RateLimited(f"too many {name} attempts; limit is {rule}; try again later")


class LazySandbox:
    """Picks the sandbox backend on first use, so start-up never waits on Docker."""

    name = "lazy"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._inner: Sandbox | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Sandbox:
        async with self._lock:
            if self._inner is None:
                from sandbox import create_sandbox

                s = self._settings
                self._inner = await create_sandbox(
                    backend=s.sandbox_backend,
                    docker_host=os.environ.get("DOCKER_HOST") or None,
                    image=s.sandbox_image,
                    warm_pool=s.sandbox_warm_pool,
                    python=s.sandbox_python,
                )
            return self._inner

    async def run(self, request: SandboxRequest) -> SandboxResult:
        return await (await self.get()).run(request)

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()
            self._inner = None


@dataclass
class Container:
    settings: Settings
    db: Database
    redis: aioredis.Redis
    identity: IdentityService
    limiter: RateLimiter
    uow: SqlUnitOfWorkFactory
    providers: ProviderService
    tools: ToolService
    agents: AgentService
    crews: CrewService
    flows: FlowService
    sandbox: LazySandbox
    tool_runs: ToolRunService
    extras: dict[str, object] = field(default_factory=dict)

    async def tenant_schema(self, tenant_id: str) -> str:
        return (await self.identity.tenant(tenant_id)).schema_name

    def node_executors(self) -> dict[str, object]:
        """Executors for the node kinds that need runtimes (the engine runs the rest)."""
        return {"TOOL": ToolNodeExecutor(self.tool_runs, self.tenant_schema)}

    async def aclose(self) -> None:
        await self.sandbox.close()
        await self.redis.aclose()
        await self.db.dispose()


def build_container(settings: Settings, *, rate_limits: dict[str, str] | None = None) -> Container:
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before wiring")
    db = Database(settings.database_url)
    redis = aioredis.from_url(settings.redis_url, decode_responses=False)
    uow = SqlUnitOfWorkFactory(db)
    identity = IdentityService(
        uow,
        Argon2Hasher(),
        JwtCodec(settings.signing_secret, settings.access_token_ttl),
        settings.refresh_token_ttl,
    )
    limiter = RateLimiter(
        settings.redis_url,
        settings.redis_prefix,
        DEFAULT_RATE_LIMITS if rate_limits is None else rate_limits,
    )
    from sandbox.builtins import HostBuiltins

    sandbox = LazySandbox(settings)
    runner = ToolRunner(sandbox, HostBuiltins(settings.data_dir.resolve() / "scratch"))
    box = box_from_settings(
        settings.secret_key, settings.secret_key_file, settings.previous_secret_keys
    )
    return Container(
        settings=settings,
        db=db,
        redis=redis,
        identity=identity,
        limiter=limiter,
        uow=uow,
        providers=ProviderService(uow, box),  # type: ignore[arg-type]
        tools=ToolService(uow),  # type: ignore[arg-type]
        agents=AgentService(uow),  # type: ignore[arg-type]
        crews=CrewService(uow),  # type: ignore[arg-type]
        flows=FlowService(uow, settings.max_nodes_per_flow),  # type: ignore[arg-type]
        sandbox=sandbox,
        tool_runs=ToolRunService(uow, runner),  # type: ignore[arg-type]
    )
