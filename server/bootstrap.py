"""The one wiring place: builds adapters and hands them to the use cases."""

from __future__ import annotations

import asyncio
import importlib
import logging
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
from domain.executions.ports import NodeExecutor
from domain.executions.records import ExecutionRef
from domain.executions.service import ExecutionLimits, ExecutionService
from domain.executions.worker import Dispatcher, ExecutionRunner, Sweeper
from domain.flows.service import FlowService
from domain.providers import ProviderService
from domain.sandbox import Sandbox, SandboxRequest, SandboxResult
from domain.tool_runs import ToolNodeExecutor, ToolRunner, ToolRunService
from domain.tools import ToolService
from persistence.bus import RedisBus
from persistence.db import Database
from persistence.repositories.executions import SqlExecutionStore, SqlLeases
from persistence.uow import SqlUnitOfWorkFactory
from server.crypto import box_from_settings
from server.security import Argon2Hasher, JwtCodec
from server.settings import Settings
from server.workers import (
    ArqDispatcher,
    ExecutionRuntime,
    InProcessDispatcher,
    process_owner,
    queue_name,
)

log = logging.getLogger("crewgraph.bootstrap")

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
    bus: RedisBus
    executions: ExecutionService
    runtime: ExecutionRuntime
    executors: dict[str, NodeExecutor] = field(default_factory=dict)  # what the runner uses
    extras: dict[str, object] = field(default_factory=dict)

    async def tenant_schema(self, tenant_id: str) -> str:
        return (await self.identity.tenant(tenant_id)).schema_name

    def node_executors(self) -> dict[str, object]:
        """Executors for the node kinds that need runtimes (the engine runs the rest)."""
        return {"TOOL": ToolNodeExecutor(self.tool_runs, self.tenant_schema)}

    async def start(self) -> None:
        """Start this process's background work (sweeper; the runner when in-process)."""
        await self.runtime.start()

    async def aclose(self) -> None:
        await self.runtime.stop()
        await self.sandbox.close()
        await self.redis.aclose()
        await self.db.dispose()


def node_executors(settings: Settings, runtimes: dict[str, object]) -> dict[str, NodeExecutor]:
    """The executors of the node kinds the engine does not run itself (by NodeKind value).

    `runtimes` comes from `Container.node_executors()`: "TOOL" (the sandbox) today; the
    LLM issue adds "LLM", "AGENT" and "CREW" there. A kind without an executor fails its
    nodes with NOT_CONFIGURED ("... which is not configured"), never a fake success.
    """
    executors: dict[str, NodeExecutor] = dict(runtimes)  # type: ignore[arg-type]
    if settings.test_executors:
        # Test-only hook (CREWGRAPH_TEST_EXECUTORS): a module whose wrap(executors)
        # returns the executors to use, e.g. tests.support.slow_executors.
        module = importlib.import_module(settings.test_executors)
        executors = dict(module.wrap(executors))
        log.warning("test executors from %s are active", settings.test_executors)
    return executors


def _execution_runtime(
    settings: Settings,
    db: Database,
    bus: RedisBus,
    executors: dict[str, NodeExecutor],
    *,
    with_runner: bool,
) -> tuple[Dispatcher, ExecutionRuntime]:
    leases = SqlLeases(db, bus)
    dispatcher: Dispatcher
    if settings.worker_mode == "arq":
        assert settings.redis_url
        dispatcher = ArqDispatcher(
            settings.redis_url, queue_name(settings.redis_prefix, settings.worker_queue)
        )
    else:
        dispatcher = InProcessDispatcher()
        with_runner = True
    runner: ExecutionRunner | None = None
    if with_runner:

        def store(ref: ExecutionRef, owner: str) -> SqlExecutionStore:
            return SqlExecutionStore(db, bus, ref, owner)

        runner = ExecutionRunner(
            leases,
            store,
            executors,
            owner=process_owner(),
            dispatcher=dispatcher,
            lease_seconds=settings.execution_lease_seconds,
            flow_timeout=settings.flow_timeout_seconds,
            max_running_per_tenant=settings.max_concurrent_executions,
            max_attempts=settings.max_execution_attempts,
            max_parallel=settings.worker_concurrency,
        )
        if isinstance(dispatcher, InProcessDispatcher):
            dispatcher.runner = runner
    sweeper = Sweeper(
        leases,
        dispatcher,
        interval=settings.sweep_interval_seconds,
        redispatch_after=settings.redispatch_after_seconds,
    )
    return dispatcher, ExecutionRuntime(bus, dispatcher, sweeper, runner)


def build_container(
    settings: Settings,
    *,
    rate_limits: dict[str, str] | None = None,
    with_runner: bool = False,
) -> Container:
    """Everything wired. Executions run in this process when `settings.worker_mode` is
    "inprocess" (or `with_runner`, as `crewgraph worker` does)."""
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before wiring")
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
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
    bus = RedisBus(redis, settings.redis_prefix)
    executors: dict[str, NodeExecutor] = {}  # filled below, once the runtimes exist
    dispatcher, runtime = _execution_runtime(settings, db, bus, executors, with_runner=with_runner)
    executions = ExecutionService(
        uow,  # type: ignore[arg-type]
        bus,
        dispatcher,
        ExecutionLimits(
            max_input_bytes=settings.max_execution_input_bytes,
            max_active=settings.max_active_executions,
            max_nodes=settings.max_nodes_per_flow,
        ),
        idle_poll=settings.subscription_idle_poll_seconds,
    )
    container = Container(
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
        bus=bus,
        executions=executions,
        runtime=runtime,
        executors=executors,
    )
    executors.update(node_executors(settings, container.node_executors()))
    return container
