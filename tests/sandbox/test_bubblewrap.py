"""Bubblewrap specifics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domain.errors import NotConfigured
from domain.sandbox import SandboxLimits, SandboxRequest
from sandbox.bubblewrap import BubblewrapSandbox
from sandbox.cgroups import PARENT, ROOT
from tests.sandbox.fixtures import get_backend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def bwrap(sandbox_registry: dict) -> BubblewrapSandbox:  # type: ignore[type-arg]
    backend = await get_backend("bubblewrap", sandbox_registry)
    assert isinstance(backend, BubblewrapSandbox)
    return backend


def test_missing_bwrap_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sandbox.bubblewrap.shutil.which", lambda name: None)
    with pytest.raises(NotConfigured, match="bubblewrap"):
        BubblewrapSandbox()


async def test_probe_fails_clearly_for_a_missing_python() -> None:
    with pytest.raises(NotConfigured, match="does not exist"):
        await BubblewrapSandbox.open(python="/usr/bin/no-such-python")


async def test_argv_confines_the_process(bwrap: BubblewrapSandbox) -> None:
    argv = bwrap._argv(SandboxLimits(memory_mb=128, pids=16, tmpfs_mb=8), ["python3"])
    joined = " ".join(argv)
    for flag in (
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--disable-userns",
        "--remount-ro /",
        "--uid 65534",
    ):
        assert flag in joined
    assert f"--as={128 * 1024 * 1024}" in argv and "--nproc=16" in argv
    assert "/home" not in joined and "/root" not in joined and "/work" not in joined
    if os.geteuid() == 0:
        assert argv[0].endswith("setpriv") and "--reuid=65534" in argv


async def test_cgroup_is_removed_after_runs(bwrap: BubblewrapSandbox) -> None:
    result = await bwrap.run(
        SandboxRequest(
            tenant_id="t-cg",
            code="def run(x):\n    return 1\n",
            limits=SandboxLimits(timeout_seconds=10),
        )
    )
    assert result.ok, result
    if bwrap.cgroups is None:
        pytest.skip("no cgroups on this host: rlimits only")
    for base in bwrap.cgroups.bases.values():
        assert not [p for p in base.iterdir() if p.is_dir()], f"leftover cgroups in {base}"


async def test_processes_left_behind_are_killed(bwrap: BubblewrapSandbox) -> None:
    marker = f"crewgraph-left-{os.getpid()}"
    result = await bwrap.run(
        SandboxRequest(
            tenant_id="t-left",
            kind="command",
            command=("sh", "-c", f"(exec -a {marker} sleep 60 &) ; echo started"),
            limits=SandboxLimits(timeout_seconds=10),
        )
    )
    assert result.ok, result
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                leftovers.append(pid)
        except OSError:
            pass
    assert not leftovers, f"processes survived the run: {leftovers}"


def test_cgroup_root_constant() -> None:
    assert ROOT == Path("/sys/fs/cgroup") and PARENT == "crewgraph-sandbox"


# -- pre-started sandboxes ---------------------------------------------------------------

_PID = "import os\ndef run(x):\n    return {'pid': os.getpid(), 'n': x['n'], 'env': os.environ.get('K')}\n"


def _req(n: int, tenant: str = "t-pre", **kw: object) -> SandboxRequest:
    return SandboxRequest(
        tenant_id=tenant,
        code=_PID,
        input={"n": n},
        limits=SandboxLimits(timeout_seconds=10),
        **kw,  # type: ignore[arg-type]
    )


async def _settled(sb: BubblewrapSandbox) -> None:
    import asyncio

    for _ in range(100):
        if not sb._refills:
            return
        await asyncio.sleep(0.05)


async def test_prestarted_sandboxes_serve_one_run_each() -> None:
    sb = await BubblewrapSandbox.open(prestart=1)
    try:
        first = await sb.run(_req(1))
        await _settled(sb)
        assert sb.prestarted() == 1, "the next sandbox of that shape is started after a run"
        second = await sb.run(_req(2, tenant="t-other"))
        assert first.ok and second.ok, (first, second)
        assert second.output["n"] == 2
        await _settled(sb)
        third = await sb.run(_req(3))
        assert third.ok and third.output["n"] == 3
        # every run is its own process (inside a fresh PID namespace it is always the same
        # small number, so compare what the runs could leave behind instead)
        leak = await sb.run(
            SandboxRequest(
                tenant_id="t-pre",
                code="import os\ndef run(x):\n    return sorted(os.listdir('/tmp'))\n",
                limits=SandboxLimits(timeout_seconds=10),
            )
        )
        assert leak.ok and len(leak.output) == 1, "a pre-started /tmp holds only its own scratch"
    finally:
        await sb.close()
    assert sb.prestarted() == 0 and not sb._runs


async def test_prestarted_sandbox_keeps_its_shape_apart() -> None:
    sb = await BubblewrapSandbox.open(prestart=1)
    try:
        await sb.run(_req(1, env={"K": "a"}))
        await _settled(sb)
        other = await sb.run(_req(2, env={"K": "b"}))
        assert other.ok and other.output["env"] == "b", "an environment is never reused"
        await _settled(sb)
        same = await sb.run(_req(3, env={"K": "a"}))
        assert same.ok and same.output["env"] == "a"
    finally:
        await sb.close()


async def test_prestarted_sandbox_timeout_counts_from_the_request() -> None:
    import asyncio

    sb = await BubblewrapSandbox.open(prestart=1)
    try:
        limits = SandboxLimits(timeout_seconds=1)
        spin = "def run(x):\n    while True:\n        pass\n"
        await sb.run(
            SandboxRequest(tenant_id="t-pre", code="def run(x):\n    return 1\n", limits=limits)
        )
        await _settled(sb)
        await asyncio.sleep(1.5)  # the idle sandbox is older than the timeout now
        result = await sb.run(SandboxRequest(tenant_id="t-pre", code=spin, limits=limits))
        assert result.timed_out and result.duration_ms >= 900, result
    finally:
        await sb.close()


async def test_stale_prestarted_sandboxes_are_not_used() -> None:
    import asyncio

    sb = await BubblewrapSandbox.open(prestart=1, prestart_ttl=0.2)
    try:
        await sb.run(_req(1))
        await _settled(sb)
        assert sb.prestarted() == 1
        await asyncio.sleep(0.4)
        result = await sb.run(_req(2))
        assert result.ok and result.output["n"] == 2
    finally:
        await sb.close()
    assert not sb._runs


def _exited(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


@pytest.mark.parametrize("settle", [0.0, 0.3])
async def test_a_dead_prestarted_sandbox_is_discarded_and_the_run_goes_on(settle: float) -> None:
    """Something outside (the OOM killer, an operator's kill) ended the waiting sandbox,
    a while ago, or just now (the kernel is done with it, the event loop has not heard
    yet): the run starts a fresh one instead of failing."""
    import asyncio
    import signal
    import time

    sb = await BubblewrapSandbox.open(prestart=1)
    try:
        assert (await sb.run(_req(1))).ok
        await _settled(sb)
        ((ready,),) = sb._ready.values()
        ready.run._read_child_pid()
        assert ready.run.child_pid
        os.kill(ready.run.child_pid, signal.SIGKILL)
        if settle:
            await asyncio.sleep(settle)
        else:  # without yielding: asyncio's child watcher gets no turn
            deadline = time.monotonic() + 5
            while not _exited(ready.run.child_pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert ready.run.proc.returncode is None
        result = await sb.run(_req(2))
        assert result.ok and result.output["n"] == 2, result
        await _settled(sb)
        assert (await sb.run(_req(3))).ok, "the pool refills after a dead sandbox"
    finally:
        await sb.close()
    assert not sb._runs
