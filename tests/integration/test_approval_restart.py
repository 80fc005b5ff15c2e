"""A run waiting at an APPROVAL node survives a restart of every process, and resumes once.

Real subprocesses (`python -m tests.support.cli serve|worker`, arq mode): an API process
and a worker run the flow until it waits; both are SIGKILLed; two new API processes and a
new worker start; the approval is still pending, both API processes answer it at the same
moment (one wins, the other gets CONFLICT), and the run completes on the new worker. The
session server's sweeper is paused so only the subprocesses touch the run.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import register
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.serve import REPO, serve_env, spawn, wait_until_ready
from tests.support.services import free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def paused_sweeper(container: Any) -> AsyncIterator[None]:
    container.runtime.sweeper.paused = True
    try:
        yield
    finally:
        container.runtime.sweeper.paused = False


class Processes:
    """API and worker subprocesses sharing the test's PostgreSQL and Redis (own prefix)."""

    def __init__(self, settings: Any, tmp: Path) -> None:
        self.tmp = tmp
        self.settings = settings
        self.prefix = f"cgappr{secrets.token_hex(4)}"
        self.log = tmp / "runs.log"
        self.log.touch()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def env(self, port: int) -> dict[str, str]:
        return serve_env(
            self.settings,
            port,
            self.tmp / "data",
            CREWGRAPH_WORKER_MODE="arq",
            CREWGRAPH_REDIS_PREFIX=self.prefix,
            CREWGRAPH_EXECUTION_LEASE_SECONDS="2",
            CREWGRAPH_SWEEP_INTERVAL_SECONDS="0.5",
            CREWGRAPH_TEST_EXECUTOR_LOG=str(self.log),
        )

    async def api(self, stack: AsyncExitStack) -> tuple[GQL, subprocess.Popen[bytes]]:
        self.count += 1
        port = free_port()
        output = self.tmp / f"api{self.count}.log"
        proc = spawn(self.env(port), output, module="tests.support.cli")
        self.procs.append(proc)
        client = await stack.enter_async_context(aclosing(GQL(f"http://127.0.0.1:{port}")))
        await wait_until_ready(client.http, proc, output, 90)
        return client, proc

    def worker(self) -> subprocess.Popen[bytes]:
        self.count += 1
        with open(self.tmp / f"worker{self.count}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.cli", "worker"],
                cwd=REPO,
                env=self.env(free_port()),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)  # no shutdown hook of any kind
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(settings: Any, tmp_path: Path) -> Iterator[Processes]:
    pool = Processes(settings, tmp_path)
    yield pool
    pool.stop_all()


def runs(log: Path, execution_id: str) -> list[str]:
    return [
        line.split()[1] for line in log.read_text().splitlines() if line.startswith(execution_id)
    ]


