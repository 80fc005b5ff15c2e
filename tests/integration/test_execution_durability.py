"""Leases, sweeper, resume, fencing, limits: runners of this process against real Postgres/Redis.

Executions are created through the use case without dispatch, then handed to runners the
test builds (each with its own lease owner), so the test decides who runs what. The
session server's sweeper is paused meanwhile (it would otherwise hand expired leases to
the server's own runner).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.executions.claims import ClaimPolicy
from domain.executions.events import EventType, NewEvent
from domain.executions.ports import LeaseLost, RunOutcome
from domain.executions.records import ExecutionRef
from domain.executions.service import ExecutionService
from domain.executions.state import ExecutionStatus
from domain.executions.worker import ExecutionRunner, Sweeper
from persistence.repositories.execution_leases import SqlLeases
from persistence.repositories.execution_runs import SqlRunStore
from server.workers import InProcessDispatcher
from tests.conftest import Team
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL


class Recorder:
    """A dispatcher that only records."""

    def __init__(self) -> None:
        self.refs: list[ExecutionRef] = []

    async def dispatch(self, ref: ExecutionRef) -> None:
        self.refs.append(ref)


@pytest.fixture
async def paused_sweeper(container: Any) -> AsyncIterator[None]:
    sweeper = container.runtime.sweeper
    sweeper.paused = True
    try:
        yield
    finally:
        sweeper.paused = False


@pytest.fixture
def executor_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs.log"
    path.touch()
    monkeypatch.setenv("CREWGRAPH_TEST_EXECUTOR_LOG", str(path))
    return path


def runs_of(log: Path, execution_id: str) -> list[str]:
    return [
        line.split()[1] for line in log.read_text().splitlines() if line.startswith(execution_id)
    ]


def runner(container: Any, dispatcher: Any = None, **kw: Any) -> ExecutionRunner:
    db, bus = container.db, container.bus

    def store(ref: ExecutionRef, owner: str) -> SqlRunStore:
        return SqlRunStore(db, ref, owner)

    options: dict[str, Any] = {
        "bus": bus,
        "owner": f"test-{uuid.uuid4().hex[:6]}",
        "lease_seconds": 1.0,
        "dispatcher": dispatcher,
    }
    options.update(kw)
    return ExecutionRunner(SqlLeases(db), store, container.executors, **options)


async def pending_run(
    gql: GQL, container: Any, team: Team, flow: dict[str, Any], inputs: dict[str, Any] | None = None
) -> ExecutionRef:
    """A PENDING execution nobody was told about."""
    service = ExecutionService(container.uow, container.bus, dispatcher=None)
    p = await container.identity.authenticate_bearer(team.token)
    execution = await service.execute_flow(p, flow["id"], inputs or {})
    return ExecutionRef(p.tenant_id, p.tenant_schema, execution.id)


async def pending_branching_run(gql: GQL, container: Any, team: Team) -> ExecutionRef:
    """A PENDING run of a new branching flow (score 1) that nobody was told about."""
    flow = await f.create_flow(gql, team.token, f.branching())
    return await pending_run(gql, container, team, flow, {"score": 1})


async def events_of(container: Any, ref: ExecutionRef) -> list[Any]:
    async with container.uow(ref.tenant_schema) as uow:
        return await uow.executions.events_after(ref.execution_id, 0, 10_000)


async def record(container: Any, ref: ExecutionRef) -> Any:
    async with container.uow(ref.tenant_schema) as uow:
        return await uow.executions.get(ref.execution_id)


async def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def node_status(container: Any, ref: ExecutionRef, node_id: str) -> str | None:
    async with container.uow(ref.tenant_schema) as uow:
        runs = (await uow.executions.node_runs([ref.execution_id]))[ref.execution_id]
    return next((r.status.value for r in runs if r.node_id == node_id), None)


async def test_crashed_runner_resumes_elsewhere_without_rerunning_completed_nodes(
    gql: GQL, team: Team, container: Any, paused_sweeper: None, executor_log: Path
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.1, 0.1, 1.5, 0.1]))
    ref = await pending_run(gql, container, team, flow)
    first = runner(container)
    task = asyncio.create_task(first.run(ref))

    async def s2_running() -> bool:  # the executor itself started (not just the row)
        return "s2" in runs_of(executor_log, ref.execution_id)

    await wait_for(s2_running)
    await first.shutdown(release=False)  # like a crash: nothing terminal, lease left to expire
    await asyncio.gather(task, return_exceptions=True)
    assert (await record(container, ref)).status == ExecutionStatus.RUNNING

    second_dispatch = Recorder()
    sweeper = Sweeper(
        SqlLeases(container.db), second_dispatch, bus=container.bus, redispatch_after=60
    )

    async def swept() -> bool:
        return ref in await sweeper.sweep_once()

    await wait_for(swept, timeout=5)  # once the 1 s lease expired: RUNNING -> PENDING
    assert (await record(container, ref)).status == ExecutionStatus.PENDING
    assert await node_status(container, ref, "s2") == "PENDING"

    outcome = await runner(container).run(ref)
    assert outcome is not None and outcome.status == ExecutionStatus.COMPLETED
    done = await record(container, ref)
    assert done.status == ExecutionStatus.COMPLETED and done.attempts == 2
    # Completed nodes ran once; the interrupted one ran again.
    assert runs_of(executor_log, ref.execution_id) == ["s0", "s1", "s2", "s2", "s3"]
    events = await events_of(container, ref)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    completed = [e.node_id for e in events if e.type == EventType.NODE_COMPLETED]
    assert completed == ["in", "s0", "s1", "s2", "s3", "out"]
    starts = [e.data for e in events if e.type == EventType.EXECUTION_STARTED]
    assert starts == [
        {"resumed": False, "checkpointedNodes": 0},
        {"resumed": True, "checkpointedNodes": 3},
    ]
    assert events[-1].type == EventType.EXECUTION_COMPLETED


async def test_graceful_shutdown_gives_the_run_back_at_once(
    gql: GQL, team: Team, container: Any, paused_sweeper: None, executor_log: Path
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.1, 10]))
    ref = await pending_run(gql, container, team, flow)
    recorder = Recorder()
    first = runner(container, recorder, lease_seconds=30)
    task = asyncio.create_task(first.run(ref))

    async def s1_running() -> bool:
        return "s1" in runs_of(executor_log, ref.execution_id)

    await wait_for(s1_running)
    await first.shutdown()
    await asyncio.gather(task, return_exceptions=True)
    assert recorder.refs == [ref]  # re-dispatched right away, not after 30 s
    again = await record(container, ref)
    assert again.status == ExecutionStatus.PENDING
    resumed = runner(container)
    resumed_task = asyncio.create_task(resumed.run(ref))

    async def resumed_running() -> bool:
        return (await record(container, ref)).status == ExecutionStatus.RUNNING

    await wait_for(resumed_running)
    cancel_service = ExecutionService(container.uow, container.bus, dispatcher=None)
    p = await container.identity.authenticate_bearer(team.token)
    await cancel_service.cancel(p, ref.execution_id)
    outcome = await asyncio.wait_for(resumed_task, 5)
    assert outcome is not None and outcome.status == ExecutionStatus.CANCELLED
    assert runs_of(executor_log, ref.execution_id) == ["s0", "s1", "s1"]


async def test_a_runner_that_lost_its_lease_cannot_write(
    gql: GQL, team: Team, container: Any, paused_sweeper: None
) -> None:
    ref = await pending_branching_run(gql, container, team)
    leases = SqlLeases(container.db)
    policy = ClaimPolicy(max_running=10, max_attempts=5)
    assert (await leases.claim(ref, "A", 0.05, policy)).claim is not None
    assert (await leases.claim(ref, "B", 30, policy)).claim is None  # A still holds it
    await asyncio.sleep(0.1)
    claim = (await leases.claim(ref, "B", 30, policy)).claim  # expired: B takes over
    assert claim is not None and claim.attempt == 2
    stale = SqlRunStore(container.db, ref, "A")
    zombie = NewEvent(EventType.LOG, None, datetime.now(UTC), {"message": "zombie"})
    with pytest.raises(LeaseLost):
        await stale.append_events(ref.execution_id, [zombie])
    from domain.executions.ports import NodeResult
    from domain.executions.state import NodeStatus

    with pytest.raises(LeaseLost):
        await stale.save_node_result(ref.execution_id, NodeResult("in", NodeStatus.RUNNING))
    with pytest.raises(LeaseLost):
        await stale.finish(ref.execution_id, RunOutcome(ExecutionStatus.COMPLETED, {}))
    assert await leases.renew(ref, "A", 30) is None
    assert await leases.renew(ref, "B", 30) is not None
    assert await events_of(container, ref) == []
    owner = SqlRunStore(container.db, ref, "B")
    ok = NewEvent(EventType.LOG, None, datetime.now(UTC), {"message": "ok"})
    [event] = await owner.append_events(ref.execution_id, [ok])
    assert event.sequence == 1
    await owner.finish(ref.execution_id, RunOutcome(ExecutionStatus.FAILED, {}, "test over"))


async def test_gives_up_after_max_attempts(
    gql: GQL, team: Team, container: Any, paused_sweeper: None
) -> None:
    ref = await pending_branching_run(gql, container, team)
    leases = SqlLeases(container.db)
    policy = ClaimPolicy(max_running=10, max_attempts=2)
    for owner in ("A", "B"):
        assert (await leases.claim(ref, owner, 0.01, policy)).claim
        await asyncio.sleep(0.05)
    gave_up = await leases.claim(ref, "C", 30, policy)
    assert gave_up.claim is None
    assert gave_up.changed is not None and gave_up.changed.status == ExecutionStatus.FAILED
    assert gave_up.event is not None and gave_up.event.type == EventType.EXECUTION_FAILED
    ended = await record(container, ref)
    assert ended.status == ExecutionStatus.FAILED
    assert ended.error and "gave up after 2 attempts" in ended.error
    events = await events_of(container, ref)
    assert events[-1].type == EventType.EXECUTION_FAILED
    async with container.db.connect() as conn:
        import sqlalchemy as sa

        from persistence.tables import active_executions as A

        left = (
            await conn.execute(sa.select(A).where(A.c.execution_id == ref.execution_id))
        ).first()
    assert left is None


async def test_concurrency_limit_queues_the_rest_as_pending(
    gql: GQL, team: Team, container: Any, paused_sweeper: None, executor_log: Path
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.3]))
    refs = [await pending_run(gql, container, team, flow) for _ in range(5)]
    dispatcher = InProcessDispatcher()
    limited = runner(container, dispatcher, max_running_per_tenant=2, lease_seconds=5)
    dispatcher.runner = limited
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            statuses = [(await record(container, r)).status for r in refs]
            peak = max(peak, statuses.count(ExecutionStatus.RUNNING))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        outcomes = await asyncio.gather(*(limited.run(r) for r in refs))
        assert len([o for o in outcomes if o is not None]) == 2  # the rest stayed PENDING

        async def all_done() -> bool:
            statuses = [(await record(container, r)).status for r in refs]
            return statuses == [ExecutionStatus.COMPLETED] * len(refs)

        await wait_for(all_done)  # each finished run dispatched the next waiting one
    finally:
        sampler.cancel()
        await limited.shutdown()
    assert peak == 2
    assert sorted(runs_of(executor_log, r.execution_id)[0] for r in refs) == ["s0"] * 5


async def test_cancel_of_a_pending_execution_is_immediate(
    gql: GQL, team: Team, container: Any, paused_sweeper: None
) -> None:
    ref = await pending_branching_run(gql, container, team)
    cancelled = (await gql.ok("CancelExecution", {"id": ref.execution_id}, token=team.token))[
        "cancelExecution"
    ]
    assert cancelled["status"] == "CANCELLED" and cancelled["finishedAt"]
    assert cancelled["error"] == "cancelled before it started"
    events = await f.collect_events(gql, team.token, ref.execution_id)
    assert [(e["sequence"], e["type"]) for e in events] == [(1, "EXECUTION_CANCELLED")]
    # A late dispatch finds nothing to run.
    assert await runner(container).run(ref) is None


async def test_sweeper_redispatches_stale_pending_executions(
    gql: GQL, team: Team, container: Any, paused_sweeper: None
) -> None:
    ref = await pending_branching_run(gql, container, team)
    recorder = Recorder()
    sweeper = Sweeper(SqlLeases(container.db), recorder, bus=container.bus, redispatch_after=0.2)
    assert ref not in await sweeper.sweep_once()  # dispatched just now
    await asyncio.sleep(0.3)
    assert ref in await sweeper.sweep_once()  # the dispatch message may have been lost
    assert ref not in await sweeper.sweep_once()  # and not again at once
    outcome = await runner(container).run(ref)
    assert outcome is not None and outcome.status == ExecutionStatus.COMPLETED
