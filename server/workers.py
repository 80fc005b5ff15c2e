"""Where executions run: in the API process, or in `crewgraph worker` processes via arq.

- `InProcessDispatcher`: the API process runs what it dispatches (`make run`, API tests).
- `ArqDispatcher`: enqueues an arq job (`run_execution`) on `<prefix>:executions`; any
  `crewgraph worker` takes it. arq 0.28 (redis-py 5) only transports "look at execution
  X": the job claims the execution's lease in PostgreSQL and runs it there; a lost or
  repeated job is harmless (the sweeper re-dispatches, a second claim does nothing).
- `ExecutionRuntime`: the background tasks of a process: the sweeper (every process), and
  where executions run, the runner and its cancel listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from domain.chat.model import ReplyRef
from domain.executions.ports import Dispatcher
from domain.executions.records import ExecutionRef
from domain.executions.worker import ExecutionRunner, Sweeper, listen_for_cancels
from persistence.bus import RedisBus
from runtime.litellm_client import load_litellm
from server.tracing import Tracing

if TYPE_CHECKING:
    from server.bootstrap import Container, WrapExecutors

log = logging.getLogger("crewgraph.workers")

JOB_NAME = "run_execution"
CHAT_JOB_NAME = "chat_reply"


def process_owner() -> str:
    """This process's name as a lease owner: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def queue_name(prefix: str, configured: str | None = None) -> str:
    return configured or f"{prefix}:executions"


class InProcessDispatcher:
    def __init__(self, tracing: Tracing | None = None) -> None:
        self.runner: ExecutionRunner | None = None
        self.tracing = tracing or Tracing()

    async def dispatch(self, ref: ExecutionRef) -> None:
        if self.runner is None:
            raise RuntimeError("no runner in this process")
        # The run's task starts inside this span: its trace context goes along.
        with self.tracing.span("execution.dispatch", _span_attributes(ref, "inprocess")):
            self.runner.submit(ref)


def _span_attributes(ref: ExecutionRef, queue: str) -> dict[str, str | None]:
    return {
        "crewgraph.tenant_id": ref.tenant_id,
        "crewgraph.execution_id": ref.execution_id,
        "messaging.destination.name": queue,
    }


class ArqDispatcher:
    """Enqueues `run_execution(tenant_id, tenant_schema, execution_id)` jobs."""

    def __init__(self, redis_url: str, queue: str, tracing: Tracing | None = None) -> None:
        self.redis_url = redis_url
        self.queue = queue
        self.tracing = tracing or Tracing()
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _arq(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._loop is not loop:
            from arq import create_pool
            from arq.connections import RedisSettings

            self._pool = await create_pool(
                RedisSettings.from_dsn(self.redis_url), default_queue_name=self.queue
            )
            self._loop = loop
        return self._pool

    async def dispatch(self, ref: ExecutionRef) -> None:
        pool = await self._arq()
        with self.tracing.span("execution.dispatch", _span_attributes(ref, self.queue)):
            # The trace context rides along as W3C headers (only when tracing is on).
            trace = self.tracing.inject()
            await pool.enqueue_job(
                JOB_NAME,
                ref.tenant_id,
                ref.tenant_schema,
                ref.execution_id,
                _job_id=f"{ref.execution_id}:{uuid.uuid4().hex[:12]}",
                _queue_name=self.queue,
                **({"trace": trace} if trace else {}),
            )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.aclose()


class ArqReplyDispatcher:
    """Enqueues `chat_reply(tenant_id, tenant_schema, session_id, message_id)` jobs on the
    executions' queue (the same workers run both). A lost job leaves the reply pending
    until its claim expires; it then fails visibly (domain/chat/replies.py)."""

    def __init__(self, arq: ArqDispatcher) -> None:
        self._arq = arq

    async def dispatch(self, ref: ReplyRef) -> None:
        pool = await self._arq._arq()
        await pool.enqueue_job(
            CHAT_JOB_NAME,
            ref.tenant_id,
            ref.tenant_schema,
            ref.session_id,
            ref.message_id,
            _job_id=f"chat:{ref.message_id}",
            _queue_name=self._arq.queue,
        )


class ExecutionRuntime:
    """Background tasks of one process; `start()` in the process's event loop."""

    def __init__(
        self,
        bus: RedisBus,
        dispatcher: Dispatcher,
        sweeper: Sweeper,
        runner: ExecutionRunner | None,
    ) -> None:
        self.bus = bus
        self.dispatcher = dispatcher
        self.sweeper = sweeper
        self.runner = runner
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self.sweeper.run_forever(), name="sweeper"))
        if self.runner is not None:
            runner = self.runner
            self._tasks.append(
                asyncio.create_task(
                    listen_for_cancels(self.bus.cancels, runner), name="cancel-listener"
                )
            )
        # Anything left PENDING by a previous process: dispatch it now, not in a minute.
        with contextlib.suppress(Exception):
            await self.sweeper.sweep_once()

    async def stop(self, *, release: bool = True) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self.runner is not None:
            await self.runner.shutdown(release=release)
        if isinstance(self.dispatcher, ArqDispatcher):
            await self.dispatcher.aclose()
        await self.bus.aclose()


