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
