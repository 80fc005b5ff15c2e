"""Bubblewrap backend: the local fallback for machines without a Docker engine.

Each run is ``bwrap --unshare-all`` (new user, PID, network, IPC, UTS, cgroup and mount
namespaces; only loopback, no listeners) with ``--die-with-parent --new-session``, only
the interpreter, its standard library and the shared libraries they link (plus ``prlimit``
and a few basic utilities) bound read-only from the host's /usr (``runtime_binds``; /bin,
/lib, /lib64, /sbin as symlinks or read-only binds), a fresh /proc and minimal /dev, a private size-capped tmpfs on /tmp, a read-only
root, no /home, /root, /work or /etc secrets (only ``ld.so.cache``, ``localtime`` and
``alternatives`` from /etc), a clear environment, bwrap started from ``/`` (the host's
working directory never shows in /proc), and ``--disable-userns``.

Limits: ``prlimit`` inside the sandbox sets RLIMIT_AS (memory), RLIMIT_NPROC (pids),
RLIMIT_CPU (CPU seconds = timeout), RLIMIT_FSIZE (tmpfs size), RLIMIT_NOFILE and no core
files; the host kills the whole process group on the wall-clock timeout or when the output
cap is passed. Run as root, the process first drops to uid/gid 65534 on the host
(``setpriv``), because the kernel does not enforce RLIMIT_NPROC for root; when the host
lets us, each run also gets its own cgroup (memory incl. swap, pids, cpu quota; see
``sandbox/cgroups.py``) so the limits hold for all processes of the run together and
``cpu_fraction`` is enforced (without cgroups it is not).

Python tools run with the host's ``/usr/bin/python3``; ``request.image`` is ignored here.

Pre-started sandboxes (``prestart=N``): starting bwrap and the interpreter is most of a
short run's cost, so after a python run the backend starts the next sandbox of the same
shape (limits and environment) in the background, where the runner blocks on its request
line. A pre-started sandbox has run nothing: it serves exactly one run and is then gone,
so nothing is ever shared between runs, let alone tenants. Idle ones older than
``prestart_ttl`` are killed instead of used; dead ones (killed from outside while they
waited) are dropped, and the run starts its own sandbox as it would without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field, replace

from domain.errors import NotConfigured
from domain.sandbox import SandboxLimits, SandboxRequest, SandboxResult
from sandbox.cgroups import CgroupManager, RunCgroup
from sandbox.limits import DEFAULT_MAX_LIMITS, KILL_GRACE_SECONDS
from sandbox.output import STDERR, STDOUT, OutputCollector, build_result, python_argv, request_line

log = logging.getLogger(__name__)

SANDBOX_UID = 65534
SANDBOX_GID = 65534
_LINKED_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
#: The environment bwrap itself (and its PID 1 inside the sandbox, whose
#: /proc/1/environ the user code can read) starts with: never the host's.
_LAUNCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
#: Programs bound besides the interpreter: ``prlimit`` (sets the limits inside) and the
#: few basic utilities ``kind="command"`` runs expect; no compilers, no docs, nothing else
#: of the host's /usr.
_TOOLS = (
    "/usr/bin/prlimit",
    "/bin/sh",
    "/usr/bin/env",
    "/usr/bin/cat",
    "/usr/bin/echo",
    "/usr/bin/sleep",
    "/usr/bin/true",
    "/usr/bin/false",
    "/usr/bin/printf",
    "/usr/bin/head",
    "/usr/bin/tail",
    "/usr/bin/wc",
    "/usr/bin/tr",
    "/usr/bin/ls",
    "/usr/bin/yes",
    "/usr/bin/seq",
    "/usr/bin/sort",
    "/usr/bin/uniq",
    "/usr/bin/cut",
    "/usr/bin/grep",
    "/usr/bin/sed",
    "/usr/bin/date",
    "/usr/bin/base64",
    "/usr/bin/sha256sum",
    "/usr/bin/md5sum",
    "/usr/bin/mkdir",
    "/usr/bin/rm",
    "/usr/bin/cp",
    "/usr/bin/mv",
    "/usr/bin/touch",
    "/usr/bin/basename",
    "/usr/bin/dirname",
    "/usr/bin/tee",
    "/usr/bin/test",
    "/usr/bin/[",
    "/usr/bin/expr",
    "/usr/bin/xargs",
    "/usr/bin/pwd",
)
_PYTHON_PATHS = (
    "import json, sys, sysconfig; p = sysconfig.get_paths(); "
    "print(json.dumps([sys.executable, p['stdlib'], p['platstdlib']]))"
)


class BubblewrapSandbox:
    """:class:`domain.sandbox.Sandbox` over bubblewrap. Use :meth:`open` (which probes that
    bwrap can create its namespaces here) rather than the constructor."""

    name = "bubblewrap"

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        python: str = "/usr/bin/python3",
        ceiling: SandboxLimits = DEFAULT_MAX_LIMITS,
        use_cgroups: bool | None = None,
        extra_ro_binds: tuple[str, ...] = (),
        prestart: int = 0,
        prestart_ttl: float = 60.0,
        prestart_max_total: int = 8,
    ) -> None:
        found = bwrap or shutil.which("bwrap")
        if not found:
            raise NotConfigured(
                "bubblewrap (bwrap) is not installed; run scripts/sandbox-deps.sh "
                "(Debian package: bubblewrap)"
            )
        self.bwrap = found
        self.python = python
        self.ceiling = ceiling
        self.extra_ro_binds = extra_ro_binds
        self._runtime: list[str] | None = None
        self.drop_root = os.geteuid() == 0
        self.setpriv = shutil.which("setpriv") if self.drop_root else None
        if self.drop_root and not self.setpriv:
            raise NotConfigured("running as root needs setpriv (util-linux) to drop to uid 65534")
        self.cgroups: CgroupManager | None = None
        if use_cgroups is not False:
            self.cgroups = CgroupManager.detect()
            if use_cgroups and self.cgroups is None:
                raise NotConfigured("cgroups were requested but this host does not allow them")
        self._runs: set[_Run] = set()
        self._closed = False
        self.prestart = max(0, prestart)
        self.prestart_ttl = prestart_ttl
        self.prestart_max_total = prestart_max_total
        self._ready: dict[_Shape, list[_Ready]] = {}
        self._refills: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, **kwargs: object) -> BubblewrapSandbox:
        sandbox = cls(**kwargs)  # type: ignore[arg-type]
        await sandbox.probe()
        return sandbox

    async def probe(self) -> None:
        """Run ``python3 -c pass`` in the sandbox; NotConfigured with bwrap's words if not."""
        if not os.path.exists(self.python):  # noqa: ASYNC240 (one stat at start-up)
            raise NotConfigured(f"the sandbox python {self.python} does not exist on this host")
        if self._runtime is None:  # runs python and ldd: off the event loop
            self._runtime = await asyncio.to_thread(runtime_binds, self.python)
        argv = self._argv(SandboxLimits(timeout_seconds=10), [self.python, "-I", "-c", "pass"])
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=_LAUNCH_ENV,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 15)
        except TimeoutError:
            _killpg(proc)
            await proc.wait()
            raise NotConfigured("bubblewrap did not start a sandbox within 15 s") from None
        if proc.returncode != 0:
            raise NotConfigured(
                "bubblewrap cannot create a sandbox here (are unprivileged user namespaces "
                f"allowed?): {err.decode('utf-8', 'replace').strip()[:500]}"
            )

    # -- command line -------------------------------------------------------------------

    def _argv(
        self, limits: SandboxLimits, command: list[str], env: dict[str, str] | None = None
    ) -> list[str]:
        argv: list[str] = []
        if self.drop_root and self.setpriv:
            argv += [
                self.setpriv,
                f"--reuid={SANDBOX_UID}",
                f"--regid={SANDBOX_GID}",
                "--clear-groups",
                "--inh-caps=-all",
            ]
        argv += [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--clearenv",
            *self._runtime_argv(),
        ]
        for path in _LINKED_DIRS:
            if os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                argv += ["--ro-bind", path, path]
        for path in (*_ETC_FILES, *self.extra_ro_binds):
            argv += ["--ro-bind-try", path, path]
        argv += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(min(limits.tmpfs_mb, 16) * 1024 * 1024),
            "--tmpfs",
            "/dev/shm",
            "--remount-ro",
            "/dev",
            "--size",
            str(limits.tmpfs_mb * 1024 * 1024),
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
        ]
        base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        for key, value in base_env.items():
            argv += ["--setenv", key, value]
        memory = limits.memory_mb * 1024 * 1024
        argv += [
            "--",
            "/usr/bin/prlimit",
            f"--as={memory}",
            f"--nproc={limits.pids}",
            f"--cpu={math.ceil(limits.timeout_seconds) + 1}",
            f"--fsize={limits.tmpfs_mb * 1024 * 1024}",
            "--nofile=1024",
            "--core=0",
            "--",
            *command,
        ]
        return argv

    def _runtime_argv(self) -> list[str]:
        """Read-only binds of only what the interpreter and the basic tools need."""
        if self._runtime is None:
            self._runtime = runtime_binds(self.python)
        return self._runtime

    # -- runs ---------------------------------------------------------------------------

    async def run(self, request: SandboxRequest) -> SandboxResult:
        if self._closed:
            raise NotConfigured("the bubblewrap sandbox is closed")
        request = replace(request, limits=request.limits.clamp(self.ceiling))
        collector = OutputCollector(
            framed=request.kind == "python", limit=request.limits.output_bytes
        )
        ready: _Ready | None = None
        if request.kind == "python" and self.prestart:
            shape = _shape(request)
            ready = self._take_ready(shape)
            self._refill_soon(shape, request)
        if ready is None:
            ready = await self._start(request)
        try:
            return await self._finish(ready, request, collector)
        finally:  # also on cancellation: nothing of the run outlives it
            if ready.cgroup is not None:
                await asyncio.shield(asyncio.to_thread(ready.cgroup.remove))

    async def _start(self, request: SandboxRequest) -> _Ready:
        """Start the sandbox process for ``request`` (it then waits for its stdin)."""
        limits = request.limits
        command = python_argv(self.python) if request.kind == "python" else list(request.command)
        argv = self._argv(limits, command, dict(request.env))
        cgroup: RunCgroup | None = None
        if self.cgroups is not None:
            try:
                cgroup = await asyncio.to_thread(self.cgroups.create, limits, request.execution_id)
                argv = cgroup.join_argv(argv)
            except OSError:
                cgroup = None
        # bwrap reports the host pid of the sandbox's init on --info-fd: killing that one
        # first ends the whole PID namespace while bwrap itself still reaps it (killing
        # bwrap first would orphan its child to PID 1 of the host).
        info_r, info_w = os.pipe()
        os.set_blocking(info_r, False)
        argv = _with_info_fd(argv, info_w)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group: killed as a whole
                env=_LAUNCH_ENV,  # bwrap's own processes are visible inside: no host secrets
                cwd="/",  # nor the host working directory (/proc/1/cwd)
                pass_fds=(info_w,),
            )
        except OSError as exc:
            os.close(info_r)
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            raise NotConfigured(f"cannot start bubblewrap: {exc}") from None
        finally:
            os.close(info_w)
        run = _Run(proc, info_r)
        self._runs.add(run)
        return _Ready(run, cgroup)

    # -- pre-started sandboxes ----------------------------------------------------------

    def _take_ready(self, shape: _Shape) -> _Ready | None:
        idle = self._ready.get(shape) or []
        while idle:
            ready = idle.pop()
            if ready.age() < self.prestart_ttl and ready.run.alive():
                return ready
            self._discard(ready)
        return None

    def _refill_soon(self, shape: _Shape, request: SandboxRequest) -> None:
        idle = self._ready.get(shape) or []
        total = sum(len(v) for v in self._ready.values()) + len(self._refills)
        if len(idle) >= self.prestart or total >= self.prestart_max_total:
            return
        template = replace(request, input={}, execution_id="prestart")
        task = asyncio.get_running_loop().create_task(self._refill(shape, template))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _refill(self, shape: _Shape, template: SandboxRequest) -> None:
        try:
            ready = await self._start(template)
        except NotConfigured as exc:
            log.warning("sandbox.bubblewrap.prestart_failed: %s", exc)
            return
        if self._closed:
            self._discard(ready)
            return
        self._ready.setdefault(shape, []).append(ready)

    def _discard(self, ready: _Ready) -> None:
        """Kill an unused pre-started sandbox and clean up after it in the background."""
        ready.run.kill()

        async def reap() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ready.run.proc.wait(), KILL_GRACE_SECONDS)
            ready.run.close()
            self._runs.discard(ready.run)
            if ready.cgroup is not None:
                await asyncio.to_thread(ready.cgroup.remove)

        task = asyncio.get_running_loop().create_task(reap())
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    def prestarted(self) -> int:
        return sum(len(v) for v in self._ready.values())

    # -- runs ---------------------------------------------------------------------------

    async def _finish(
        self, ready: _Ready, request: SandboxRequest, collector: OutputCollector
    ) -> SandboxResult:
        loop = asyncio.get_running_loop()
        run, cgroup, proc = ready.run, ready.cgroup, ready.run.proc
        started = loop.time()
        try:
            timed_out = await self._supervise(run, request, collector, started)
            duration_ms = int((loop.time() - started) * 1000)
        finally:
            if proc.returncode is None:
                run.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS))
            run.close()
            self._runs.discard(run)
        exit_code = proc.returncode
        if exit_code is not None and exit_code < 0:
            exit_code = 128 - exit_code  # killed by a signal: shell convention
        oom = cgroup.oom_killed() if cgroup is not None else False
        peak = cgroup.peak_memory() if cgroup is not None else None
        result = build_result(
            request,
            collector,
            backend=self.name,
            exit_code=exit_code,
            duration_ms=duration_ms,
            timed_out=timed_out,
            oom_killed=oom and not timed_out,
        )
        if peak is not None and result.usage.max_memory_bytes is None:
            result = replace(result, usage=replace(result.usage, max_memory_bytes=peak))
        return result

    async def _supervise(
        self,
        run: _Run,
        request: SandboxRequest,
        collector: OutputCollector,
        started: float,
    ) -> bool:
        """Feed stdin, read both streams under the cap and the timeout; True on timeout.

        The pipes are read to their end even after the cap is passed (the excess is
        discarded): asyncio only reports the exit once both pipes are closed."""
        proc = run.proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(request_line(request))
                await proc.stdin.drain()
            with contextlib.suppress(OSError):
                proc.stdin.close()

        async def pump(reader: asyncio.StreamReader, stream: int) -> None:
            while chunk := await reader.read(65536):
                if not collector.feed(stream, chunk):
                    await run.kill_soon()

        feeder = asyncio.create_task(feed())
        finished = asyncio.gather(pump(proc.stdout, STDOUT), pump(proc.stderr, STDERR), proc.wait())
        timed_out = False
        try:
            remaining = started + request.limits.timeout_seconds - loop.time()
            await asyncio.wait_for(asyncio.shield(finished), max(remaining, 0.01))
        except TimeoutError:
            timed_out = not collector.truncated
            await run.kill_soon()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(finished), KILL_GRACE_SECONDS)
        finally:
            finished.cancel()
            feeder.cancel()
            await asyncio.gather(finished, feeder, return_exceptions=True)
        return timed_out

    async def close(self) -> None:
        self._closed = True
        for idle in self._ready.values():
            for ready in idle:
                self._discard(ready)
        self._ready.clear()
        for run in list(self._runs):
            run.kill()
        if self._refills:
            await asyncio.gather(*list(self._refills), return_exceptions=True)


