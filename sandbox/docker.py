"""Docker backend (aiodocker): every run in a locked-down container.

Each container: no network (NetworkMode none), read-only root, a small noexec tmpfs on
/tmp, memory with MemorySwap = Memory, NanoCpus, PidsLimit, CapDrop ALL,
no-new-privileges, uid/gid 65534, an init process, no log driver (output is read from
the attach stream, which is opened BEFORE the container starts, so nothing is lost),
labels ``crewgraph.managed=1`` + tenant + expiry. The host enforces the wall-clock
timeout (kill) and the output cap (kill + truncated), and always removes the container.

Optional warm pool (``warm_pool=True``, python runs only): long-lived containers with the
same confinement, keyed by (tenant, image, limits) and never shared across tenants; each
run is a ``docker exec`` of ``timeout -s KILL <t> python3 -I -B -c <runner>`` holding the
container exclusively. A container is recycled after ``warm_max_runs`` runs, after
``warm_ttl_seconds``, after any failed run, or when a run left processes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.stream import Stream

from domain.errors import NotConfigured
from domain.sandbox import SandboxLimits, SandboxRequest, SandboxResult
from sandbox.images import DEFAULT_IMAGE, build_hint, ensure_image
from sandbox.limits import DEFAULT_MAX_LIMITS, KILL_GRACE_SECONDS
from sandbox.output import (
    OutputCollector,
    build_result,
    leftover_processes,
    python_argv,
    request_line,
)

log = logging.getLogger(__name__)

MANAGED_LABEL = "crewgraph.managed"
TENANT_LABEL = "crewgraph.tenant"
EXECUTION_LABEL = "crewgraph.execution"
EXPIRES_LABEL = "crewgraph.expires"
POOL_LABEL = "crewgraph.pool"
INSTANCE_LABEL = "crewgraph.instance"
SANDBOX_USER = "65534:65534"
#: processes a warm container shows at the end of a clean run: init, sleep, timeout, runner
_WARM_BASELINE_PROCESSES = 4
#: how long a cold container may outlive its timeout before reap_orphans() removes it
_COLD_EXPIRY_GRACE = 120.0
#: engine round trips allowed on top of a run's timeout before the run is abandoned
_ENGINE_SLACK = 30.0
#: how long the engine may take to acknowledge a kill
_KILL_TIMEOUT = 10.0

Outcome = Literal["eof", "timeout", "output"]


def _base_env(request: SandboxRequest) -> list[str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(request.env)
    return [f"{k}={v}" for k, v in env.items()]


def host_config(limits: SandboxLimits) -> dict[str, Any]:
    """The confinement every sandbox container gets."""
    memory = limits.memory_mb * 1024 * 1024
    tmpfs = limits.tmpfs_mb * 1024 * 1024
    return {
        "NetworkMode": "none",
        "ReadonlyRootfs": True,
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": int(limits.cpu_fraction * 1_000_000_000),
        "PidsLimit": limits.pids,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={limits.tmpfs_mb}m,mode=1777"},
        "ShmSize": min(tmpfs, 16 * 1024 * 1024),
        "IpcMode": "private",
        "Init": True,
        "AutoRemove": False,
        "Privileged": False,
        "OomScoreAdj": 500,
        "LogConfig": {"Type": "none", "Config": {}},
        "Ulimits": [
            {"Name": "nofile", "Soft": 1024, "Hard": 1024},
            {"Name": "fsize", "Soft": tmpfs, "Hard": tmpfs},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "RestartPolicy": {"Name": "no"},
    }


def _write_eof(stream: Stream) -> None:
    """Half-close the hijacked connection so the process sees EOF on stdin (aiodocker's
    Stream has no public half-close; its close() drops the whole connection)."""
    resp = stream._resp
    conn = resp.connection if resp is not None else None
    transport = conn.transport if conn is not None else None
    if transport is not None and transport.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            transport.write_eof()


async def _stop(stream: Stream, kill: Callable[[], Awaitable[None]]) -> None:
    """End a run now. The attach/exec stream is dropped FIRST: the engine copies the
    process's output into it, and while nobody reads a flooding process's output that
    copy blocks, and with it the engine's kill (which waits for the streams), until the
    run's hard cap; with the connection gone the kill returns at once."""
    with contextlib.suppress(OSError, RuntimeError, aiohttp.ClientError):
        await stream.close()
    await kill()


async def _pump(
    stream: Stream,
    collector: OutputCollector,
    deadline: float,
    kill: Callable[[], Awaitable[None]],
) -> Outcome:
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            await _stop(stream, kill)
            return "timeout"
        try:
            message = await asyncio.wait_for(stream.read_out(), remaining)
        except TimeoutError:
            await _stop(stream, kill)
            return "timeout"
        except (aiohttp.ClientError, ConnectionError):
            return "eof"
        if message is None:
            return "eof"
        if not collector.feed(message.stream, message.data):
            await _stop(stream, kill)  # the moment the cap is passed
            return "output"


