"""The audit log in MongoDB: a beanie document, and a buffer written in the background.

`put` only appends to a bounded in-process buffer; a background task writes batches with
`insert_many` and, while MongoDB is down, keeps them and retries with backoff. Entry ids
are made before the first attempt, so a batch retried after a lost reply is not stored
twice (duplicate keys count as written). Only a full buffer loses entries (logged).
Retention is a TTL index on `at`, recreated when the setting changes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from datetime import datetime
from typing import Any

import bson
import pymongo
from beanie import Document, SortDirection
from pydantic import Field
from pymongo.errors import BulkWriteError, OperationFailure

from domain.audit import AuditEntry, AuditUnavailable
from domain.ports import Page
from persistence.mongo import MongoStore, MongoUnavailable
from persistence.pagination import decode_cursor, encode_cursor

log = logging.getLogger("crewgraph.audit")

COLLECTION = "audit_entries"
_RETENTION_INDEX = "audit_retention"
_DUPLICATE_KEY = 11000
_INDEX_OPTIONS_CONFLICT = (85, 86)


class AuditEntryDocument(Document):
    """One entry; `_id` is the entry id the domain made."""

    id: str  # type: ignore[assignment]
    tenant_id: str
    at: datetime
    action: str
    actor: str | None = None
    target: str | None = None
    ip: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    class Settings:
        name = COLLECTION
        # `_id` breaks ties in the sort but stays out of the keys (nx-27017 cannot index it).
        indexes = [
            pymongo.IndexModel(
                [("tenant_id", pymongo.ASCENDING), ("at", pymongo.DESCENDING)],
                name="audit_tenant_at",
            ),
            pymongo.IndexModel(
                [
                    ("tenant_id", pymongo.ASCENDING),
                    ("action", pymongo.ASCENDING),
                    ("at", pymongo.DESCENDING),
                ],
                name="audit_tenant_action_at",
            ),
        ]


def _document(entry: AuditEntry) -> dict[str, Any]:
    return {
        "_id": entry.id,
        "tenant_id": entry.tenant_id,
        "at": entry.at,
        "action": entry.action,
        "actor": entry.actor,
        "target": entry.target,
        "ip": entry.ip,
        "request_id": entry.request_id,
        "data": dict(entry.data),
    }


def _encodable(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The documents BSON can hold; one it cannot is dropped (and logged) here, since
    retrying it would hold every later entry behind it for ever."""
    out: list[dict[str, Any]] = []
    for doc in documents:
        try:
            bson.encode(doc)
        except (bson.errors.InvalidDocument, OverflowError, ValueError) as exc:
            log.error("audit entry %s (%s) cannot be stored: %s", doc["_id"], doc["action"], exc)
            continue
        out.append(doc)
    return out


def _entry(doc: AuditEntryDocument) -> AuditEntry:
    return AuditEntry(
        id=doc.id,
        tenant_id=doc.tenant_id,
        at=doc.at,
        action=doc.action,
        actor=doc.actor,
        target=doc.target,
        ip=doc.ip,
        request_id=doc.request_id,
        data=doc.data,
    )


