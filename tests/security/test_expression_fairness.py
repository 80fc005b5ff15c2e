"""Tenants share the template / expression threads fairly: one tenant's heavy runs cannot
hold every thread, so another tenant's trivial flow does not wait for them; and every
evaluation is bounded (operations, loop iterations, time; a whole job by its deadline)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from domain.flows.expressions import TemplateError, render
from domain.flows.expressions.limits import MAX_OPERATIONS, Budget, OverLimit
from domain.flows.expressions.pool import EXPRESSION_POOL, FairPool, evaluation_tenant
from tests.conftest import Team, register
from tests.support.client import GQL
from tests.support.flows import TERMINAL, branching, create_flow, execute, input_node, wait_status

# --- the pool (unit) ---------------------------------------------------------------------


def _blocker(gate: threading.Event, started: list[str], name: str) -> str:
    started.append(name)
    assert gate.wait(10), "the test never opened the gate"
    return name


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def test_a_tenant_cannot_hold_every_thread() -> None:
    pool = FairPool(threads=4)  # two threads per tenant at most
    gate, started = threading.Event(), []
    heavy = [
        asyncio.create_task(pool.run(_blocker, gate, started, f"a{i}", tenant="A"))
        for i in range(6)
    ]
    try:
        await _until(lambda: len(started) == 2)
        assert pool.running("A") == 2
        # B runs now, on a thread A could not take, while all of A's work is still there.
        assert await asyncio.wait_for(pool.run(lambda: "b", tenant="B"), 5) == "b"
        assert not any(task.done() for task in heavy) and len(started) == 2
    finally:
        gate.set()
    assert sorted(await asyncio.gather(*heavy)) == [f"a{i}" for i in range(6)]
    assert pool.running("A") == 0


async def test_a_freed_thread_goes_to_the_tenant_holding_the_fewest() -> None:
    pool = FairPool(threads=2, per_tenant=2)
    gates = {name: threading.Event() for name in ("a0", "a1", "a2", "a3", "b0")}
    started: list[str] = []

    def job(name: str) -> str:
        return _blocker(gates[name], started, name)

    tasks = [asyncio.create_task(pool.run(job, f"a{i}", tenant="A")) for i in range(4)]
    await _until(lambda: len(started) == 2)
    tasks.append(asyncio.create_task(pool.run(job, "b0", tenant="B")))  # queued after a2, a3
    await asyncio.sleep(0.05)
    gates["a0"].set()
    await _until(lambda: len(started) == 3)
    assert started[2] == "b0", started  # not a2, though it waited longer
    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert started[3:] == ["a2", "a3"]


async def test_a_caller_that_gives_up_keeps_the_accounting_right() -> None:
    pool = FairPool(threads=1)
    gate, started = threading.Event(), []
    running = asyncio.create_task(pool.run(_blocker, gate, started, "a0", tenant="A"))
    await _until(lambda: started == ["a0"])
    queued = asyncio.create_task(pool.run(_blocker, gate, started, "a1", tenant="A"))
    await asyncio.sleep(0.02)
    queued.cancel()
    running.cancel()  # the thread cannot be stopped: it stays counted until it ends
    await asyncio.sleep(0.02)
    assert pool.running("A") == 1
    gate.set()
    await _until(lambda: pool.running("A") == 0)
    assert await pool.run(lambda: "next", tenant="B") == "next"
    assert started == ["a0"]  # the cancelled one never ran


def test_an_evaluation_is_bounded_in_operations() -> None:
    budget = Budget.start(60.0)
    with pytest.raises(OverLimit, match="operations"):
        for _ in range(MAX_OPERATIONS + 1):
            budget.tick()


async def test_a_job_of_many_templates_is_bounded_as_a_whole() -> None:
    slow = "{% for i in range(999) %}{% for j in range(1000) %}{{ '' }}{% endfor %}{% endfor %}"

    def many() -> list[str]:
        return [render(slow, {}) for _ in range(20)]  # each alone is within its budget

    started = time.monotonic()
    with pytest.raises(TemplateError, match="took longer"):
        await EXPRESSION_POOL.run(many, tenant="t", timeout=0.3)
    assert time.monotonic() - started < 5


async def test_the_engine_runs_evaluations_as_its_tenant() -> None:
    pool = FairPool(threads=2)
    with evaluation_tenant("tenant-x"):
        seen = await pool.run(lambda: pool.running("tenant-x"))
    assert seen == 1


# --- through the API ---------------------------------------------------------------------

# Seconds of CPU without output (~2 s here alone), within every bound of a render.
HEAVY = (
    '{% set t = "abc " * 50000 %}{% for i in range(600) %}'
    "{% if t.split() | length == 1 %}x{% endif %}{% endfor %}done"
)


HEAVY_RUNS = 4


def heavy_flow() -> dict[str, Any]:
    """input → two heavy OUTPUT nodes side by side."""
    return {
        "name": "heavy",
        "nodes": [
            input_node(),
            {"id": "h1", "kind": "OUTPUT", "config": {"value": HEAVY}},
            {"id": "h2", "kind": "OUTPUT", "config": {"value": HEAVY}},
        ],
        "edges": [{"source": "in", "target": "h1"}, {"source": "in", "target": "h2"}],
    }


async def _executions(gql: GQL, team: Team, ids: list[str]) -> list[dict[str, Any]]:
    found = []
    for ident in ids:
        body = await gql.ok("Execution", {"id": ident}, token=team.token)
        found.append(body["execution"])
    return found


# Through a live server this compares two tenants' progress while one keeps the CPU busy:
# on a loaded 2-core CI machine the GIL can stretch the other tenant's trivial run past
# the heavy work, so it runs under `make test-long`; the pool's fairness rules themselves
# are proven above, deterministically, in `make test`.
@pytest.mark.slow
async def test_heavy_runs_of_one_tenant_do_not_hold_up_another_tenant(gql: GQL) -> None:
    a, b = await register(gql), await register(gql)
    heavy = await create_flow(gql, a.token, heavy_flow())
    trivial = await create_flow(gql, b.token, branching())
    # Enough of A's work (eight renders of seconds each, two at a time) that a busy
    # machine cannot finish it before B's trivial run gets its turn.
    runs = [(await execute(gql, a.token, heavy["id"]))["id"] for _ in range(HEAVY_RUNS)]
    try:
        # Every heavy node started: with a shared FIFO pool all of them would be queued ahead
        # of anything B asks for.
        async def all_heavy_started() -> bool:
            found = await _executions(gql, a, runs)
            started = [r for e in found for r in e["nodeRuns"] if r["nodeId"] in ("h1", "h2")]
            return len(started) == 2 * HEAVY_RUNS

        deadline = time.monotonic() + 30
        while not await all_heavy_started():
            assert time.monotonic() < deadline, "the heavy nodes never started"
            await asyncio.sleep(0.05)

        done = await execute(gql, b.token, trivial["id"], {"score": 7})
        finished = await wait_status(gql, b.token, done["id"], timeout=60)
        assert finished["status"] == "COMPLETED", finished
        assert finished["outputs"] == {"high": "high: 7"}, finished

        # B finished while A's heavy work was still under way, not after it.
        found = await _executions(gql, a, runs)
        assert any(e["status"] == "RUNNING" for e in found), found
        heavy_done = [
            r
            for e in found
            for r in e["nodeRuns"]
            if r["nodeId"] in ("h1", "h2") and r["status"] in ("COMPLETED", "FAILED")
        ]
        assert len(heavy_done) < 2 * HEAVY_RUNS, found
    finally:
        for ident in runs:
            await gql.op("CancelExecution", {"id": ident}, token=a.token)
        for ident in runs:
            await wait_status(gql, a.token, ident, TERMINAL, timeout=60)
