"""The one wiring place: builds adapters and hands them to the use cases."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

import redis.asyncio as aioredis
import structlog
from beanie import Document
from opentelemetry.sdk.trace.export import SpanExporter

from domain.agents import AgentService
from domain.audit import AuditService, disabled_audit
from domain.auth import IdentityService
from domain.chat.model import ChatLimits
from domain.chat.ports import ReplyDispatcher
from domain.chat.replies import ChatReplier, ChatRunner
from domain.chat.service import ChatService
from domain.crew_runs import crew_executors
from domain.crews import CrewService
from domain.executions.ports import Dispatcher, NodeExecutor, RunFinished
from domain.executions.records import ExecutionRef
from domain.executions.service import ExecutionLimits, ExecutionService
from domain.executions.worker import ExecutionRunner, Sweeper
from domain.flow_documents import FlowDocumentService
from domain.flows.service import FlowService
from domain.llm_calls import LlmService
from domain.llm_node import LlmNodeExecutor
from domain.ports import RateLimiter
from domain.providers import ProviderService, local_provider
from domain.quotas import TenantQuotas
from domain.sandbox import Sandbox
from domain.schedules import ScheduleService
from domain.secrets import SecretBox
from domain.tasks import cancel_and_wait
from domain.tenants import TenantAdminService
from domain.tool_runs import SandboxSlots, ToolNodeExecutor, ToolRunner, ToolRunService
from domain.tools import ToolService
from domain.usage import UsageService
from domain.webhooks import RetryPolicy, WebhookDeliverer, WebhookService
from persistence.audit import AuditEntryDocument, MongoAuditLog
from persistence.bus import RedisBus
from persistence.chat_messages import ChatMessageDocument, MongoChatMessages
from persistence.chat_tokens import RedisChatTokens
from persistence.db import Database
from persistence.mongo import MongoStore
from persistence.rate_limits import RedisRateLimiter
from persistence.repositories.chat_sessions import SqlChatSessions
from persistence.repositories.execution_leases import SqlLeases
from persistence.repositories.execution_runs import SqlRunStore
from persistence.repositories.quotas import SqlQuotaStore
from persistence.repositories.schedules import SqlScheduleIndex
from persistence.repositories.tenants import SqlTenantAdminStore
from persistence.repositories.usage import SqlUsageStore
from persistence.repositories.webhooks import SqlOutbox
from persistence.revocations import RedisRevocations
from persistence.seed import ProviderFactory, provider_seed
from persistence.spare_schemas import SpareSchemas
from persistence.uow import SqlUnitOfWorkFactory
from runtime.context_windows import context_window
from runtime.crew_runtime import CrewAiRuntime
from runtime.litellm_client import LiteLlmClient
from runtime.webhook_sender import EgressResolver, HttpWebhookTransport
from sandbox import create_sandbox
from sandbox.builtins import HostBuiltins
from sandbox.lazy import LazySandbox
from schema.context import Services
from server.crypto import box_from_settings
from server.local_model_provider import local_model_provider
from server.metrics import (
    MeteredBus,
    Metrics,
    Observability,
    ObservedSandbox,
    traced_executors,
)
from server.principal_cache import PrincipalCache, RevokingFirst
from server.security import Argon2Hasher, JwtCodec
from server.settings import Settings
from server.sockets import SocketRegistry
from server.tenants_cli import default_quota
from server.tracing import Tracing, build_tracing
from server.workers import (
    ArqDispatcher,
    ArqReplyDispatcher,
    ExecutionRuntime,
    InProcessDispatcher,
    process_owner,
    queue_name,
)

WrapExecutors = Callable[[Mapping[str, NodeExecutor]], Mapping[str, NodeExecutor]]
"""Replaces or wraps node executors by kind (tests: deliberately slow nodes)."""


#: a stale scratch directory is older than the longest run by at least this (seconds)
_SCRATCH_MARGIN = 600.0


@dataclass
class Persistence:
    """PostgreSQL access for commands that need no services (migrate, rotate-key)."""

    db: Database
    uow: SqlUnitOfWorkFactory


def build_persistence(settings: Settings) -> Persistence:
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL must be resolved before wiring")
    db = Database(settings.database_url, pool_size=settings.db_pool_size)
    return Persistence(db, SqlUnitOfWorkFactory(db))


@asynccontextmanager
async def open_persistence(settings: Settings) -> AsyncIterator[Persistence]:
    """`build_persistence`, disposed of on exit."""
    persistence = build_persistence(settings)
    try:
        yield persistence
    finally:
        await persistence.db.dispose()


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
    sandbox: Sandbox
    tool_runs: ToolRunService
    bus: RedisBus
    executions: ExecutionService
    runtime: ExecutionRuntime
    llm: LlmService
    usage: UsageService
    crew_runtime: CrewAiRuntime
    # Per-tenant quotas (domain/quotas.py): the daily and count checks, Tenant.quota.
    quotas: TenantQuotas
    flow_documents: FlowDocumentService
    executors: dict[str, NodeExecutor] = field(default_factory=dict)  # what the runner uses
    extras: dict[str, object] = field(default_factory=dict)
    builtins: HostBuiltins | None = None  # owns the scratch directories
    # This process's open WebSockets, closed when their credentials are revoked.
    sockets: SocketRegistry = field(default_factory=lambda: SocketRegistry(None))
    # Principals reused across HTTP requests for a few seconds, dropped on revocation.
    principals: PrincipalCache = field(default_factory=lambda: PrincipalCache(0, None))
    # MongoDB (chat messages, audit entries); connects on first use.
    mongo: MongoStore = field(default_factory=lambda: MongoStore(None))
    # The tenants' audit log (`audit.record(...)` from any use case or operator command);
    # its MongoDB writer, when MongoDB is configured.
    audit: AuditService = field(default_factory=disabled_audit)
    audit_log: MongoAuditLog | None = None
    # Chat use cases, and where replies run when this process generates them (set by
    # build_container once the runtimes they use exist).
    chat: ChatService = field(init=False)
    chat_runner: ChatRunner | None = field(init=False, default=None)
    # Schedules and outgoing webhooks, with their loops (set by `_wire_automation`).
    schedules: ScheduleService = field(init=False)
    webhooks: WebhookService = field(init=False)
    webhook_deliverer: WebhookDeliverer = field(init=False)
    webhook_transport: HttpWebhookTransport | None = field(init=False, default=None)
    # Operator use cases on tenants (`crewgraph tenants ...`): suspension, quotas.
    tenant_admin: TenantAdminService = field(init=False)
    automation_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # This process's Prometheus registry (server/metrics.py) and OpenTelemetry tracer
    # (server/tracing.py; off unless OTEL_EXPORTER_OTLP_ENDPOINT is set).
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing = field(default_factory=Tracing)
    # Tenant schemas made ahead of registrations (CREWGRAPH_TENANT_SCHEMA_POOL); refilled
    # in the background once started.
    spare_schemas: SpareSchemas | None = None

    def services(self) -> Services:
        """What a request may call: the use cases, never the adapters."""
        return Services.pick(self)

    def node_executors(self) -> dict[str, NodeExecutor]:
        """Executors of the node kinds the engine does not run itself (by NodeKind value).

        A kind without an executor fails its nodes with NOT_CONFIGURED ("... which is not
        configured"), never a fake success."""
        return {
            "TOOL": ToolNodeExecutor(self.tool_runs),
            "LLM": LlmNodeExecutor(self.llm),
            **crew_executors(self.uow, self.crew_runtime, self.llm, self.tool_runs.runner),
        }

    async def remove_workspace(self, ref: ExecutionRef) -> None:
        """A run's workspace (file tools, agent tools) goes when the run ends."""
        await self.crew_runtime.remove_workspace(ref.tenant_id, ref.execution_id)

    async def start(self) -> None:
        """Start this process's background work (sweeper; the runner when in-process)."""
        await self.sweep_scratch()
        if self.spare_schemas is not None:
            self.spare_schemas.start()  # after migrations: spares at the head
        await self.runtime.start()
        self._start_automation()
        if self.chat_runner is not None:
            self.chat_runner.start()
        await self._mongo_ready()
        if self.audit_log is not None:
            await self.audit_log.start()

    async def _mongo_ready(self) -> None:
        """Bind the documents and create their indexes now rather than on the first
        request; a MongoDB that is down only delays that to first use."""
        if not self.mongo.configured:
            return
        try:
            await self.mongo.ready()
        except Exception as exc:
            structlog.get_logger("crewgraph.mongo").warning(
                "mongodb not ready at start", error=str(exc)
            )

    def _start_automation(self) -> None:
        """The scheduler and the webhook delivery loop (every API and worker process)."""
        if self.automation_tasks:
            return
        s = self.settings
        self.automation_tasks = [
            asyncio.create_task(
                self.schedules.run_forever(s.schedule_tick_seconds), name="scheduler"
            ),
            asyncio.create_task(
                self.webhook_deliverer.run_forever(s.webhook_poll_seconds), name="webhooks"
            ),
            asyncio.create_task(
                self.chat.sweep_forever(s.chat_reply_lease_seconds), name="chat-sweeper"
            ),
        ]

    async def _stop_automation(self) -> None:
        tasks, self.automation_tasks = self.automation_tasks, []
        for task in tasks:
            await cancel_and_wait(task)
        if self.webhook_transport is not None:
            await self.webhook_transport.aclose()

    async def sweep_scratch(self) -> int:
        """Remove scratch directories a previous process left behind (it ended mid-run).
        Only those older than the longest any run can last (the flow timeout, plus
        margin), so live runs of other processes sharing the data dir are never touched."""
        if self.builtins is None:
            return 0
        age = max(self.settings.flow_timeout_seconds, self.settings.sandbox_slot_wait_seconds)
        return await asyncio.to_thread(self.builtins.sweep_scratch, age + _SCRATCH_MARGIN)

    async def aclose(self) -> None:
        await self.sockets.stop()
        await self.principals.stop()
        if self.chat_runner is not None:
            await self.chat_runner.stop()
        await self._stop_automation()
        await self.runtime.stop()
        if self.spare_schemas is not None:
            await self.spare_schemas.aclose()
        await self.sandbox.close()
        if self.audit_log is not None:
            await self.audit_log.aclose()  # what is buffered, written if MongoDB answers
        await self.mongo.aclose()
        await self.redis.aclose()
        await self.db.dispose()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes the last spans


def mongo_documents() -> list[type[Document]]:
    """Every beanie document class, bound to the MongoDB database at first use. An
    adapter that stores documents adds its classes here."""
    return [ChatMessageDocument, AuditEntryDocument]


def build_mongo(settings: Settings) -> MongoStore:
    return MongoStore(
        settings.mongodb_url,
        settings.mongodb_database,
        timeout=settings.mongodb_timeout_seconds,
        socket_timeout=settings.mongodb_socket_timeout_seconds,
        documents=mongo_documents(),
    )


def _seeded_providers(settings: Settings) -> list[ProviderFactory]:
    """The local models every new tenant starts with: the scripted one whenever it is
    served, the real tiny model when `serve` runs one (laptop profile only)."""
    factories: list[ProviderFactory] = []
    if settings.local_llm_enabled:
        factories.append(local_provider)
    model_url = settings.local_model_url
    if model_url and settings.env == "laptop":
        factories.append(partial(local_model_provider, model_url))
    return factories


def _sandbox(settings: Settings) -> LazySandbox:
    async def open_sandbox() -> Sandbox:
        return await create_sandbox(
            backend=settings.sandbox_backend,
            docker_host=os.environ.get("DOCKER_HOST") or None,
            image=settings.sandbox_image,
            warm_pool=settings.sandbox_warm_pool,
            python=settings.sandbox_python,
        )

    return LazySandbox(open_sandbox)


def _execution_runtime(
    settings: Settings,
    db: Database,
    bus: RedisBus,
    executors: dict[str, NodeExecutor],
    on_finished: list[RunFinished],
    *,
    with_runner: bool,
    observer: Observability,
) -> tuple[Dispatcher, ExecutionRuntime]:
    leases = SqlLeases(db)
    dispatcher: Dispatcher
    if settings.worker_mode == "arq":
        assert settings.redis_url
        dispatcher = ArqDispatcher(
            settings.redis_url,
            queue_name(settings.redis_prefix, settings.worker_queue),
            observer.tracing,
        )
    else:
        dispatcher = InProcessDispatcher(observer.tracing)
        with_runner = True
    runner: ExecutionRunner | None = None
    if with_runner:

        def store(ref: ExecutionRef, owner: str) -> SqlRunStore:
            return SqlRunStore(db, ref, owner)

        runner = ExecutionRunner(
            leases,
            store,
            executors,
            bus=bus,
            owner=process_owner(),
            dispatcher=dispatcher,
            lease_seconds=settings.execution_lease_seconds,
            flow_timeout=settings.flow_timeout_seconds,
            max_running_per_tenant=settings.max_concurrent_executions,
            max_attempts=settings.max_execution_attempts,
            max_parallel=settings.worker_concurrency,
            on_finished=on_finished,
            approval_poll=settings.approval_poll_seconds,
            observer=observer,
        )
        if isinstance(dispatcher, InProcessDispatcher):
            dispatcher.runner = runner
    sweeper = Sweeper(
        leases,
        dispatcher,
        bus=bus,
        interval=settings.sweep_interval_seconds,
        redispatch_after=settings.redispatch_after_seconds,
    )
    return dispatcher, ExecutionRuntime(bus, dispatcher, sweeper, runner)


def _wire_chat(container: Container, dispatcher: Dispatcher) -> None:
    """Chat over PostgreSQL (sessions), MongoDB (messages) and Redis (tokens). Replies run
    where executions run: in this process, or on `crewgraph worker` via arq."""
    settings = container.settings
    sessions = SqlChatSessions(container.db)
    messages = MongoChatMessages(container.mongo)
    tokens = RedisChatTokens(container.bus)
    limits = ChatLimits(
        default_message_limit=settings.chat_default_message_limit,
        max_message_limit=settings.chat_max_message_limit,
        max_content_chars=settings.chat_max_message_chars,
        reply_lease_seconds=settings.chat_reply_lease_seconds,
        default_context_tokens=settings.chat_context_tokens,
    )
    reply_dispatcher: ReplyDispatcher
    if container.runtime.runner is not None:
        runner = ChatRunner(
            ChatReplier(
                container.uow,
                sessions,
                messages,
                tokens,
                container.llm,
                limits,
                owner=container.runtime.runner.owner,
                windows=context_window,
                crew_runtime=container.crew_runtime,
                tools=container.tool_runs.runner,
            ),
            tokens,
        )
        container.chat_runner = runner
        reply_dispatcher = runner
    else:
        assert isinstance(dispatcher, ArqDispatcher)
        reply_dispatcher = ArqReplyDispatcher(dispatcher)
    container.chat = ChatService(
        container.uow,
        sessions,
        messages,
        tokens,
        lambda: reply_dispatcher,
        limits,
        remove_workspace=container.crew_runtime.remove_workspace,
        quotas=container.quotas,
    )


def _wire_automation(container: Container, box: SecretBox) -> None:
    """Schedules (runs through the execution use cases) and webhooks (secrets sealed like
    provider keys, URLs judged by the egress policy when written and when sent)."""
    settings, db, uow = container.settings, container.db, container.uow
    resolver = EgressResolver(settings.egress_policy)
    transport = HttpWebhookTransport(resolver, timeout_seconds=settings.webhook_timeout_seconds)
    container.webhook_transport = transport
    container.schedules = ScheduleService(
        uow,
        container.executions,
        SqlScheduleIndex(db),
        max_schedules=settings.max_schedules_per_tenant,
    )
    container.webhooks = WebhookService(
        uow,
        box,
        resolver,
        egress=settings.egress_policy,
        max_webhooks=settings.max_webhooks_per_tenant,
        audit=container.audit,
    )
    container.webhook_deliverer = WebhookDeliverer(
        SqlOutbox(db),
        transport,
        box,
        retry=RetryPolicy(
            settings.webhook_retry_base_seconds,
            settings.webhook_retry_max_delay_seconds,
            settings.webhook_retry_window_seconds,
        ),
        concurrency=settings.webhook_concurrency,
        lease_seconds=2 * settings.webhook_timeout_seconds + 10,
    )


def build_container(
    settings: Settings,
    *,
    rate_limits: Mapping[str, str] | None = None,
    with_runner: bool = False,
    wrap_executors: WrapExecutors | None = None,
    span_exporter: SpanExporter | None = None,
) -> Container:
    """Everything wired. Executions run in this process when `settings.worker_mode` is
    "inprocess" (or `with_runner`, as `crewgraph worker` does). `rate_limits` replaces
    the configured rules (`CREWGRAPH_RATE_LIMITS` over the defaults; {} turns limiting off); `wrap_executors` adjusts the node executors
    (tests only); `span_exporter` turns tracing on with that exporter (tests: in memory)."""
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be resolved before wiring")
    persistence = build_persistence(settings)
    db, uow = persistence.db, persistence.uow
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=False)
    mongo = build_mongo(settings)
    audit_log = (
        MongoAuditLog(
            mongo,
            retention_days=settings.audit_retention_days,
            capacity=settings.audit_buffer_size,
        )
        if mongo.configured
        else None
    )
    audit = AuditService(audit_log, audit_log) if audit_log else disabled_audit()
    metrics = Metrics(
        max_operations=settings.metrics_max_operations,
        cache_seconds=settings.metrics_cache_seconds,
    )
    observer = Observability(metrics, build_tracing(span_exporter))
    bus = MeteredBus(redis, settings.redis_prefix)
    bus.metrics = metrics  # counts the execution status changes it announces
    revocations = RedisRevocations(redis, bus, settings.redis_prefix)
    principals = PrincipalCache(settings.principal_cache_seconds, revocations.listen)
    identity = IdentityService(
        uow,
        Argon2Hasher(),
        JwtCodec(settings.signing_secret, settings.access_token_ttl),
        settings.refresh_token_ttl,
        seed_tenant=provider_seed(_seeded_providers(settings)),
        revocations=RevokingFirst(revocations, principals),
        refresh_reuse_seconds=settings.refresh_reuse_seconds,
        audit=audit,
    )
    limiter = RedisRateLimiter(
        settings.redis_url,
        settings.redis_prefix,
        settings.rate_limit_rules if rate_limits is None else rate_limits,
    )
    sandbox = _sandbox(settings)
    data_dir = settings.data_dir.resolve()
    scratch = data_dir / "scratch"  # per-execution workspaces: file builtins and agent tools
    builtins = HostBuiltins(scratch)
    runner = ToolRunner(
        ObservedSandbox(sandbox, metrics, observer.tracing),
        builtins,
        slots=SandboxSlots(
            settings.sandbox_max_concurrent, settings.sandbox_max_concurrent_per_tenant
        ),
        slot_wait=settings.sandbox_slot_wait_seconds,
        allowed_images=settings.sandbox_images,
    )
    box = box_from_settings(
        settings.secret_key, settings.secret_key_file, settings.previous_secret_keys
    )
    usage_store = SqlUsageStore(db)
    quotas = TenantQuotas(SqlQuotaStore(db), default_quota(settings))
    # Filled below, once the runtimes exist.
    executors: dict[str, NodeExecutor] = {}
    on_finished: list[RunFinished] = []
    dispatcher, runtime = _execution_runtime(
        settings, db, bus, executors, on_finished, with_runner=with_runner, observer=observer
    )
    executions = ExecutionService(
        uow,
        bus,
        dispatcher,
        ExecutionLimits(
            max_input_bytes=settings.max_execution_input_bytes,
            max_active=settings.max_active_executions,
            max_nodes=settings.max_nodes_per_flow,
        ),
        idle_poll=settings.subscription_idle_poll_seconds,
        audit=audit,
        quotas=quotas,
    )
    container = Container(
        settings=settings,
        db=db,
        redis=redis,
        identity=identity,
        limiter=limiter,
        uow=uow,
        providers=ProviderService(uow, box, egress=settings.egress_policy, audit=audit),
        tools=ToolService(uow, allowed_images=settings.sandbox_images, audit=audit),
        agents=AgentService(uow),
        crews=CrewService(uow),
        flows=FlowService(uow, settings.max_nodes_per_flow, audit=audit),
        sandbox=sandbox,
        tool_runs=ToolRunService(uow, runner, remove_scratch=builtins.remove_scratch),
        bus=bus,
        executions=executions,
        runtime=runtime,
        # Reads settings.local_llm_url per call: tests and `serve` may set self_url late.
        llm=LlmService(
            uow,
            box,
            # Every model call's host is judged right before the call; the server's own
            # scripted model (`crewgraph:local`) is always allowed.
            LiteLlmClient(
                egress=settings.egress_policy, trusted_base_url=lambda: settings.local_llm_url
            ),
            usage_store,
            lambda: settings.local_llm_url,
            observer=observer,
            quotas=quotas,
        ),
        usage=UsageService(usage_store),
        quotas=quotas,
        flow_documents=FlowDocumentService(
            uow,
            FlowService(uow, settings.max_nodes_per_flow),
            max_bytes=settings.flow_document_max_bytes,
            allowed_images=settings.sandbox_images,
        ),
        crew_runtime=CrewAiRuntime(storage_dir=data_dir / "crewai", workspace_root=scratch),
        executors=executors,
        builtins=builtins,
        sockets=SocketRegistry(revocations.listen),
        principals=principals,
        mongo=mongo,
        audit=audit,
        audit_log=audit_log,
        metrics=metrics,
        tracing=observer.tracing,
        # `crewgraph worker` (with_runner) never registers tenants: no spares to keep.
        spare_schemas=SpareSchemas(db, 0 if with_runner else settings.tenant_schema_pool),
    )
    on_finished.append(container.remove_workspace)
    _wire_automation(container, box)
    _wire_chat(container, dispatcher)
    container.tenant_admin = TenantAdminService(
        SqlTenantAdminStore(db.engine),
        default_quota(settings),
        lambda: datetime.now(UTC),
        # The same announcements as credential revocations: every API process closes the
        # tenant's sockets and drops its cached principals (this one's first).
        revocations=identity.revocations,
        work={
            "executions": executions.cancel_suspended_tenant_runs,
            "chat replies": container.chat.cancel_tenant_replies,
        },
        audit=audit,
    )
    own = container.node_executors()
    executors.update(wrap_executors(own) if wrap_executors else own)
    if observer.tracing.enabled:
        executors.update(traced_executors(dict(executors), observer.tracing))
    metrics.watch(
        sockets=lambda: container.sockets,
        chat_running=lambda: (
            container.chat_runner.replier.running if container.chat_runner is not None else 0
        ),
    )
    return container