def runtime_binds(python: str) -> list[str]:
    """bwrap arguments binding the interpreter, its standard library and every shared
    library it (its extension modules, and :data:`_TOOLS`) links, read-only, at their
    host paths; falls back to the whole /usr when the host cannot tell (no ``ldd``)."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", _PYTHON_PATHS], capture_output=True, check=True, timeout=30
        ).stdout
        executable, *stdlib_dirs = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ["--ro-bind", "/usr", "/usr"]
    ldd = shutil.which("ldd")
    if not ldd:
        return ["--ro-bind", "/usr", "/usr"]
    files: dict[str, str] = {}  # destination -> source
    symlinks: dict[str, str] = {}

    def add_file(path: str) -> None:
        if not os.path.exists(path):
            return
        if os.path.islink(path) and os.path.dirname(path) in {"/usr/bin", "/bin"}:
            symlinks[_canonical(path)] = os.readlink(path)
            add_file(os.path.join(os.path.dirname(path), os.readlink(path)))
            return
        files[_canonical(path)] = os.path.realpath(path)

    programs = [python, executable, *(t for t in _TOOLS if os.path.exists(t))]
    for program in programs:
        add_file(program)
    dirs = sorted({os.path.realpath(d) for d in stdlib_dirs if os.path.isdir(d)})
    linked = [os.path.realpath(p) for p in programs]
    for d in dirs:
        for root, _, names in os.walk(d):
            linked += [os.path.join(root, n) for n in names if n.endswith(".so")]
    for chunk in range(0, len(linked), 100):
        try:
            listing = subprocess.run(
                [ldd, *linked[chunk : chunk + 100]],
                capture_output=True,
                timeout=60,
                env=_LAUNCH_ENV,
            ).stdout.decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError):
            return ["--ro-bind", "/usr", "/usr"]
        for line in listing.splitlines():
            line = line.strip()
            target = line.split("=>", 1)[1].strip() if "=>" in line else line
            path = target.split(" (", 1)[0].strip()
            if path.startswith("/"):
                add_file(path)
    argv: list[str] = []
    for d in dirs:
        argv += ["--ro-bind", d, d]
    for dest, src in sorted(files.items()):
        if not any(dest.startswith(d + "/") for d in dirs):
            argv += ["--ro-bind", src, dest]
    for dest, target in sorted(symlinks.items()):
        if dest not in files:
            argv += ["--symlink", target, dest]
    return argv


def _canonical(path: str) -> str:
    """`path` with its directory resolved (/lib64 -> /usr/lib64) but its own name kept:
    the loader looks libraries up by their soname, usually a symlink to the real file."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _with_info_fd(argv: list[str], fd: int) -> list[str]:
    index = next(i for i, arg in enumerate(argv) if os.path.basename(arg) == "bwrap")
    return [*argv[: index + 1], "--info-fd", str(fd), *argv[index + 1 :]]