@dataclass(eq=False)
class _Warm:
    container: DockerContainer
    key: tuple[object, ...]
    created: float = field(default_factory=time.monotonic)
    runs: int = 0


class DockerSandbox:
    """:class:`domain.sandbox.Sandbox` over a Docker engine. Use :meth:`open` (pings the
    engine, checks the image, reaps orphans) or call :meth:`start` yourself."""

    name = "docker"

    def __init__(
        self,
        docker: aiodocker.Docker | None = None,
        *,
        url: str | None = None,
        image: str = DEFAULT_IMAGE,
        ceiling: SandboxLimits = DEFAULT_MAX_LIMITS,
        python: str = "python3",
        warm_pool: bool = False,
        warm_max_runs: int = 50,
        warm_idle_per_tenant: int = 1,
        warm_max_total: int = 16,
        warm_ttl_seconds: float = 600.0,
    ) -> None:
        self._docker = (
            docker
            if docker is not None
            else aiodocker.Docker(url=url, timeout=aiohttp.ClientTimeout(total=60, connect=10))
        )
        self._owns_client = docker is None
        self.image = image
        self.ceiling = ceiling
        self.python = python
        self.warm_pool = warm_pool
        self.warm_max_runs = warm_max_runs
        self.warm_idle_per_tenant = warm_idle_per_tenant
        self.warm_max_total = warm_max_total
        self.warm_ttl_seconds = warm_ttl_seconds
        self.instance = uuid.uuid4().hex[:12]
        self._known_images: set[str] = set()
        self._idle: dict[tuple[object, ...], list[_Warm]] = {}
        self._busy: set[_Warm] = set()
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    async def open(cls, docker: aiodocker.Docker | None = None, **kwargs: Any) -> DockerSandbox:
        sandbox = cls(docker, **kwargs)
        try:
            await sandbox.start()
        except BaseException:
            await sandbox.close()
            raise
        return sandbox

    @property
    def docker(self) -> aiodocker.Docker:
        return self._docker

    async def start(self, *, reap: bool = True) -> None:
        """Ping the engine, require the default image, remove orphaned containers."""
        try:
            await self._docker.version()
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            raise NotConfigured(f"no Docker engine answers at {self._docker.docker_host}: {exc}")
        await ensure_image(self._docker, self.image)
        self._known_images.add(self.image)
        if reap:
            removed = await self.reap_orphans()
            if removed:
                log.info("sandbox.docker.reaped", extra={"containers": removed})

    # -- public API -------------------------------------------------------------------

    async def run(self, request: SandboxRequest) -> SandboxResult:
        if self._closed:
            raise NotConfigured("the Docker sandbox is closed")
        request = replace(request, limits=request.limits.clamp(self.ceiling))
        image = request.image or self.image
        if image not in self._known_images:
            await ensure_image(self._docker, image)
            self._known_images.add(image)
        if request.kind == "python" and self.warm_pool:
            return await self._run_warm(request, image)
        return await self._run_cold(request, image)

    async def reap_orphans(self, *, everything: bool = False) -> int:
        """Remove labelled containers whose expiry passed (a crashed process's leftovers;
        live runs of other processes sharing the engine are left alone), or every
        managed container when ``everything``. Returns how many were removed."""
        try:
            listed = await self._docker.containers.list(
                all="true", filters=json.dumps({"label": [f"{MANAGED_LABEL}=1"]})
            )
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("sandbox.docker.reap_failed: %s", exc)
            return 0
        ours = {w.container.id for w in self._busy} | {
            w.container.id for idle in self._idle.values() for w in idle
        }
        now = time.time()
        doomed: list[DockerContainer] = []
        for container in listed:
            labels = container._container.get("Labels") or {}
            try:
                expires = float(labels.get(EXPIRES_LABEL, "0"))
            except ValueError:
                expires = 0.0
            if everything or (expires < now and container.id not in ours):
                doomed.append(container)
        await asyncio.gather(*(self._remove(c) for c in doomed))
        return len(doomed)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            idle = [w for pool in self._idle.values() for w in pool]
            self._idle.clear()
        await asyncio.gather(*(self._remove(w.container) for w in idle))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        # safety net: whatever this instance created and somehow still exists
        with contextlib.suppress(DockerError, aiohttp.ClientError, OSError):
            leftovers = await self._docker.containers.list(
                all="true",
                filters=json.dumps({"label": [f"{INSTANCE_LABEL}={self.instance}"]}),
            )
            await asyncio.gather(*(self._remove(c) for c in leftovers))
        if self._owns_client:
            await self._docker.close()

    def warm_containers(self) -> int:
        return sum(len(v) for v in self._idle.values()) + len(self._busy)

    # -- containers ---------------------------------------------------------------------

    def _config(
        self, request: SandboxRequest, image: str, *, cmd: list[str], warm: bool
    ) -> dict[str, Any]:
        limits = request.limits
        lifetime = self.warm_ttl_seconds if warm else limits.timeout_seconds
        labels = {
            MANAGED_LABEL: "1",
            TENANT_LABEL: request.tenant_id,
            POOL_LABEL: "warm" if warm else "cold",
            INSTANCE_LABEL: self.instance,
            EXPIRES_LABEL: str(int(time.time() + lifetime + _COLD_EXPIRY_GRACE)),
        }
        if not warm:
            labels[EXECUTION_LABEL] = request.execution_id
        return {
            "Image": image,
            "Entrypoint": [],
            "Cmd": cmd,
            "User": SANDBOX_USER,
            "WorkingDir": "/tmp",
            "Env": _base_env(request),
            "Labels": labels,
            "Hostname": "sandbox",
            "NetworkDisabled": True,
            "AttachStdin": not warm,
            "AttachStdout": not warm,
            "AttachStderr": not warm,
            "OpenStdin": not warm,
            "StdinOnce": not warm,
            "Tty": False,
            "StopTimeout": 1,
            "HostConfig": host_config(limits),
        }

    def _container_name(self, request: SandboxRequest, warm: bool) -> str:
        kind = "warm" if warm else request.execution_id[:12]
        return f"crewgraph-{request.tenant_id[:40]}-{kind}-{secrets.token_hex(3)}"

    async def _create(self, config: dict[str, Any], name: str, image: str) -> DockerContainer:
        try:
            return await self._docker.containers.create(config, name=name)
        except DockerError as exc:
            if exc.status == 404:
                self._known_images.discard(image)
                raise NotConfigured(
                    f"sandbox image {image!r} is not in the Docker engine; {build_hint(image)}"
                ) from None
            raise NotConfigured(f"cannot create a sandbox container: {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise NotConfigured(f"the Docker engine does not answer: {exc}") from None

    async def _remove(self, container: DockerContainer) -> None:
        async def remove() -> None:
            try:
                await container.delete(force=True)
            except DockerError as exc:
                if exc.status not in (404, 409):  # gone, or removal already in progress
                    log.warning("sandbox.docker.remove_failed %s: %s", container.id, exc)
            except (aiohttp.ClientError, OSError) as exc:
                log.warning("sandbox.docker.remove_failed %s: %s", container.id, exc)

        await asyncio.shield(remove())

    def _remove_later(self, container: DockerContainer) -> None:
        task = asyncio.get_running_loop().create_task(self._remove(container))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _kill(self, container: DockerContainer) -> None:
        with contextlib.suppress(DockerError, aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(_KILL_TIMEOUT):  # removal (always next) is the backstop
                await container.kill(signal="SIGKILL")

    # -- cold runs ----------------------------------------------------------------------

    async def _run_cold(self, request: SandboxRequest, image: str) -> SandboxResult:
        limits = request.limits
        argv = python_argv(self.python) if request.kind == "python" else list(request.command)
        config = self._config(request, image, cmd=argv, warm=False)
        collector = OutputCollector(framed=request.kind == "python", limit=limits.output_bytes)
        loop = asyncio.get_running_loop()
        container = await self._create(config, self._container_name(request, False), image)
        clock = [loop.time(), loop.time()]  # started, ended
        outcome: Outcome = "eof"
        exit_code: int | None = None
        oom = False
        error: str | None = None
        try:
            # a hard cap on everything, in case the engine stops answering mid-run
            async with asyncio.timeout(limits.timeout_seconds + _ENGINE_SLACK):
                outcome, exit_code, oom = await self._cold_steps(
                    request, container, collector, clock
                )
        except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"docker: {getattr(exc, 'message', None) or exc or type(exc).__name__}"
            clock[1] = loop.time()
            await self._kill(container)
        finally:
            await self._remove(container)
        return build_result(
            request,
            collector,
            backend=self.name,
            exit_code=exit_code,
            duration_ms=int((clock[1] - clock[0]) * 1000),
            timed_out=outcome == "timeout",
            oom_killed=oom and outcome != "timeout",
            error=error,
        )

    async def _cold_steps(
        self,
        request: SandboxRequest,
        container: DockerContainer,
        collector: OutputCollector,
        clock: list[float],
    ) -> tuple[Outcome, int | None, bool]:
        loop = asyncio.get_running_loop()
        stream = container.attach(stdin=True, stdout=True, stderr=True)
        async with stream:  # attached before start: no output can be missed
            await container.start()
            clock[0] = loop.time()
            await stream.write_in(request_line(request))
            _write_eof(stream)
            outcome = await _pump(
                stream,
                collector,
                clock[0] + request.limits.timeout_seconds,
                lambda: self._kill(container),
            )
        clock[1] = loop.time()
        waited = await container.wait(timeout=KILL_GRACE_SECONDS + 10.0)
        exit_code: int | None = waited.get("StatusCode")
        state = (await container.show()).get("State") or {}
        if isinstance(state.get("ExitCode"), int):
            exit_code = state["ExitCode"]
        return outcome, exit_code, bool(state.get("OOMKilled"))

    # -- warm pool ----------------------------------------------------------------------

    @staticmethod
    def _pool_key(request: SandboxRequest, image: str) -> tuple[object, ...]:
        lim = request.limits
        return (request.tenant_id, image, lim.memory_mb, lim.cpu_fraction, lim.pids, lim.tmpfs_mb)

    async def _checkout(self, request: SandboxRequest, image: str) -> _Warm:
        key = self._pool_key(request, image)
        async with self._lock:
            idle = self._idle.get(key) or []
            while idle:
                warm = idle.pop()
                if time.monotonic() - warm.created < self.warm_ttl_seconds:
                    self._busy.add(warm)
                    return warm
                self._remove_later(warm.container)
        config = self._config(request, image, cmd=["sleep", "infinity"], warm=True)
        container = await self._create(config, self._container_name(request, True), image)
        try:
            await container.start()
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            await self._remove(container)
            raise NotConfigured(f"cannot start a warm sandbox container: {exc}") from None
        warm = _Warm(container=container, key=key)
        self._busy.add(warm)
        return warm

    async def _checkin(self, warm: _Warm, healthy: bool) -> None:
        self._busy.discard(warm)
        warm.runs += 1
        fresh = time.monotonic() - warm.created < self.warm_ttl_seconds
        if healthy and fresh and not self._closed and warm.runs < self.warm_max_runs:
            async with self._lock:
                idle = self._idle.setdefault(warm.key, [])
                total_idle = sum(len(v) for v in self._idle.values())
                if len(idle) < self.warm_idle_per_tenant and total_idle < self.warm_max_total:
                    idle.append(warm)
                    return
        self._remove_later(warm.container)

    async def _run_warm(self, request: SandboxRequest, image: str) -> SandboxResult:
        limits = request.limits
        warm = await self._checkout(request, image)
        loop = asyncio.get_running_loop()
        collector = OutputCollector(framed=True, limit=limits.output_bytes)
        clock = [loop.time(), loop.time()]  # started, ended
        outcome: Outcome = "eof"
        exit_code: int | None = None
        error: str | None = None
        healthy = False
        try:  # whatever happens (cancellation included) the container is checked in
            try:
                async with asyncio.timeout(limits.timeout_seconds + _ENGINE_SLACK):
                    outcome, exit_code = await self._warm_steps(request, warm, collector, clock)
            except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = f"docker: {getattr(exc, 'message', None) or exc or type(exc).__name__}"
                clock[1] = loop.time()
            elapsed = clock[1] - clock[0]
            killed = exit_code == 137 or (isinstance(exit_code, int) and exit_code < 0)
            # `timeout -s KILL` ends a run at its limit with 137 (the host deadline is a backstop)
            timed_out = outcome == "timeout" or (
                outcome == "eof" and killed and elapsed >= limits.timeout_seconds - 0.05
            )
            result = build_result(
                request,
                collector,
                backend=self.name,
                exit_code=exit_code,
                duration_ms=int(elapsed * 1000),
                timed_out=timed_out,
                oom_killed=killed and not timed_out and outcome == "eof",
                error=error,
            )
            left = leftover_processes(collector)
            healthy = result.ok and left is not None and left <= _WARM_BASELINE_PROCESSES
            return result
        finally:
            await self._checkin(warm, healthy)

    async def _warm_steps(
        self,
        request: SandboxRequest,
        warm: _Warm,
        collector: OutputCollector,
        clock: list[float],
    ) -> tuple[Outcome, int | None]:
        loop = asyncio.get_running_loop()
        limits = request.limits
        cmd = ["timeout", "-s", "KILL", f"{limits.timeout_seconds:g}", *python_argv(self.python)]
        execution = await warm.container.exec(
            cmd,
            stdin=True,
            stdout=True,
            stderr=True,
            user=SANDBOX_USER,
            environment=_base_env(request),
            workdir="/tmp",
        )
        stream = execution.start(detach=False)
        async with stream:
            clock[0] = loop.time()
            await stream.write_in(request_line(request, wipe_tmp=True))
            _write_eof(stream)
            outcome = await _pump(
                stream,
                collector,
                clock[0] + limits.timeout_seconds + KILL_GRACE_SECONDS,
                lambda: self._kill(warm.container),
            )
            clock[1] = loop.time()
        info = await execution.inspect()
        exit_code = info.get("ExitCode")
        return outcome, exit_code if isinstance(exit_code, int) else None
