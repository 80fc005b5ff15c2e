"""Docker backend (aiodocker): every run in a locked-down container.

Each container: no network (NetworkMode none), read-only root, a small noexec tmpfs on
/tmp, memory with MemorySwap = Memory, NanoCpus, PidsLimit, CapDrop ALL,
no-new-privileges, uid/gid 65534, an init process, no log driver (output is read from
the attach stream, which is opened BEFORE the container starts, so nothing is lost),
labels ``crewgraph.managed=1`` + tenant + expiry. The host enforces the wall-clock
timeout (kill) and the output cap (kill + truncated), and always removes the container.

Optional warm pool (``warm_pool=True``, python runs only): most of a short run's cost is
creating and starting its container, so after a run the backend creates, attaches and
starts the next container of the same tenant, image, limits and environment in the
background, where the runner blocks on its request line. Such a container has run
nothing yet; it serves exactly one run and is then removed like a cold one, so nothing
is shared between runs, let alone tenants. Idle ones older than ``warm_ttl_seconds`` are
removed instead of used, and so are ones that cannot take a run any more (killed, gone,
or their attach stream closed: something outside ended them while they waited); the run
then starts its own container as it would without a pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.stream import Stream

from domain.errors import NotConfigured
from domain.sandbox import SandboxLimits, SandboxRequest, SandboxResult
from sandbox.images import DEFAULT_IMAGE, build_hint, ensure_image
from sandbox.limits import DEFAULT_MAX_LIMITS, KILL_GRACE_SECONDS
from sandbox.output import OutputCollector, build_result, python_argv, request_line

log = logging.getLogger(__name__)

MANAGED_LABEL = "crewgraph.managed"
TENANT_LABEL = "crewgraph.tenant"
EXECUTION_LABEL = "crewgraph.execution"
EXPIRES_LABEL = "crewgraph.expires"
POOL_LABEL = "crewgraph.pool"
INSTANCE_LABEL = "crewgraph.instance"
SANDBOX_USER = "65534:65534"
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


def _stdin_open(stream: Stream) -> bool:
    """Whether the hijacked connection to the container is still there: the engine drops
    it when the container exits, and then nothing can hand the process its request."""
    resp = stream._resp
    conn = resp.connection if resp is not None else None
    transport = conn.transport if conn is not None else None
    return not stream._closed and transport is not None and not transport.is_closing()


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
class _Started:
    """A started container with its attach stream open, not yet given its request."""

    container: DockerContainer
    stream: Stream
    exits: contextlib.AsyncExitStack
    created: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.created


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
        warm_idle_per_tenant: int = 1,
        warm_max_total: int = 16,
        warm_ttl_seconds: float = 300.0,
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
        self.warm_idle_per_tenant = warm_idle_per_tenant
        self.warm_max_total = warm_max_total
        self.warm_ttl_seconds = warm_ttl_seconds
        self.instance = uuid.uuid4().hex[:12]
        self._known_images: set[str] = set()
        self._idle: dict[tuple[object, ...], list[_Started]] = {}
        self._refilling: set[tuple[object, ...]] = set()
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
        started: _Started | None = None
        if request.kind == "python" and self.warm_pool:
            key = self._pool_key(request, image)
            started = await self._take_usable(key)
            self._refill_soon(key, request, image)
        return await self._run(
            request, image, started, warm=self.warm_pool and request.kind == "python"
        )

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
        ours = self.waiting_ids()
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
        idle = [w for pool in self._idle.values() for w in pool]
        self._idle.clear()
        await asyncio.gather(*(self._discard(w) for w in idle))
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
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
        """Pre-started containers waiting for a run."""
        return len(self.waiting_ids())

    def waiting_ids(self) -> set[str]:
        """Ids of the pre-started containers waiting for a run (they have run nothing)."""
        return {w.container.id for idle in self._idle.values() for w in idle}

    # -- containers ---------------------------------------------------------------------

    def _config(
        self, request: SandboxRequest, image: str, *, cmd: list[str], warm: bool
    ) -> dict[str, Any]:
        limits = request.limits
        # a warm container may wait its TTL, then run: other processes' reapers leave it be
        lifetime = limits.timeout_seconds + (self.warm_ttl_seconds if warm else 0.0)
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
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": True,
            "StdinOnce": True,
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

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _kill(self, container: DockerContainer) -> None:
        with contextlib.suppress(DockerError, aiohttp.ClientError, OSError, TimeoutError):
            async with asyncio.timeout(_KILL_TIMEOUT):  # removal (always next) is the backstop
                await container.kill(signal="SIGKILL")

    # -- runs -------------------------------------------------------------------------

    async def _start(self, request: SandboxRequest, image: str, *, warm: bool) -> _Started:
        """Create the container, attach to it (before it starts: no output can be missed)
        and start it; its process then waits for its stdin."""
        argv = python_argv(self.python) if request.kind == "python" else list(request.command)
        config = self._config(request, image, cmd=argv, warm=warm)
        container = await self._create(config, self._container_name(request, warm), image)
        exits = contextlib.AsyncExitStack()
        try:
            stream = container.attach(stdin=True, stdout=True, stderr=True)
            # aiodocker's Stream is an async context manager without the typed protocol
            await exits.enter_async_context(cast(AbstractAsyncContextManager[Any], stream))
            await container.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await exits.aclose()
            await self._remove(container)
            raise
        return _Started(container, stream, exits)

    async def _run(
        self, request: SandboxRequest, image: str, started: _Started | None, *, warm: bool
    ) -> SandboxResult:
        limits = request.limits
        collector = OutputCollector(framed=request.kind == "python", limit=limits.output_bytes)
        loop = asyncio.get_running_loop()
        clock = [loop.time(), loop.time()]  # started, ended
        outcome: Outcome = "eof"
        exit_code: int | None = None
        oom = False
        error: str | None = None
        container: DockerContainer | None = None
        try:
            # a hard cap on everything, in case the engine stops answering mid-run
            async with asyncio.timeout(limits.timeout_seconds + _ENGINE_SLACK):
                if started is None:
                    started = await self._start(request, image, warm=False)
                container = started.container
                outcome, exit_code, oom = await self._steps(request, started, collector, clock)
        except (DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = f"docker: {getattr(exc, 'message', None) or exc or type(exc).__name__}"
            clock[1] = loop.time()
            if container is not None:
                await self._kill(container)
        finally:
            if started is not None and warm:
                # the result is known: the warm pool's caller does not wait for the removal
                self._in_background(self._discard(started))
            elif started is not None:
                await self._discard(started)
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

    async def _steps(
        self,
        request: SandboxRequest,
        started: _Started,
        collector: OutputCollector,
        clock: list[float],
    ) -> tuple[Outcome, int | None, bool]:
        loop = asyncio.get_running_loop()
        container, stream = started.container, started.stream
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

    # -- warm pool: pre-started containers ------------------------------------------------

    @staticmethod
    def _pool_key(request: SandboxRequest, image: str) -> tuple[object, ...]:
        # the environment is digested: tool environments may hold secrets
        env = hashlib.sha256(json.dumps(sorted(request.env.items())).encode()).hexdigest()
        return (request.tenant_id, image, request.limits, env)

    def _take(self, key: tuple[object, ...]) -> _Started | None:
        idle = self._idle.get(key) or []
        while idle:
            started = idle.pop()
            if started.age() < self.warm_ttl_seconds:
                return started
            self._in_background(self._discard(started))
        return None

    async def _take_usable(self, key: tuple[object, ...]) -> _Started | None:
        """A waiting container that can still take the run, or None (the run starts a
        cold one). Those that cannot are removed in the background."""
        while (started := self._take(key)) is not None:
            if await self._usable(started):
                return started
            log.warning("sandbox.docker.prestarted_dead %s: discarded", started.container.id)
            self._in_background(self._discard(started))
        return None

    @staticmethod
    async def _usable(started: _Started) -> bool:
        if not _stdin_open(started.stream):
            return False
        try:
            # one short engine round trip; the stream alone may not have seen the exit yet
            async with asyncio.timeout(_KILL_TIMEOUT):
                state = (await started.container.show()).get("State") or {}
        except (DockerError, aiohttp.ClientError, OSError, TimeoutError):
            return False
        return (
            state.get("Running") is True and not state.get("Paused") and not state.get("Restarting")
        )

    def _refill_soon(self, key: tuple[object, ...], request: SandboxRequest, image: str) -> None:
        idle = self._idle.get(key) or []
        total = sum(len(v) for v in self._idle.values()) + len(self._refilling)
        if (
            key in self._refilling
            or len(idle) >= self.warm_idle_per_tenant
            or total >= self.warm_max_total
        ):
            return
        self._refilling.add(key)
        template = replace(request, input={}, execution_id="warm")
        self._in_background(self._refill(key, template, image))

    async def _refill(self, key: tuple[object, ...], template: SandboxRequest, image: str) -> None:
        try:
            started = await self._start(template, image, warm=True)
        except (NotConfigured, DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("sandbox.docker.prestart_failed: %s", exc)
            return
        finally:
            self._refilling.discard(key)
        if self._closed:
            await self._discard(started)
            return
        self._idle.setdefault(key, []).append(started)

    async def _discard(self, started: _Started) -> None:
        with contextlib.suppress(Exception):
            await started.exits.aclose()
        await self._remove(started.container)
