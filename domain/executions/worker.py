"""Running executions durably: leases, heartbeats, cancellation, the sweeper.

PostgreSQL is the source of truth; the task queue only says "look at execution X".

- `ExecutionRunner.run(ref)` claims the execution (`LeaseStore.claim`: PENDING -> RUNNING,
  or a RUNNING one whose lease expired, under the tenant's concurrency limit), runs the
  engine, and renews the lease every `lease_seconds / 3` (heartbeat). A claim that finds
  the execution RUNNING under a live lease, finished, or over the tenant's limit does
  nothing, so a duplicate or stale dispatch is harmless.
- Every store write of the run is fenced by the lease owner: when the lease was lost
  (another worker took over after a pause longer than the lease), the writes fail, the
  heartbeat notices and the local run is abandoned without a terminal write.
- Cancellation is a persisted flag plus a Redis signal: the worker that owns the run sets
  the run's `CancelSignal` when the signal arrives (`listen_for_cancels`), and the
  heartbeat reads the flag as a fallback (a lost signal costs at most one heartbeat).
- `Sweeper.sweep_once` (every process runs one) moves RUNNING executions whose lease
  expired back to PENDING and re-dispatches them, and re-dispatches PENDING executions
  whose dispatch is older than `redispatch_after` (a lost queue message, or a slot that
  freed up under the concurrency limit). The engine resumes from the checkpoints.
- What a claim does (start, wait, requeue, end as CANCELLED or "gave up") is decided by
  `claims.ClaimPolicy` from the stored state; the lease store only applies it.
- Nothing here writes and publishes in one step: the stores commit, then the runner, the
  sweeper and `RunJournal` publish what changed through the `ExecutionBus`.
- When a run ends, the runner dispatches the tenant's oldest PENDING executions, which
  may have been waiting for the slot.
- A run that reaches only unanswered APPROVAL nodes returns WAITING (engine.py): the store
  made it WAITING and gave the lease up, so it holds no slot here and no lease; it is not
  "finished" (its workspace stays). An answer makes it PENDING and dispatches it; that
  claim is a `wake` (not a new attempt, no EXECUTION_STARTED; waiting time is not counted
  toward the flow timeout). The sweeper also answers, as the system, the approvals of
  WAITING executions that expired, and dispatches those runs (`expire_waiting`: one
  process wins per execution).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field

from domain.executions.claims import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RUNNING, ClaimPolicy
from domain.executions.engine import DEFAULT_FLOW_TIMEOUT, FlowEngine
from domain.executions.journal import (
    DEFAULT_TOKEN_BATCH,
    DEFAULT_TOKEN_DELAY,
    RunJournal,
    publish_event,
    publish_status,
)
from domain.executions.ports import (
    CancelFeed,
    CancelSignal,
    Dispatcher,
    ExecutionBus,
    LeaseStore,
    NodeExecutor,
    RunFinished,
    RunOutcome,
    RunStoreFactory,
)
from domain.executions.records import Claim, ClaimOutcome, ExecutionRef
from domain.executions.state import ExecutionStatus
from domain.executions.streams import FeedInterrupted
from domain.observability import NULL_OBSERVER, Observer

log = logging.getLogger("crewgraph.executions")

DEFAULT_LEASE_SECONDS = 30.0


@dataclass(slots=True)
class _ActiveRun:
    ref: ExecutionRef
    signal: CancelSignal
    task: asyncio.Task[RunOutcome] | None = None
    lost: bool = False
    heartbeat: asyncio.Task[None] | None = field(default=None)


class ExecutionRunner:
    """Runs claimed executions in this process; one instance per process."""

    def __init__(
        self,
        leases: LeaseStore,
        stores: RunStoreFactory,
        executors: Mapping[str, NodeExecutor],
        *,
        bus: ExecutionBus,
        owner: str,
        dispatcher: Dispatcher | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        flow_timeout: float | None = DEFAULT_FLOW_TIMEOUT,
        default_node_timeout: float | None = None,
        max_running_per_tenant: int = DEFAULT_MAX_RUNNING,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_parallel: int = 50,
        token_batch: int = DEFAULT_TOKEN_BATCH,
        token_delay: float = DEFAULT_TOKEN_DELAY,
        on_finished: Sequence[RunFinished] = (),
        approval_poll: float = 1.0,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.leases = leases
        self.stores = stores
        self.executors = executors  # read at every run (the wiring may fill it later)
        self.on_finished = on_finished  # likewise; per-run resources (workspaces) to free
        self.bus = bus
        self.owner = owner
        self.dispatcher = dispatcher
        self.lease_seconds = lease_seconds
        self.flow_timeout = flow_timeout
        self.default_node_timeout = default_node_timeout
        self.policy = ClaimPolicy(max_running=max_running_per_tenant, max_attempts=max_attempts)
        self.token_batch = token_batch
        self.token_delay = token_delay
        self.approval_poll = approval_poll
        self.observer = observer  # a span around each claimed run
        self._slots = asyncio.Semaphore(max_parallel)
        self._active: dict[str, _ActiveRun] = {}
        self._submitted: set[asyncio.Task[RunOutcome | None]] = set()
        self._closing = False
        self._release_on_stop = True

    @property
    def active(self) -> list[str]:
        """Ids of the executions running in this process."""
        return list(self._active)

    def submit(self, ref: ExecutionRef) -> None:
        """Run `ref` in the background (the in-process dispatcher)."""
        if self._closing:
            return
        task = asyncio.create_task(self.run(ref), name=f"execution:{ref.execution_id}")
        self._submitted.add(task)
        task.add_done_callback(self._submitted.discard)

    def cancel_local(self, execution_id: str) -> bool:
        """Set the cancel signal of a run of this process; False if it does not run here."""
        active = self._active.get(execution_id)
        if active is None:
            return False
        active.signal.set()
        return True

    async def run(self, ref: ExecutionRef) -> RunOutcome | None:
        """Claim and run `ref`; None when there was nothing to run or the run was abandoned."""
        if ref.execution_id in self._active or self._closing:
            return None
        async with self._slots:
            if ref.execution_id in self._active or self._closing:
                return None
            claimed = await self.leases.claim(ref, self.owner, self.lease_seconds, self.policy)
            await self._announce(ref.tenant_id, claimed)
            if claimed.claim is None:
                return None
            span = self.observer.span(
                "execution.run",
                {
                    "crewgraph.tenant_id": ref.tenant_id,
                    "crewgraph.execution_id": ref.execution_id,
                    "crewgraph.wake": claimed.claim.wake,
                },
            )
            with span:
                outcome = await self._run_claimed(claimed.claim)
        if outcome is not None and outcome.status != ExecutionStatus.WAITING:
            await self._finished(ref)
        await self._dispatch_waiting(ref.tenant_id)
        return outcome

    async def _finished(self, ref: ExecutionRef) -> None:
        """A run reached its end here: free what it held (never fails the run)."""
        for hook in self.on_finished:
            try:
                await hook(ref)
            except Exception:
                log.exception("run clean-up failed", extra={"execution_id": ref.execution_id})

    async def _announce(self, tenant_id: str, claimed: ClaimOutcome) -> None:
        if claimed.changed is not None:
            await publish_status(self.bus, tenant_id, claimed.changed)
        if claimed.event is not None:
            await publish_event(self.bus, tenant_id, claimed.event)

    async def _run_claimed(self, claim: Claim) -> RunOutcome | None:
        ref = claim.ref
        active = _ActiveRun(ref, CancelSignal())
        if claim.cancel_requested:
            active.signal.set()
        self._active[ref.execution_id] = active
        journal = RunJournal(
            self.stores(ref, self.owner),
            self.bus,
            ref.tenant_id,
            token_batch=self.token_batch,
            token_delay=self.token_delay,
        )
        engine = FlowEngine(
            journal,
            self.executors,
            default_node_timeout=self.default_node_timeout,
            flow_timeout=self.flow_timeout,
            approval_poll=self.approval_poll,
        )
        budget = None if self.flow_timeout is None else self.flow_timeout - claim.elapsed
        active.task = asyncio.create_task(
            engine.run(
                ref.execution_id,
                ref.tenant_id,
                claim.graph,
                claim.inputs,
                active.signal,
                budget=budget,
                tenant_schema=ref.tenant_schema,
                wake=claim.wake,
            )
        )
        active.heartbeat = asyncio.create_task(self._heartbeat(active))
        try:
            return await active.task
        except asyncio.CancelledError:
            if active.lost and not self._closing:
                log.warning("lease lost; run abandoned", extra={"execution_id": ref.execution_id})
                return None
            # Shutdown: nothing terminal was written; give the execution back at once so
            # another worker resumes it without waiting for the lease to expire.
            if self._release_on_stop:
                await asyncio.shield(self._release(ref))
            raise
        except Exception:
            # The store failed (database down, lease lost): the execution stays RUNNING
            # and resumes elsewhere once its lease expires.
            log.exception("execution run failed", extra={"execution_id": ref.execution_id})
            return None
        finally:
            active.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await active.heartbeat
            await journal.close()
            self._active.pop(ref.execution_id, None)

    async def _heartbeat(self, active: _ActiveRun) -> None:
        interval = max(self.lease_seconds / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                state = await self.leases.renew(active.ref, self.owner, self.lease_seconds)
            except Exception:
                log.exception(
                    "lease renewal failed", extra={"execution_id": active.ref.execution_id}
                )
                continue
            if state is None:
                active.lost = True
                if active.task is not None:
                    active.task.cancel()
                return
            if state.cancel_requested:
                active.signal.set()

    async def _dispatch_waiting(self, tenant_id: str) -> None:
        if self.dispatcher is None or self._closing:
            return
        try:
            for waiting in await self.leases.next_pending(tenant_id, 4):
                await self.dispatcher.dispatch(waiting)
        except Exception:
            log.exception("dispatching waiting executions failed")

    async def shutdown(self, *, release: bool = True) -> None:
        """Stop every local run without a terminal write; give the executions back.

        `release=False` leaves them RUNNING (like a crash): the sweeper requeues them once
        their lease expires.
        """
        self._closing = True
        self._release_on_stop = release
        runs = list(self._active.values())
        for active in runs:
            if active.task is not None:
                active.task.cancel()
        for task in list(self._submitted):
            task.cancel()
        pending = [a.task for a in runs if a.task is not None] + list(self._submitted)
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        if release:  # runs that did not get to release their lease themselves
            for active in runs:
                await self._release(active.ref)

    async def _release(self, ref: ExecutionRef) -> None:
        try:
            released = await self.leases.release(ref, self.owner)
            if released is None:
                return
            await publish_status(self.bus, ref.tenant_id, released)
            if self.dispatcher is not None:
                await self.dispatcher.dispatch(ref)
        except Exception:
            log.exception("releasing a lease failed", extra={"execution_id": ref.execution_id})


async def listen_for_cancels(feed: CancelFeed, runner: ExecutionRunner) -> None:
    """Forward cancel signals (from any API process) to the runs of this process."""
    while True:
        try:
            async with feed() as subscription:
                while True:
                    ref = await subscription.next(None)
                    if ref is not None:
                        runner.cancel_local(ref.execution_id)
        except FeedInterrupted:
            continue
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cancel listener failed; retrying")
            await asyncio.sleep(1.0)


@dataclass(slots=True)
class Sweeper:
    """Re-dispatches executions whose worker vanished; safe to run in every process."""

    leases: LeaseStore
    dispatcher: Dispatcher
    _: KW_ONLY
    bus: ExecutionBus
    interval: float = 5.0
    redispatch_after: float = 30.0
    batch: int = 100
    paused: bool = field(default=False, init=False)  # maintenance (and tests): skip sweeps

    async def sweep_once(self) -> list[ExecutionRef]:
        """Requeue expired leases, then dispatch those and the stale PENDING executions,
        and the WAITING ones whose approvals expired (answered by the system first)."""
        refs: list[ExecutionRef] = []
        for ref in await self.leases.expired(self.batch):
            try:
                requeued = await self.leases.requeue_expired(ref)
            except Exception:
                log.exception("requeueing an expired execution failed")
                continue
            if requeued is not None:  # else renewed meanwhile, or gone
                log.warning(
                    "lease expired; execution requeued", extra={"execution_id": ref.execution_id}
                )
                await publish_status(self.bus, ref.tenant_id, requeued)
                refs.append(ref)
        known = {ref.execution_id for ref in refs}
        for ref in await self.leases.stale_pending(self.redispatch_after, self.batch):
            if ref.execution_id not in known:
                refs.append(ref)
                known.add(ref.execution_id)
        for ref in await self.leases.expired_approvals(self.batch):
            try:
                resumed = await self.leases.expire_waiting(ref)
            except Exception:
                log.exception("expiring an approval failed")
                continue
            if resumed is not None:  # else answered or expired by someone else meanwhile
                await publish_status(self.bus, ref.tenant_id, resumed.execution)
                await publish_event(self.bus, ref.tenant_id, resumed.event)
                if ref.execution_id not in known:
                    refs.append(ref)
        for ref in refs:
            await self.dispatcher.dispatch(ref)
        return refs

    async def run_forever(self) -> None:
        while True:
            # Jitter keeps the sweepers of many processes from hitting the database at once.
            await asyncio.sleep(self.interval * random.uniform(0.75, 1.25))
            if self.paused:
                continue
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")
