"""MongoDB: one pymongo `AsyncMongoClient` per process and the beanie documents bound to
its database. Owners of documents (chat messages, audit entries) hand their classes to
the store when it is built (server/bootstrap.py); nothing connects until first use, so a
deployment whose MongoDB is down still serves everything that does not need it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from beanie import Document, init_beanie
from beanie.exceptions import CollectionWasNotInitialized
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure


class MongoUnavailable(Exception):
    """MongoDB did not answer in time (down, unreachable, or not configured)."""


class MongoStore:
    """The process's MongoDB access. `ready()` binds the registered beanie documents to
    this database (creating their indexes) on first use; call it before using them."""

    def __init__(
        self,
        url: str | None,
        database: str = "crewgraph",
        *,
        timeout: float = 3.0,
        socket_timeout: float = 20.0,
        documents: Sequence[type[Document]] = (),
    ) -> None:
        self.url = url
        self.database_name = database
        self.timeout = timeout
        self.socket_timeout = socket_timeout
        self.documents: list[type[Document]] = []
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._bound = False
        self._lock = asyncio.Lock()
        self.register(*documents)

    @property
    def configured(self) -> bool:
        return self.url is not None

    @property
    def where(self) -> str:
        """The server(s) for messages, without credentials."""
        if not self.url:
            return "(not configured)"
        rest = self.url.split("://", 1)[-1]
        return rest.rsplit("@", 1)[-1].split("/", 1)[0].split("?", 1)[0]

    def register(self, *documents: type[Document]) -> None:
        """Add document classes; they are bound at the next `ready()`."""
        for document in documents:
            if document not in self.documents:
                self.documents.append(document)
                self._bound = False

    @property
    def client(self) -> AsyncMongoClient[dict[str, Any]]:
        if self.url is None:
            raise MongoUnavailable("MongoDB is not configured: set MONGODB_URL")
        if self._client is None:
            ms = int(self.timeout * 1000)
            self._client = AsyncMongoClient(
                self.url,
                serverSelectionTimeoutMS=ms,
                connectTimeoutMS=ms,
                socketTimeoutMS=int(self.socket_timeout * 1000),
                tz_aware=True,
                uuidRepresentation="standard",
                appname="crewgraph",
            )
        return self._client

    @property
    def db(self) -> AsyncDatabase[dict[str, Any]]:
        # One object for the client's life: `ready()` tells by identity whether the
        # documents are bound to it.
        if self._db is None or self._client is None:
            self._db = self.client[self.database_name]
        return self._db

    @contextmanager
    def errors(self, doing: str = "talking to it") -> Iterator[None]:
        """Turn "no server answered" into `MongoUnavailable` with a readable message;
        other errors (duplicate keys, bad queries) pass through."""
        try:
            yield
        except ConnectionFailure as exc:
            raise MongoUnavailable(
                f"MongoDB at {self.where} is unavailable ({doing}): {_short(exc)}"
            ) from exc

    def _documents_bound(self) -> bool:
        if not self._bound or self._client is None:
            return False
        db = self.db
        for document in self.documents:
            try:
                if document.get_settings().pymongo_db is not db:
                    return False  # another store in this process bound it since
            except CollectionWasNotInitialized:
                return False
        return True

    async def ready(self) -> None:
        """Bind the registered documents to this database and create their indexes: once,
        and again after a failure or when another store in this process rebound them."""
        if self._documents_bound():
            return
        async with self._lock:
            if self._documents_bound():
                return
            self._bound = False
            with self.errors("binding documents"):
                await init_beanie(database=self.db, document_models=list(self.documents))
            self._bound = True

    async def ping(self) -> None:
        with self.errors("ping"):
            await self.client.admin.command("ping")

    async def aclose(self) -> None:
        client, self._client = self._client, None
        self._db = None
        self._bound = False
        if client is not None:
            await client.close()


def _short(exc: BaseException, limit: int = 300) -> str:
    """pymongo's selection errors carry the whole topology description; the first line
    says what happened."""
    text = str(exc).split("\n", 1)[0]
    text = text.split(", Timeout:", 1)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
