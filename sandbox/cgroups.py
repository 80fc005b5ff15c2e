"""Per-run cgroups for the bubblewrap backend (when the host lets us make them).

rlimits are per process: 64 processes x RLIMIT_AS could still add up to more memory
than the host has. When the process runs as root and the cgroup hierarchy is writable
(v2 with the memory/pids/cpu controllers delegated, or v1 with memory, pids and cpu
mounted), each run gets its own cgroup with ``memory`` (swap included where the kernel
accounts it), ``pids`` and ``cpu`` limits, and the result reports OOM kills and peak
memory from it. Otherwise the backend runs with rlimits only and says so.

The sandboxed process joins the cgroup before it execs bwrap, through a ``sh -c`` prefix
(:meth:`RunCgroup.join_argv`), so no ``preexec_fn`` runs in our threaded process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from domain.sandbox import SandboxLimits

ROOT = Path("/sys/fs/cgroup")
PARENT = "crewgraph-sandbox"
_CPU_PERIOD_US = 100_000


def _write(path: Path, value: str) -> None:
    path.write_text(value, encoding="ascii")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _v2_enable(parent: Path) -> bool:
    """Delegate memory/pids/cpu to children of ``parent`` (cgroup v2)."""
    try:
        available = (parent / "cgroup.controllers").read_text().split()
        wanted = [c for c in ("memory", "pids", "cpu") if c in available]
        if "memory" not in wanted or "pids" not in wanted:
            return False
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        missing = [c for c in wanted if c not in enabled]
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in missing))
        return True
    except OSError:
        return False


@dataclass
class CgroupManager:
    """Knows which cgroup layout this host has; creates one :class:`RunCgroup` per run."""

    version: int  # 1 or 2
    bases: dict[str, Path] = field(default_factory=dict)  # controller -> our parent dir

    @classmethod
    def detect(cls) -> CgroupManager | None:
        if os.geteuid() != 0:
            return None
        try:
            if (ROOT / "cgroup.controllers").exists():
                parent = ROOT / PARENT
                if not _v2_enable(ROOT):
                    return None
                parent.mkdir(exist_ok=True)
                if not _v2_enable(parent):
                    return None
                return cls(version=2, bases={"unified": parent})
            bases: dict[str, Path] = {}
            for controller in ("memory", "pids", "cpu"):
                mount = ROOT / controller
                if not (mount / "cgroup.procs").exists():
                    if controller == "cpu":
                        continue  # cpu is a nice-to-have
                    return None
                base = mount / PARENT
                base.mkdir(exist_ok=True)
                bases[controller] = base
            probe = cls(version=1, bases=bases).create(SandboxLimits(), "probe")
            probe.remove()
            return cls(version=1, bases=bases)
        except OSError:
            return None

    def create(self, limits: SandboxLimits, run_id: str) -> RunCgroup:
        name = f"{run_id[:48]}-{secrets.token_hex(4)}"
        memory = limits.memory_mb * 1024 * 1024
        quota = max(1000, int(limits.cpu_fraction * _CPU_PERIOD_US))
        dirs: dict[str, Path] = {}
        try:
            if self.version == 2:
                path = self.bases["unified"] / name
                path.mkdir()
                dirs["unified"] = path
                _write(path / "memory.max", str(memory))
                with contextlib.suppress(OSError):
                    _write(path / "memory.swap.max", "0")
                _write(path / "pids.max", str(limits.pids))
                with contextlib.suppress(OSError):
                    _write(path / "cpu.max", f"{quota} {_CPU_PERIOD_US}")
            else:
                for controller, base in self.bases.items():
                    path = base / name
                    path.mkdir()
                    dirs[controller] = path
                mem = dirs["memory"]
                _write(mem / "memory.limit_in_bytes", str(memory))
                with contextlib.suppress(OSError):
                    _write(mem / "memory.memsw.limit_in_bytes", str(memory))
                _write(dirs["pids"] / "pids.max", str(limits.pids))
                if "cpu" in dirs:
                    _write(dirs["cpu"] / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
                    _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        except OSError:
            RunCgroup(self.version, dirs).remove()
            raise
        return RunCgroup(self.version, dirs)


@dataclass
class RunCgroup:
    version: int
    dirs: dict[str, Path]

    def join_argv(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed so the process moves itself into this cgroup, then execs."""
        procs = [str(path / "cgroup.procs") for path in self.dirs.values()]
        script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; done; '
        script += 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "sh", *procs, "--", *argv]

    def _memory_dir(self) -> Path | None:
        return self.dirs.get("unified") or self.dirs.get("memory")

    def oom_killed(self) -> bool:
        mem = self._memory_dir()
        if mem is None:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (mem / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def peak_memory(self) -> int | None:
        mem = self._memory_dir()
        if mem is None:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return _read_int(mem / name)

    def kill_all(self) -> None:
        for path in self.dirs.values():
            try:
                pids = (path / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def remove(self) -> None:
        for path in self.dirs.values():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self.kill_all()
                    time.sleep(0.01)
