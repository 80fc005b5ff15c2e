"""The Redis bus (redis.asyncio pub/sub) delivers, confirms, shares and drops slow consumers.

This is the test that fails when delivery breaks (e.g. a redis-py upgrade that changes
pub/sub, as redis-py 8 silently did for broadcaster 0.3.1).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from domain.executions.events import EventType, ExecutionEvent
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus
from domain.executions.streams import FeedInterrupted
from persistence.bus import RedisBus


@pytest.fixture
async def bus(settings: Any) -> Any:
    name = f"cgbus{secrets.token_hex(4)}"
    client = aioredis.from_url(settings.redis_url, client_name=name)
    b = RedisBus(client, name, queue_size=20)
    yield b
    await b.aclose()
    await client.aclose()


def event(seq: int) -> ExecutionEvent:
    return ExecutionEvent("x", seq, EventType.LOG, "n", datetime.now(UTC), {"i": seq})


async def test_published_events_reach_every_local_subscriber_through_one_subscription(
    bus: RedisBus,
) -> None:
    async with bus.events("t1", "x") as a, bus.events("t1", "x") as b:
        # Both active on the server when subscribe returned: nothing published after is lost.
        numsub = await bus.redis.pubsub_numsub(bus.execution_channel("t1", "x"))
        assert numsub[0][1] == 1  # one Redis subscription shared by both
        for i in range(1, 4):
            await bus.publish_event("t1", event(i))
        for sub in (a, b):
            got = [await sub.next(2) for _ in range(3)]
            assert [e.sequence for e in got if e] == [1, 2, 3]
            assert got[0].data == {"i": 1} and got[0].type == EventType.LOG
        assert await a.next(0.05) is None  # nothing else
    numsub = await bus.redis.pubsub_numsub(bus.execution_channel("t1", "x"))
    assert numsub[0][1] == 0  # unsubscribed when the last local subscriber left


async def test_a_batch_of_events_is_published_in_order_in_one_round_trip(
    bus: RedisBus,
) -> None:
    async with bus.events("t1", "x") as sub, bus.events("t2", "x") as other:
        await bus.publish_events("t1", [event(i) for i in range(1, 6)])
        got = [await sub.next(2) for _ in range(5)]
        assert [e.sequence for e in got if e] == [1, 2, 3, 4, 5]
        assert got[4] is not None and got[4].data == {"i": 5}
        assert await sub.next(0.05) is None
        assert await other.next(0.05) is None  # still one tenant's channel


async def test_channels_are_namespaced_by_tenant(bus: RedisBus) -> None:
    async with bus.events("t1", "x") as mine, bus.statuses("t2") as other:
        await bus.publish_event("t2", event(1))  # same execution id, other tenant
        await bus.publish_status(
            "t2",
            Execution("x", ExecutionStatus.RUNNING, None, datetime.now(UTC), flow_id="f"),
        )
        assert await mine.next(0.2) is None
        update = await other.next(2)
        assert update is not None and update.status == ExecutionStatus.RUNNING
        assert update.flow_id == "f" and update.inputs is None


async def test_a_slow_subscriber_is_dropped_and_the_others_keep_going(bus: RedisBus) -> None:
    async with bus.events("t1", "x") as slow, bus.events("t1", "x") as fast:
        for i in range(1, 31):  # queue_size is 20
            await bus.publish_event("t1", event(i))
            got = await fast.next(2)
            assert got is not None and got.sequence == i
        with pytest.raises(FeedInterrupted, match="slow consumer"):
            while True:
                await slow.next(2)
        assert bus.dropped == 1
        await bus.publish_event("t1", event(31))
        assert (await fast.next(2)).sequence == 31  # type: ignore[union-attr]


async def test_cancel_signals(bus: RedisBus) -> None:
    async with bus.cancels() as sub:
        await bus.publish_cancel(ExecutionRef("t", "tenant_0123456789ab", "e"))
        ref = await sub.next(2)
        assert ref == ExecutionRef("t", "tenant_0123456789ab", "e")


async def test_subscribers_resync_when_the_connection_is_reset(bus: RedisBus) -> None:
    async with bus.events("t1", "x") as sub:
        # Kill this bus's pub/sub connection from the server side (only ours: the
        # connection name is unique to this test).
        clients = await bus.redis.client_list()
        pubsub_ids = [
            c["id"]
            for c in clients
            if c.get("name") == bus.prefix and "subscribe" in c.get("cmd", "")
        ]
        assert pubsub_ids
        for ident in pubsub_ids:
            await bus.redis.client_kill_filter(_id=ident)
        with pytest.raises(FeedInterrupted):
            await sub.next(5)
    # The bus reconnected: new subscriptions work.
    async with bus.events("t1", "x") as again:
        await asyncio.sleep(0.05)
        await bus.publish_event("t1", event(7))
        got = await again.next(5)
        assert got is not None and got.sequence == 7
