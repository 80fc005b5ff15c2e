"""The MongoDB adapter against the real store (the embedded nx-27017, or MONGODB_URL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
from beanie import Document
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError

from persistence.embedded import EmbeddedServices, start_mongo, tcp_answers
from persistence.mongo import MongoStore, MongoUnavailable
from server.settings import Settings


class Probe(Document):
    """A throwaway document: (tenant, name) unique, like the real ones' tenant keys."""

    tenant: str
    name: str
    value: int = 0

    class Settings:
        name = "test_probes"
        indexes = [
            pymongo.IndexModel(
                [("tenant", pymongo.ASCENDING), ("name", pymongo.ASCENDING)], unique=True
            )
        ]


@pytest.fixture
async def store(settings: Any) -> AsyncIterator[MongoStore]:
    s = MongoStore(
        settings.mongodb_url,
        settings.mongodb_database,
        timeout=settings.mongodb_timeout_seconds,
        documents=[Probe],
    )
    yield s
    await s.aclose()


async def test_ping_and_round_trip(store: MongoStore) -> None:
    await store.ping()
    await store.ready()
    tenant = uuid.uuid4().hex
    for i, name in enumerate(["b", "a", "c"]):
        await Probe(tenant=tenant, name=name, value=i).insert()
    await Probe(tenant="someone-else", name="a").insert()

    found = await Probe.find(Probe.tenant == tenant).sort(+Probe.name).limit(2).to_list()
    assert [(p.name, p.value) for p in found] == [("a", 1), ("b", 0)]

    first = found[0]
    first.value = 42
    await first.save()
    again = await Probe.find_one(Probe.tenant == tenant, Probe.name == "a")
    assert again is not None and again.value == 42

    await Probe.find(Probe.tenant == tenant, Probe.name == "c").delete()
    names = {p.name for p in await Probe.find(Probe.tenant == tenant).to_list()}
    assert names == {"a", "b"}


async def test_unique_index_is_enforced(store: MongoStore) -> None:
    await store.ready()
    tenant = uuid.uuid4().hex
    await Probe(tenant=tenant, name="x").insert()
    with pytest.raises(DuplicateKeyError):
        await Probe(tenant=tenant, name="x").insert()
    await Probe(tenant=uuid.uuid4().hex, name="x").insert()  # another tenant: fine
    assert await Probe.find(Probe.tenant == tenant).count() == 1


async def test_outage_fails_fast_and_recovers(store: MongoStore, mongo_server: Any) -> None:
    await store.ready()
    tenant = uuid.uuid4().hex
    await Probe(tenant=tenant, name="before").insert()

    mongo_server.stop()
    started = time.monotonic()
    with pytest.raises(MongoUnavailable) as caught:
        with store.errors("saving a probe"):
            await Probe(tenant=tenant, name="during").insert()
    assert time.monotonic() - started < 3.0
    assert "unavailable" in str(caught.value) and store.where in str(caught.value)
    with pytest.raises(MongoUnavailable):
        await store.ping()

    mongo_server.start()
    await store.ping()
    await Probe(tenant=tenant, name="after").insert()
    names = sorted(p.name for p in await Probe.find(Probe.tenant == tenant).to_list())
    assert names == ["after", "before"]  # data kept across the restart, nothing half-written


async def test_unconfigured_store_says_so() -> None:
    s = MongoStore(None)
    assert not s.configured
    with pytest.raises(MongoUnavailable, match="MONGODB_URL"):
        await s.ping()


async def _ready_again(client: httpx.AsyncClient) -> httpx.Response:
    """/readyz until 200 (10 s): after a restart of MongoDB (this test's, or an earlier
    test's outage) the driver finds the server back on its next check, and a stale
    pooled connection may fail the first one."""
    for _ in range(50):
        if (answer := await client.get("/readyz")).status_code == 200:
            return answer
        await asyncio.sleep(0.2)
    raise AssertionError(f"not ready again: {answer.json()}")


async def test_readyz_reports_mongodb(server_url: str, mongo_server: Any) -> None:
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        ok = await _ready_again(client)
        assert ok.json()["checks"]["mongodb"] == "ok"

        mongo_server.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["mongodb"].startswith("error")
        assert body["checks"]["postgres"] == "ok"

        mongo_server.start()
        # Ready again within seconds, without a restart.
        assert (await _ready_again(client)).json()["checks"]["mongodb"] == "ok"


def test_mongodb_url_scheme_is_validated() -> None:
    with pytest.raises(ValidationError, match="mongodb:// or mongodb\\+srv://"):
        Settings(mongodb_url="http://127.0.0.1:27017")
    assert Settings(mongodb_url="mongodb+srv://db.example.com").mongodb_url


async def test_ready_binds_once_and_again_after_a_rebind(
    store: MongoStore, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import persistence.mongo as mongo_module

    calls: list[object] = []
    real = mongo_module.init_beanie

    async def counting(**kwargs: Any) -> None:
        calls.append(kwargs["database"])
        await real(**kwargs)

    monkeypatch.setattr(mongo_module, "init_beanie", counting)
    for _ in range(3):
        await store.ready()
    assert len(calls) == 1  # cheap to call before every use

    other = MongoStore(settings.mongodb_url, settings.mongodb_database, documents=[Probe])
    try:
        await other.ready()  # binds Probe to its own client
        await store.ready()  # ours again, so our client is the one used
        assert len(calls) == 3 and calls[-1] is store.db
        await Probe(tenant=uuid.uuid4().hex, name="rebound").insert()
    finally:
        await other.aclose()


def test_one_embedded_server_per_data_dir(tmp_path: Path) -> None:
    # `make run` beside `crewgraph worker`: the second process uses the first one's server.
    first, second = EmbeddedServices(), EmbeddedServices()
    try:
        url = start_mongo(tmp_path, first)
        assert start_mongo(tmp_path, second) == url
        assert second._handles == []  # not its own: it does not stop it
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=2000
        )
        client.admin.command("ping")
        client.close()
    finally:
        second.stop()
        first.stop()
    assert not tcp_answers("127.0.0.1", int(url.rsplit(":", 1)[1]))