async def test_a_waiting_run_survives_a_restart_of_every_process_and_resumes_once(
    processes: Processes, paused_sweeper: None
) -> None:
    async with AsyncExitStack() as stack:
        # The worker starts up beside the API process (each imports for seconds).
        worker = processes.worker()
        api, api_proc = await processes.api(stack)
        team = await register(api)
        tool = await b.tool(api, team.token)
        flow = await f.create_flow(
            api,
            team.token,
            {
                "name": f"restart-{secrets.token_hex(4)}",
                "nodes": [
                    {"id": "in", "kind": "INPUT"},
                    {"id": "work", "kind": "TOOL",
                     "config": {"toolId": tool["id"], "testSleepSeconds": 0.2}},
                    {"id": "ask", "kind": "APPROVAL",
                     "config": {"prompt": "Ship {{ nodes.work.output.node }}?"}},
                    {"id": "ship", "kind": "TOOL",
                     "config": {"toolId": tool["id"], "testSleepSeconds": 0.1}},
                    {"id": "out", "kind": "OUTPUT"},
                ],
                "edges": [
                    {"source": "in", "target": "work"},
                    {"source": "work", "target": "ask"},
                    {"source": "ask", "target": "ship", "branch": "true"},
                    {"source": "ship", "target": "out"},
                ],
            },
        )  # fmt: skip
        run = await f.execute(api, team.token, flow["id"])
        ident = run["id"]
        waiting = await f.wait_status(api, team.token, ident, {"WAITING", *f.TERMINAL}, 60)
        assert waiting["status"] == "WAITING", waiting
        assert runs(processes.log, ident) == ["work"]

        # Every process goes down at once, without any shutdown.
        processes.kill(api_proc)
        processes.kill(worker)

        processes.worker()
        (second, _), (third, _) = await asyncio.gather(processes.api(stack), processes.api(stack))
        found = (await second.ok("PendingApprovals", {"id": ident}, token=team.token))["execution"]
        assert found["status"] == "WAITING" and found["attempts"] == 1
        [approval] = found["pendingApprovals"]
        assert approval["nodeId"] == "ask" and approval["prompt"] == "Ship work?"

        variables = {"executionId": ident, "nodeId": "ask", "approved": True, "comment": "ok"}
        answers = await asyncio.gather(
            second.op("ResolveApproval", variables, token=team.token),
            third.op("ResolveApproval", {**variables, "approved": False}, token=team.token),
        )
        assert sorted(error_code(a) or "OK" for a in answers) == ["CONFLICT", "OK"], answers
        won = next(a for a in answers if not a.get("errors"))["data"]["resolveApproval"]
        assert won["id"] == ident and won["pendingApprovals"] == []
        approved = not answers[0].get("errors")  # the first API process answered "approve"

        done = await f.wait_status(third, team.token, ident, timeout=60)
        assert done["status"] == "COMPLETED", done
        assert done["attempts"] == 1
        statuses = {r["nodeId"]: r["status"] for r in done["nodeRuns"]}
        assert statuses["ask"] == "COMPLETED"
        assert statuses["ship"] == ("COMPLETED" if approved else "SKIPPED")
        # Each node ran once, across all the processes.
        assert runs(processes.log, ident) == (["work", "ship"] if approved else ["work"])
        events = (
            await third.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=team.token)
        )["execution"]["events"]
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        kinds = [e["type"] for e in events]
        assert kinds.count("EXECUTION_STARTED") == 1
        assert kinds.count("EXECUTION_WAITING") == 1 and kinds.count("EXECUTION_RESUMED") == 1
        assert kinds[-1] == "EXECUTION_COMPLETED"
        completed = [e["nodeId"] for e in events if e["type"] == "NODE_COMPLETED"]
        assert completed.count("ask") == 1


async def test_two_sweepers_time_a_waiting_run_out_once(
    gql: GQL, container: Any, paused_sweeper: None
) -> None:
    from domain.executions.records import ExecutionRef
    from persistence.repositories.execution_leases import SqlLeases

    team = await register(gql)
    flow = await f.create_flow(
        gql,
        team.token,
        {
            "name": f"expire-{secrets.token_hex(4)}",
            "nodes": [
                {"id": "in", "kind": "INPUT"},
                {
                    "id": "ask",
                    "kind": "APPROVAL",
                    "config": {"prompt": "ok?", "timeoutSeconds": 0.3},
                },
                {"id": "yes", "kind": "OUTPUT", "config": {"value": "yes"}},
                {"id": "no", "kind": "OUTPUT", "config": {"value": "no"}},
            ],
            "edges": [
                {"source": "in", "target": "ask"},
                {"source": "ask", "target": "yes", "branch": "true"},
                {"source": "ask", "target": "no", "branch": "false"},
            ],
        },
    )
    run = await f.execute(gql, team.token, flow["id"])
    waiting = await f.wait_status(gql, team.token, run["id"], {"WAITING", *f.TERMINAL})
    assert waiting["status"] == "WAITING"
    p = await container.identity.authenticate_bearer(team.token)
    ref = ExecutionRef(p.tenant_id, p.tenant_schema, run["id"])
    first, second = SqlLeases(container.db), SqlLeases(container.db)
    assert ref not in await first.expired_approvals(1000)  # not yet expired
    await asyncio.sleep(0.4)
    assert ref in await first.expired_approvals(1000)
    results = await asyncio.gather(first.expire_waiting(ref), second.expire_waiting(ref))
    assert sum(r is not None for r in results) == 1
    assert ref not in await first.expired_approvals(1000)
    await container.runtime.dispatcher.dispatch(ref)
    done = await f.wait_status(gql, team.token, run["id"])
    assert done["status"] == "COMPLETED" and done["outputs"] == {"no": "no"}
    events = (await gql.ok("ExecutionEventLog", {"id": run["id"]}, token=team.token))["execution"][
        "events"
    ]
    resumed = [e["data"] for e in events if e["type"] == "EXECUTION_RESUMED"]
    assert resumed == [{"nodeIds": ["ask"], "reason": "timeout"}]