_Shape = tuple[object, ...]


def _shape(request: SandboxRequest) -> _Shape:
    """What a pre-started sandbox is fixed to: its limits and environment (digested: tool
    environments may hold secrets)."""
    env = json.dumps(sorted(request.env.items())).encode("utf-8")
    return (request.limits, hashlib.sha256(env).hexdigest())


@dataclass(eq=False)
class _Ready:
    """A started sandbox process and its cgroup, not yet given its request."""

    run: _Run
    cgroup: RunCgroup | None
    created: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.created


class _Run:
    """One bwrap process and the pid of its sandbox init (from --info-fd)."""

    def __init__(self, proc: asyncio.subprocess.Process, info_fd: int) -> None:
        self.proc = proc
        self._info_fd: int | None = info_fd
        self.child_pid: int | None = None

    def _read_child_pid(self) -> None:
        if self._info_fd is None or self.child_pid is not None:
            return
        try:
            raw = os.read(self._info_fd, 4096)  # written right after clone(); never blocks
            self.child_pid = int(json.loads(raw or b"{}").get("child-pid") or 0) or None
        except (OSError, ValueError):  # not written (yet): the process group kill remains
            self.child_pid = None

    async def kill_soon(self) -> None:
        self.kill()

    def kill(self) -> None:
        """SIGKILL the sandbox init (the kernel then kills its whole PID namespace and
        bwrap exits by itself), then the process group as a fallback."""
        if self.proc.returncode is not None:
            return
        self._read_child_pid()
        if self.child_pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.child_pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, _killpg, self.proc)

    def close(self) -> None:
        if self._info_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._info_fd)
            self._info_fd = None

    def alive(self) -> bool:
        """Whether bwrap and the sandbox init still run. `returncode` alone lags: asyncio
        learns of bwrap's exit only when its child watcher gets a turn, and bwrap itself
        only exits after reaping the killed init, so the kernel is asked directly."""
        if self.proc.returncode is not None:
            return False
        self._read_child_pid()
        return all(_running(pid) for pid in (self.proc.pid, self.child_pid) if pid)


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie has, its parent has not reaped it
    yet). Procfs is read without following the pid's namespace: the host pid is meant."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")"
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"x", b"")


def _killpg(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
