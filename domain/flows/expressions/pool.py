"""The threads templates and expressions run on, shared fairly between tenants.

Rendering and evaluation are synchronous and CPU-bound (bounded by `limits`, up to a few
seconds for hostile input), so they run on a small pool of threads, off the event loop.
All tenants share it; without shares, three heavy executions of one tenant queued enough
work to hold every thread and another tenant's trivial flow waited for all of it.

Here a tenant holds at most `per_tenant` threads at once (half the pool by default), and a
freed thread goes to the waiting tenant holding the fewest, the one served longest ago
first (round robin), each tenant's own work in order. A thread stays counted against its
tenant until the evaluation really ends, even when the caller gave up waiting (a thread
cannot be stopped; the evaluation's own time budget ends it). Each call is bounded as a
whole by `JOB_TIMEOUT_SECONDS` besides each render's / evaluation's own budget
(`limits.job_deadline`), so a config of many templates cannot hold a thread for long.

The tenant is the one of the execution being run: `FlowEngine.run` sets
`EVALUATION_TENANT` for its tasks; calls outside a run share the anonymous tenant "".
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from domain.flows.expressions.limits import JOB_DEADLINE, RENDER_TIMEOUT_SECONDS

T = TypeVar("T")

THREADS = 4
JOB_TIMEOUT_SECONDS = RENDER_TIMEOUT_SECONDS

EVALUATION_TENANT: ContextVar[str] = ContextVar("crewgraph_evaluation_tenant", default="")


@contextmanager
def evaluation_tenant(tenant_id: str) -> Iterator[None]:
    """Evaluations started inside the block (and tasks it creates) count for `tenant_id`."""
    token = EVALUATION_TENANT.set(tenant_id)
    try:
        yield
    finally:
        EVALUATION_TENANT.reset(token)


class _Waiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()


class FairPool:
    """`threads` threads; at most `per_tenant` of them per tenant at once."""

    def __init__(self, threads: int = THREADS, per_tenant: int | None = None) -> None:
        if threads < 1:
            raise ValueError("a pool needs at least one thread")
        self.threads = threads
        self.per_tenant = max(1, min(threads, per_tenant or threads // 2))
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._busy = 0
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._served: dict[str, int] = {}  # the turn at which a tenant last got a thread
        self._turns = itertools.count()

    def running(self, tenant: str) -> int:
        """Threads `tenant` holds now (tests and metrics)."""
        with self._lock:
            return self._running.get(tenant, 0)

    async def run(
        self,
        func: Callable[..., T],
        *args: Any,
        tenant: str | None = None,
        timeout: float = JOB_TIMEOUT_SECONDS,
    ) -> T:
        """`func(*args)` on a thread of `tenant`'s share (default: `EVALUATION_TENANT`)."""
        who = EVALUATION_TENANT.get() if tenant is None else tenant
        await self._acquire(who)
        try:
            future = self._pool().submit(_bounded, func, args, timeout)
        except BaseException:
            self._release(who)
            raise
        # The thread is the tenant's until the work ends, whoever waits for it.
        future.add_done_callback(functools.partial(self._finished, who))
        return await asyncio.wrap_future(future)

    # ---- slots

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self.threads, thread_name_prefix="flow-expr"
                    )
        return self._executor

    async def _acquire(self, tenant: str) -> None:
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiting.setdefault(tenant, deque()).append(waiter)
            self._dispatch()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                queue = self._waiting.get(tenant)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)  # never granted: nothing to give back
                    if not queue:
                        del self._waiting[tenant]
                    raise
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(tenant)  # granted, then cancelled before it was used
            # Granted but not yet woken: `_wake` finds the future cancelled and releases.
            raise

    def _dispatch(self) -> None:
        """Hand free threads to waiting tenants (holding the lock)."""
        while self._busy < self.threads:
            eligible = [
                t
                for t, queue in self._waiting.items()
                if queue and self._running.get(t, 0) < self.per_tenant
            ]
            if not eligible:
                return
            tenant = min(eligible, key=lambda t: (self._running.get(t, 0), self._served.get(t, -1)))
            queue = self._waiting[tenant]
            waiter = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            self._busy += 1
            self._running[tenant] = self._running.get(tenant, 0) + 1
            self._served[tenant] = next(self._turns)
            try:
                waiter.loop.call_soon_threadsafe(self._wake, tenant, waiter)
            except RuntimeError:  # its event loop is closed: nobody will use the thread
                self._take_back(tenant)

    def _wake(self, tenant: str, waiter: _Waiter) -> None:
        if waiter.future.done():  # cancelled while the grant was on its way
            self._release(tenant)
        else:
            waiter.future.set_result(None)

    def _take_back(self, tenant: str) -> None:
        self._busy -= 1
        left = self._running.get(tenant, 0) - 1
        if left > 0:
            self._running[tenant] = left
        else:
            self._running.pop(tenant, None)
            if tenant not in self._waiting:
                self._served.pop(tenant, None)

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._take_back(tenant)
            self._dispatch()

    def _finished(self, tenant: str, _: Future[Any]) -> None:
        self._release(tenant)


def _bounded(func: Callable[..., T], args: tuple[Any, ...], timeout: float) -> T:
    """`func(*args)` with every render / evaluation it makes ending by the job deadline."""
    token = JOB_DEADLINE.set(time.monotonic() + timeout)
    try:
        return func(*args)
    finally:
        JOB_DEADLINE.reset(token)


EXPRESSION_POOL = FairPool()
