"""Functional behaviour every backend shares (parametrized over Docker and bubblewrap)."""

from __future__ import annotations

import asyncio
import time

import pytest

from domain.sandbox import Sandbox, SandboxLimits, SandboxRequest
from tests.sandbox.fixtures import run_code

pytestmark = pytest.mark.timeout(60)


async def test_returns_output_prints_and_stderr(sandbox: Sandbox) -> None:
    result = await run_code(
        sandbox,
        "import sys\n"
        "def run(x):\n"
        "    print('step', 1)\n"
        "    print('careful', file=sys.stderr)\n"
        "    return {'greeting': 'hello ' + x['name'], 'n': 3, 'ok': True}\n",
        {"name": "crew"},
    )
    assert result.ok, result
    assert result.output == {"greeting": "hello crew", "n": 3, "ok": True}
    assert result.stdout == "step 1\n"
    assert "careful" in result.stderr
    assert result.exit_code == 0 and result.error is None
    assert result.backend == sandbox.name
    assert result.duration_ms >= 0


async def test_exception_gives_error_and_traceback(sandbox: Sandbox) -> None:
    result = await run_code(sandbox, "def run(x):\n    return 1 / 0\n")
    assert not result.ok and result.output is None
    assert result.error == "ZeroDivisionError: division by zero"
    assert result.error_type == "ZeroDivisionError"
    assert 'File "<tool>", line 2' in result.stderr


async def test_async_entrypoint_and_env(sandbox: Sandbox) -> None:
    request = SandboxRequest(
        tenant_id="t-env",
        code="import os, asyncio\nasync def handler(x):\n    await asyncio.sleep(0)\n"
        "    return os.environ.get('GREETING')\n",
        entrypoint="handler",
        env={"GREETING": "hi"},
        limits=SandboxLimits(timeout_seconds=10),
    )
    result = await sandbox.run(request)
    assert result.ok, result
    assert result.output == "hi"
    assert result.execution_id == request.execution_id


async def test_command_kind_gets_input_on_stdin(sandbox: Sandbox) -> None:
    request = SandboxRequest(
        tenant_id="t-cmd",
        kind="command",
        command=("sh", "-c", "cat"),
        input={"echo": [1, 2]},
        limits=SandboxLimits(timeout_seconds=10),
    )
    result = await sandbox.run(request)
    assert result.ok, result
    assert result.output == {"echo": [1, 2]}
    failing = await sandbox.run(
        SandboxRequest(tenant_id="t-cmd", kind="command", command=("sh", "-c", "exit 3"))
    )
    assert not failing.ok and failing.exit_code == 3 and failing.error_type == "ExitCode"


async def test_limits_are_clamped_to_the_backend_ceiling(sandbox: Sandbox) -> None:
    ceiling = sandbox.ceiling  # type: ignore[attr-defined]
    huge = SandboxLimits(memory_mb=ceiling.memory_mb * 4, timeout_seconds=ceiling.timeout_seconds)
    result = await sandbox.run(
        SandboxRequest(
            tenant_id="t-clamp",
            code="import resource\ndef run(x):\n    return 1\n",
            limits=huge,
        )
    )
    assert result.ok, result


async def test_concurrent_runs_stay_separate(sandbox: Sandbox) -> None:
    code = "import time\ndef run(x):\n    time.sleep(0.3)\n    return x['i'] * 10\n"
    started = time.monotonic()
    results = await asyncio.gather(
        *(run_code(sandbox, code, {"i": i}, tenant=f"t-{i % 3}") for i in range(6))
    )
    assert [r.output for r in results] == [i * 10 for i in range(6)]
    assert all(r.ok for r in results)
    assert time.monotonic() - started < 30


async def test_memory_use_is_reported(sandbox: Sandbox) -> None:
    result = await run_code(
        sandbox, "def run(x):\n    b = bytearray(50 * 1024 * 1024)\n    return len(b)\n"
    )
    assert result.ok, result
    assert result.usage.max_memory_bytes is not None
    assert result.usage.max_memory_bytes > 50 * 1024 * 1024


async def test_cancelled_run_leaves_nothing_behind(any_sandbox: Sandbox) -> None:
    tenant = f"t-cancel-{any_sandbox.name}"
    task = asyncio.create_task(
        run_code(any_sandbox, "def run(x):\n    while True:\n        pass\n", tenant=tenant)
    )
    await asyncio.sleep(0.8)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3, "a cancel must stop the run promptly"
    await asyncio.sleep(0.3)  # background removals
    if any_sandbox.name == "docker":
        import json

        docker = any_sandbox.docker  # type: ignore[attr-defined]
        for _ in range(50):  # a warm pool removes used containers in the background
            left = await docker.containers.list(
                all="true", filters=json.dumps({"label": [f"crewgraph.tenant={tenant}"]})
            )
            waiting = any_sandbox.waiting_ids()  # type: ignore[attr-defined]
            left = [c for c in left if c.id not in waiting]  # pre-started, never run: not its
            if not left:
                break
            await asyncio.sleep(0.1)
        assert not left, "containers of a cancelled run remain"
    else:
        cgroups = any_sandbox.cgroups  # type: ignore[attr-defined]
        for base in cgroups.bases.values() if cgroups else ():
            assert not [p for p in base.iterdir() if p.is_dir()], (
                "cgroups of a cancelled run remain"
            )
    after = await run_code(any_sandbox, "def run(x):\n    return 'next'\n", tenant=tenant)
    assert after.ok and after.output == "next", after
