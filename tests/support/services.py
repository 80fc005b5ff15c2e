"""Real PostgreSQL, Redis and MongoDB for tests: the machine's (or the URLs given) when
they answer, else embedded."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import asyncpg

from persistence.embedded import (
    EmbeddedMongo,
    EmbeddedServices,
    start_postgres,
    start_redis,
    tcp_answers,
)


def _service(env: str, what: str, port: int, local: str, embedded: Callable[[], str]) -> str:
    """The URL in `env`, else the machine's server on `port`, else an embedded one."""
    url = os.environ.get(env)
    if url:
        return url
    if tcp_answers("127.0.0.1", port):
        return local
    print(f"\n[crewgraph tests] no {what} at 127.0.0.1:{port}: starting an embedded one")
    return embedded()


class TestServices:
    def __init__(self) -> None:
        self.embedded = EmbeddedServices()
        self._tmp: str | None = None
        self.admin_dsn = ""
        self.database = f"crewgraph_test_{secrets.token_hex(4)}"
        self.redis_url = ""
        # MongoDB: CREWGRAPH_TEST_MONGODB_URL or MONGODB_URL, else an embedded nx-27017
        # (`mongo_server`, which outage tests stop and start). Each run has its database.
        self.mongo_url = ""
        self.mongo_database = self.database
        self.mongo_server: EmbeddedMongo | None = None

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="crewgraph-test-")
        return Path(self._tmp)

    def start(self) -> None:
        self.admin_dsn = _service(
            "CREWGRAPH_TEST_DATABASE_URL",
            "PostgreSQL",
            5432,
            "postgresql://postgres@127.0.0.1:5432/postgres",
            lambda: start_postgres(self._tmpdir(), self.embedded, database="postgres").replace(
                "postgresql+asyncpg://", "postgresql://", 1
            ),
        )
        self.redis_url = _service(
            "CREWGRAPH_TEST_REDIS_URL",
            "Redis",
            6379,
            "redis://127.0.0.1:6379/0",
            lambda: start_redis(self._tmpdir() / "redis", self.embedded),
        )
        external = os.environ.get("CREWGRAPH_TEST_MONGODB_URL") or os.environ.get("MONGODB_URL")
        if external:
            self.mongo_url = external
        else:
            self.mongo_server = EmbeddedMongo(self._tmpdir() / "mongo")
            self.mongo_url = self.mongo_server.start()

    @property
    def database_dsn(self) -> str:
        base, _, query = self.admin_dsn.partition("?")
        base = base.rsplit("/", 1)[0] + "/" + self.database
        return base + ("?" + query if query else "")

    @property
    def database_url(self) -> str:
        return self.database_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    async def create_database(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.database}"')

    async def drop_database(self) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    def drop_mongo_database(self) -> None:
        import pymongo

        if self.mongo_server is not None and not self.mongo_server.running:
            self.mongo_server.start()  # a test stopped it and failed before restarting
        client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
            self.mongo_url, serverSelectionTimeoutMS=5000
        )
        try:
            client.drop_database(self.mongo_database)
        finally:
            client.close()

    def stop(self) -> None:
        if self.mongo_url:
            try:
                self.drop_mongo_database()
            except Exception as exc:  # the run's data is throwaway; say so, do not fail
                print(f"\n[crewgraph tests] could not drop {self.mongo_database}: {exc}")
        if self.mongo_server is not None:
            self.mongo_server.stop()
        self.embedded.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not tcp_answers("127.0.0.1", port, 0.2):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"nothing listens on {port}")
        await asyncio.sleep(0.05)
