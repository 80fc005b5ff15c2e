"""The MongoDB audit log adapter against the real store: paging with cursors across
tenants, the write buffer (retries, duplicates, overflow) and the retention index."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.audit import AuditEntry, AuditService, entry_id
from domain.errors import BadUserInput
from persistence.audit import COLLECTION, AuditEntryDocument, MongoAuditLog
from persistence.mongo import MongoStore

# One instant for many entries (recent: older ones fall to the retention index).
_NOW = datetime.now(UTC)
FIXED = _NOW.replace(microsecond=_NOW.microsecond // 1000 * 1000)


@pytest.fixture
async def store(settings: Any) -> AsyncIterator[MongoStore]:
    s = MongoStore(
        settings.mongodb_url,
        settings.mongodb_database,
        timeout=settings.mongodb_timeout_seconds,
        documents=[AuditEntryDocument],
    )
    yield s
    await s.aclose()


@pytest.fixture
async def log(store: MongoStore) -> AsyncIterator[MongoAuditLog]:
    audit_log = MongoAuditLog(store, retention_days=30, retry_initial=0.05, retry_max=0.2)
    yield audit_log
    await audit_log.aclose()


async def all_pages(
    log: MongoAuditLog, tenant: str, action: str | None = None, first: int = 2
) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    after = None
    while True:
        page = await log.page(tenant, first, after, action)
        out += [e for e, _ in page.items]
        if not page.has_next_page:
            return out
        after = page.end_cursor


async def test_cursor_pages_stay_in_the_tenant(log: MongoAuditLog) -> None:
    # Two tenants' entries interleaved within the same millisecond: the keyset cursor
    # (at, id) must page through one tenant's only, newest first, none twice.
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    service = AuditService(log, log, clock=lambda: FIXED)
    actions = ["tool.created", "auth.login", "tool.created", "user.created"] * 3
    for action in actions:
        service.record(mine, action, actor="me")
        service.record(theirs, action, actor="them")
    assert await log.flush(10)

    for action in (None, "tool.created"):
        entries = await all_pages(log, mine, action)
        wanted = [a for a in actions if action is None or a == action]
        assert [e.action for e in entries] == list(reversed(wanted))
        assert {e.tenant_id for e in entries} == {mine}
        assert {e.actor for e in entries} == {"me"}
        ids = [e.id for e in entries]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
        assert all(e.at == FIXED for e in entries)

    with pytest.raises(BadUserInput):
        await log.page(mine, 2, "garbage", None)


async def test_a_retried_batch_is_not_stored_twice(log: MongoAuditLog, store: MongoStore) -> None:
    tenant = uuid.uuid4().hex
    entry = AuditEntry(entry_id(FIXED), tenant, FIXED, "tool.deleted", actor="me")
    log.put(entry)
    assert await log.flush(10)
    # As if the first write's reply was lost: the same entries come again with a new one.
    log.put(entry)
    log.put(AuditEntry(entry_id(FIXED), tenant, FIXED, "tool.created", actor="me"))
    assert await log.flush(10)
    stored = await store.db[COLLECTION].count_documents({"tenant_id": tenant})
    assert stored == 2


async def test_a_full_buffer_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing answers here, so everything stays buffered until the cap.
    log = MongoAuditLog(MongoStore(None), capacity=3, retry_initial=0.05, retry_max=0.05)
    service = AuditService(log, log)
    with caplog.at_level(logging.WARNING, logger="crewgraph.audit"):
        for _ in range(5):
            service.record("t", "auth.login")  # never raises, never waits
        await asyncio.sleep(0.1)
    assert log.pending == 3 and log.dropped == 2
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1  # once per overflow, not per entry
    await log.aclose(grace=0.1)


async def test_retention_is_a_ttl_index(log: MongoAuditLog, store: MongoStore) -> None:
    log.put(AuditEntry(entry_id(FIXED), uuid.uuid4().hex, FIXED, "auth.login"))
    assert await log.flush(10)
    ttl = [
        index
        async for index in await store.db[COLLECTION].list_indexes()
        if "expireAfterSeconds" in index
    ]
    assert [dict(i["key"]) for i in ttl] == [{"at": 1}]
    assert ttl[0]["expireAfterSeconds"] == 30 * 86400

    # A changed setting replaces the index on the next start.
    changed = MongoAuditLog(store, retention_days=7)
    changed.put(AuditEntry(entry_id(FIXED), uuid.uuid4().hex, FIXED, "auth.login"))
    assert await changed.flush(10)
    await changed.aclose()
    ttl = [
        index
        async for index in await store.db[COLLECTION].list_indexes()
        if "expireAfterSeconds" in index
    ]
    assert [i["expireAfterSeconds"] for i in ttl] == [7 * 86400]
