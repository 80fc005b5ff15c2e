"""Sandbox resource limits: dry runs leave no
scratch behind, orphaned scratch is swept at start-up, concurrent sandbox runs are
capped per tenant and in total, a tool flooding its output is stopped at once, and
DOCKER tools may only use allow-listed images."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.errors import BadUserInput, LimitExceeded
from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest, SandboxResult
from domain.tool_runs import SandboxSlots, ToolRunner
from domain.tools import Tool, ToolKind
from sandbox.builtins import HostBuiltins
from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL, error_code

pytestmark = pytest.mark.timeout(90)


def _tool(kind: ToolKind, config: dict[str, Any]) -> Tool:
    now = datetime.now(UTC)
    return Tool("t-1", "t", "d", kind, config, {"type": "object"}, 1, now, now)


PY_TOOL = _tool(ToolKind.CUSTOM_PYTHON, {"code": "def run(i):\n    return 1\n"})


class _GatedSandbox:
    """A fake backend whose runs end only when the test says so."""

    name = "gated"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = asyncio.Event()

    async def run(self, request: SandboxRequest) -> SandboxResult:
        self.started.append(request.tenant_id)
        await self.gate.wait()
        return SandboxResult(ok=True, output=1)

    async def close(self) -> None:
        return None


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- scratch -------------------------------------------------------------------------------


async def test_validate_of_a_file_write_tool_leaves_no_scratch(
    gql: GQL, team: Team, container: Any
) -> None:
    tool = await b.tool(gql, team.token, kind="BUILTIN", config={"builtin": "file_write"})
    for i in range(3):
        result = (
            await gql.ok(
                "ValidateTool",
                {"id": tool["id"], "sampleInput": {"path": f"d/f{i}.txt", "content": "x" * 5000}},
                token=team.token,
            )
        )["validateTool"]
        assert result["valid"] is True, result
    tenant_scratch = Path(container.settings.data_dir).resolve() / "scratch" / team.tenant_id
    left = list(tenant_scratch.iterdir()) if tenant_scratch.exists() else []
    assert left == [], left


async def test_orphaned_scratch_is_swept_at_start_up_and_live_scratch_kept(
    container: Any,
) -> None:
    root = Path(container.settings.data_dir).resolve() / "scratch" / "sweeptenant"
    old = root / "crashed-run"
    (old / "notes").mkdir(parents=True, exist_ok=True)
    (old / "notes" / "a.txt").write_text("left behind")
    fresh = root / "live-run"
    fresh.mkdir(parents=True, exist_ok=True)
    long_ago = time.time() - container.settings.flow_timeout_seconds - 3600
    os.utime(old, (long_ago, long_ago))
    try:
        removed = await container.sweep_scratch()  # what Container.start() runs first
        assert removed >= 1
        assert not old.exists()
        assert fresh.is_dir()  # may belong to a run of another process: kept
    finally:
        await HostBuiltins(root.parent).remove_scratch("sweeptenant", "live-run")
        root.rmdir()


def test_sweep_removes_only_directories_older_than_the_cutoff(tmp_path: Path) -> None:
    builtins = HostBuiltins(tmp_path)
    for name in ("old", "new"):
        (tmp_path / "t1" / name).mkdir(parents=True)
    past = time.time() - 7200
    os.utime(tmp_path / "t1" / "old", (past, past))
    assert builtins.sweep_scratch(3600) == 1
    assert sorted(p.name for p in (tmp_path / "t1").iterdir()) == ["new"]


# -- concurrency caps ------------------------------------------------------------------------


async def test_per_tenant_cap_refuses_dry_runs_and_spares_other_tenants() -> None:
    sandbox = _GatedSandbox()
    runner = ToolRunner(sandbox, None, slots=SandboxSlots(total=10, per_tenant=2))
    held = [
        asyncio.create_task(runner.run("tenantA", PY_TOOL, {}, f"e{i}", slot_wait=0))
        for i in range(2)
    ]
    await _until(lambda: len(sandbox.started) == 2)
    with pytest.raises(LimitExceeded):  # a dry run past the cap: refused at once
        await runner.run("tenantA", PY_TOOL, {}, "e3", slot_wait=0)
    other = asyncio.create_task(runner.run("tenantB", PY_TOOL, {}, "e4", slot_wait=0))
    await _until(lambda: sandbox.started.count("tenantB") == 1)  # not held up by A
    waiting = asyncio.create_task(runner.run("tenantA", PY_TOOL, {}, "e5", slot_wait=10))
    await asyncio.sleep(0.1)
    assert sandbox.started.count("tenantA") == 2  # a flow's run waits for a slot
    sandbox.gate.set()
    outcomes = await asyncio.gather(*held, other, waiting)
    assert all(o.ok for o in outcomes)
    assert sandbox.started.count("tenantA") == 3
    assert runner.slots.running() == 0


async def test_total_cap_and_bounded_wait() -> None:
    sandbox = _GatedSandbox()
    runner = ToolRunner(sandbox, None, slots=SandboxSlots(total=2, per_tenant=2))
    held = [
        asyncio.create_task(runner.run(f"tenant{i}", PY_TOOL, {}, f"e{i}", slot_wait=0))
        for i in range(2)
    ]
    await _until(lambda: len(sandbox.started) == 2)
    started = time.monotonic()
    with pytest.raises(LimitExceeded):
        await runner.run("tenant9", PY_TOOL, {}, "e9", slot_wait=0.3)
    assert 0.25 <= time.monotonic() - started < 3
    sandbox.gate.set()
    await asyncio.gather(*held)
    assert runner.slots.running() == 0


async def test_validate_past_the_cap_is_limit_exceeded_over_the_api(
    gql: GQL, team: Team, other_team: Team, container: Any
) -> None:
    cap = container.tool_runs.runner.slots.per_tenant
    slow = "import time\ndef run(i):\n    time.sleep(4)\n    return 1\n"
    tool = await b.tool(gql, team.token, config={"code": slow})
    quick = await b.tool(gql, other_team.token)

    async def validate(tool_id: str, token: str) -> dict[str, Any]:
        return await gql.op("ValidateTool", {"id": tool_id, "sampleInput": {}}, token=token)

    mine = [asyncio.create_task(validate(tool["id"], team.token)) for _ in range(cap + 1)]
    theirs = await validate(quick["id"], other_team.token)
    assert theirs.get("errors") is None, theirs
    assert theirs["data"]["validateTool"]["valid"] is True, theirs
    bodies = await asyncio.gather(*mine)
    refused = [x for x in bodies if error_code(x) == "LIMIT_EXCEEDED"]
    passed = [x for x in bodies if not x.get("errors") and x["data"]["validateTool"]["valid"]]
    assert len(refused) == 1 and len(passed) == cap, bodies


# -- output flood ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_kw",
    [
        {"kind": "command", "command": ("yes",)},
        {"kind": "command", "command": ("sh", "-c", "yes & yes & cat /dev/zero")},
        {"code": "import os\ndef run(_):\n    os.system('yes')\n"},
    ],
    ids=["yes", "several-writers", "python-subprocess"],
)
async def test_output_flood_is_stopped_at_the_cap(
    sandbox: Sandbox, request_kw: dict[str, Any]
) -> None:
    limits = SandboxLimits(timeout_seconds=20, output_bytes=1_000_000)
    started = time.monotonic()
    result = await sandbox.run(SandboxRequest(tenant_id="flood", limits=limits, **request_kw))
    elapsed = time.monotonic() - started
    assert result.truncated and not result.ok, result.error
    assert result.error_type == "OutputLimit"
    assert elapsed < 8, f"{sandbox.name}: the run went on for {elapsed:.1f}s past the cap"


# -- image allow-list ------------------------------------------------------------------------


async def test_docker_tool_with_an_image_off_the_allow_list_is_refused(
    gql: GQL, team: Team
) -> None:
    config = {"image": "python:3.12-slim", "command": ["python3", "-c", "print(1)"]}
    body = await gql.op(
        "CreateTool",
        {"input": {"name": "x", "description": "d", "kind": "DOCKER", "config": config}},
        token=team.token,
    )
    assert error_code(body) == "BAD_USER_INPUT", body
    assert "input.config.image" in body["errors"][0]["extensions"]["fields"], body
    allowed = await b.tool(
        gql, team.token, kind="DOCKER", config={**config, "image": "crewgraph/sandbox-python:1"}
    )
    body = await gql.op(
        "UpdateTool",
        {
            "id": allowed["id"],
            "input": {"name": "x", "description": "d", "kind": "DOCKER", "config": config},
        },
        token=team.token,
    )
    assert error_code(body) == "BAD_USER_INPUT", body
    # an unsaved edit naming such an image fails the dry run before anything runs
    result = (
        await gql.ok(
            "ValidateTool",
            {
                "id": allowed["id"],
                "sampleInput": {},
                "input": {"name": "x", "description": "d", "kind": "DOCKER", "config": config},
            },
            token=team.token,
        )
    )["validateTool"]
    assert result["valid"] is False
    assert any("config.image" in e for e in result["errors"]), result


async def test_run_time_refuses_an_image_off_the_allow_list() -> None:
    sandbox = _GatedSandbox()
    sandbox.gate.set()
    runner = ToolRunner(sandbox, None, allowed_images={"crewgraph/sandbox-python:1"})
    stored = _tool(ToolKind.DOCKER, {"image": "evil/miner:latest", "command": ["mine"]})
    with pytest.raises(BadUserInput):
        await runner.run("tenantA", stored, {}, "e1")
    assert sandbox.started == []
    ok = _tool(ToolKind.DOCKER, {"image": "crewgraph/sandbox-python:1", "command": ["true"]})
    assert (await runner.run("tenantA", ok, {}, "e2")).ok