class MongoAuditLog:
    """`AuditSink` (buffered writes) and `AuditStore` (reads) over one `MongoStore`."""

    def __init__(
        self,
        store: MongoStore,
        *,
        retention_days: float = 90,
        capacity: int = 10_000,
        batch_size: int = 500,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.store = store
        self.retention_seconds = max(1, int(retention_days * 86400))
        self.capacity = capacity
        self.batch_size = batch_size
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.dropped = 0  # entries lost to a full buffer, since start
        self._pending: deque[AuditEntry] = deque()
        self._wake: asyncio.Event | None = None
        self._kick: asyncio.Event | None = None  # ends a retry pause (flush, close)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._overflowing = False
        self._retention_ready = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- writes ----------------------------------------------------------------------

    def put(self, entry: AuditEntry) -> None:
        if len(self._pending) >= self.capacity:
            self.dropped += 1
            if not self._overflowing:  # once per overflow, not once per entry
                self._overflowing = True
                log.warning(
                    "audit buffer full (%d entries, MongoDB not keeping up): dropping entries",
                    self.capacity,
                )
            return
        self._pending.append(entry)
        self._ensure_task()
        if self._wake is not None:
            self._wake.set()

    def _ensure_task(self) -> None:
        if self._closing or (self._task is not None and not self._task.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): written by the next start
            return
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._task = loop.create_task(self._run(), name="audit-log-writer")

    async def start(self) -> None:
        """Start the writer now (it also starts with the first entry)."""
        self._closing = False
        self._ensure_task()

    async def _run(self) -> None:
        assert self._wake is not None
        delay = self.retry_initial
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._write_batch()
                delay = self.retry_initial
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "audit entries not written yet (%d pending), retrying in %.1f s: %s",
                    len(self._pending),
                    delay,
                    exc,
                )
                await self._pause(delay)
                delay = min(delay * 2, self.retry_max)

    async def _pause(self, seconds: float) -> None:
        assert self._kick is not None
        self._kick.clear()
        try:
            await asyncio.wait_for(self._kick.wait(), seconds)
        except TimeoutError:
            pass

    async def _write_batch(self) -> None:
        batch = list(itertools.islice(self._pending, self.batch_size))
        await self._prepare()
        collection = self.store.db[COLLECTION]
        documents = _encodable([_document(e) for e in batch])
        with self.store.errors("writing audit entries"):
            try:
                if documents:
                    await collection.insert_many(documents, ordered=False)
            except BulkWriteError as exc:
                failed = [
                    e for e in exc.details.get("writeErrors", []) if e.get("code") != _DUPLICATE_KEY
                ]
                if failed:  # the entry itself is refused: retrying would not help
                    log.error("audit entries refused by MongoDB: %s", failed[:3])
        for _ in batch:
            self._pending.popleft()
        if self._overflowing and len(self._pending) < self.capacity // 2:
            self._overflowing = False

    async def _prepare(self) -> None:
        await self.store.ready()
        if self._retention_ready:
            return
        collection = self.store.db[COLLECTION]
        keys = [("at", pymongo.ASCENDING)]
        with self.store.errors("creating the retention index"):
            try:
                await collection.create_index(
                    keys, name=_RETENTION_INDEX, expireAfterSeconds=self.retention_seconds
                )
            except OperationFailure as exc:  # made with another retention before
                if exc.code not in _INDEX_OPTIONS_CONFLICT:
                    raise
                await collection.drop_index(_RETENTION_INDEX)
                await collection.create_index(
                    keys, name=_RETENTION_INDEX, expireAfterSeconds=self.retention_seconds
                )
        self._retention_ready = True

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every buffered entry is written (True) or `timeout` passes."""
        self._ensure_task()
        deadline = asyncio.get_running_loop().time() + timeout
        kicked = False
        while self._pending:
            if self._wake is not None:
                self._wake.set()
            if self._kick is not None and not kicked:
                self._kick.set()  # retry now rather than after the backoff pause
                kicked = True
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def aclose(self, grace: float = 3.0) -> None:
        """Write what is buffered (for up to `grace` seconds), then stop the writer."""
        self._closing = True
        task, self._task = self._task, None
        if task is None:
            if self._pending:
                log.warning("audit log closed with %d unwritten entries", len(self._pending))
            return
        if self._wake is not None:
            self._wake.set()
        if self._kick is not None:
            self._kick.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._pending:
            log.warning(
                "audit log closed with %d unwritten entries (MongoDB unavailable)",
                len(self._pending),
            )

    # -- reads -----------------------------------------------------------------------

    async def page(
        self, tenant_id: str, first: int, after: str | None, action: str | None
    ) -> Page[AuditEntry]:
        # Every condition under one explicit `$and`: nx-27017 drops the fields beside a
        # top-level `$or` (the tenant filter with them), which MongoDB does not.
        conditions: list[dict[str, Any]] = [{"tenant_id": tenant_id}]
        if action:
            conditions.append({"action": action})
        if after:
            at, ident = decode_cursor(after)
            conditions.append(
                {"$or": [{"at": {"$lt": at}}, {"$and": [{"at": at}, {"_id": {"$lt": ident}}]}]}
            )
        query = {"$and": conditions}
        try:
            await self.store.ready()
            with self.store.errors("reading the audit log"):
                docs = (
                    await AuditEntryDocument.find(query)
                    .sort([("at", SortDirection.DESCENDING), ("_id", SortDirection.DESCENDING)])
                    .limit(first + 1)
                    .to_list()
                )
        except MongoUnavailable as exc:
            log.warning("audit log read failed: %s", exc)
            raise AuditUnavailable(
                "the audit log is unavailable right now (its store does not answer); "
                "try again shortly"
            ) from None
        items = [(_entry(d), encode_cursor(d.at, d.id)) for d in docs[:first]]
        return Page(items=items, has_next_page=len(docs) > first)