# --------------------------------------------------------------------------- crewgraph worker


def execution_job(container: Container) -> Callable[..., Coroutine[Any, Any, None]]:
    """The arq function `run_execution(ctx, tenant_id, schema, execution_id, trace=None)`
    of a container that runs executions; `trace` is the dispatcher's trace context."""
    runner = container.runtime.runner
    assert runner is not None

    async def run_execution(
        ctx: dict[str, Any], tenant_id: str, schema: str, ident: str, trace: Any = None
    ) -> None:
        with container.tracing.attached(trace):  # the dispatcher's span, when traced
            await runner.run(ExecutionRef(tenant_id, schema, ident))

    return run_execution


def run_worker(
    settings: Any, *, burst: bool = False, wrap_executors: WrapExecutors | None = None
) -> None:
    """The `crewgraph worker` process: arq consumes the queue, the runner runs executions.
    `wrap_executors` is for tests (see `build_container`)."""
    from arq import Worker
    from arq.connections import RedisSettings
    from arq.worker import func

    from server.bootstrap import build_container
    from server.metrics import serve_worker_metrics

    settings = settings.model_copy(update={"worker_mode": "arq"})
    container = build_container(settings, with_runner=True, wrap_executors=wrap_executors)
    runtime = container.runtime
    assert runtime.runner is not None
    runner = runtime.runner

    run_execution = execution_job(container)

    chat_runner = container.chat_runner
    assert chat_runner is not None

    async def chat_reply(
        ctx: dict[str, Any], tenant_id: str, schema: str, session_id: str, message_id: str
    ) -> None:
        await chat_runner.replier.run(ReplyRef(tenant_id, schema, session_id, message_id))

    metrics_server: Any = None

    async def startup(ctx: dict[str, Any]) -> None:
        nonlocal metrics_server
        await container.start()
        # LiteLLM's import takes seconds of CPU under the GIL: done before the first job,
        # so it never stalls a claimed run's or reply's lease renewals.
        await load_litellm()
        metrics_server = serve_worker_metrics(settings, container.metrics)
        log.info("worker started", extra={"owner": runner.owner})

    async def shutdown(ctx: dict[str, Any]) -> None:
        if metrics_server is not None:
            metrics_server.shutdown()
        await container.aclose()

    timeout = settings.flow_timeout_seconds + 4 * settings.execution_lease_seconds + 60
    worker = Worker(
        functions=[
            func(run_execution, name=JOB_NAME, keep_result=0, timeout=timeout, max_tries=2),
            # A reply is claimed once; a second try would find it claimed and do nothing.
            func(chat_reply, name=CHAT_JOB_NAME, keep_result=0, timeout=timeout, max_tries=1),
        ],
        queue_name=queue_name(settings.redis_prefix, settings.worker_queue),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=settings.worker_concurrency,
        job_timeout=timeout,
        keep_result=0,
        poll_delay=0.1,
        burst=burst,
        handle_signals=True,
        log_results=False,
    )
    worker.run()
