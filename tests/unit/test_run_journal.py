"""RunJournal: stored first, then published in sequence order; TOKEN events in batches."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from domain.executions.events import EventType
from domain.executions.journal import RunJournal
from domain.executions.ports import LeaseLost, NodeResult, RunOutcome
from domain.executions.records import Execution, ExecutionRef
from domain.executions.state import ExecutionStatus, NodeStatus
from tests.unit.execution_fakes import MemoryBus, MemoryRuns, MemoryRunStore

REF = ExecutionRef("tenant", "tenant_000000000001", "run-1")


def running() -> tuple[MemoryRuns, MemoryRunStore, MemoryBus]:
    db = MemoryRuns()
    db.add(Execution(REF.execution_id, ExecutionStatus.RUNNING, {}, datetime.now(UTC)), REF, None)
    db.runs[REF.execution_id].lease_owner = "me"
    return db, MemoryRunStore(db, REF, "me"), MemoryBus()


def sequences(bus: MemoryBus) -> list[int]:
    return [e.sequence for e in bus.events_published]


async def test_events_are_stored_then_published_in_sequence_order() -> None:
    db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id)
    results = await asyncio.gather(
        *(
            journal.append_event(REF.execution_id, EventType.NODE_STARTED, f"n{i}", {})
            for i in range(20)
        )
    )
    assert [e.sequence for e in results if e] == list(range(1, 21))
    assert sequences(bus) == list(range(1, 21))
    assert [e.sequence for e in db.runs[REF.execution_id].events] == list(range(1, 21))


async def test_tokens_are_written_in_one_batch_before_the_next_other_event() -> None:
    _db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id, token_delay=10)
    for i in range(5):
        token = {"delta": f"t{i}", "index": i}
        assert await journal.append_event(REF.execution_id, EventType.TOKEN, "llm", token) is None
    assert bus.events_published == [] and store.batches == []  # buffered
    done = await journal.append_event(REF.execution_id, EventType.NODE_COMPLETED, "llm", {})
    assert done is not None and done.sequence == 6
    assert [[e.type for e in b] for b in store.batches] == [
        [EventType.TOKEN] * 5 + [EventType.NODE_COMPLETED]
    ]
    published = bus.events_published
    assert [e.sequence for e in published] == [1, 2, 3, 4, 5, 6]
    assert [e.data["delta"] for e in published[:5] if e.data] == ["t0", "t1", "t2", "t3", "t4"]
    await journal.close()


async def test_logs_are_batched_like_tokens_in_order() -> None:
    _db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id, token_delay=10)
    await journal.append_event(REF.execution_id, EventType.LOG, "tool", {"message": "a"})
    await journal.append_event(REF.execution_id, EventType.TOKEN, "tool", {"delta": "x"})
    await journal.append_event(REF.execution_id, EventType.LOG, "tool", {"message": "b"})
    assert store.batches == []  # buffered
    await journal.append_event(REF.execution_id, EventType.NODE_COMPLETED, "tool", {})
    assert [[e.type for e in b] for b in store.batches] == [
        [EventType.LOG, EventType.TOKEN, EventType.LOG, EventType.NODE_COMPLETED]
    ]
    assert [e.sequence for e in bus.events_published] == [1, 2, 3, 4]
    await journal.close()


async def test_tokens_are_flushed_after_the_delay_and_at_the_batch_size() -> None:
    _db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id, token_batch=3, token_delay=0.02)
    for i in range(4):
        await journal.append_event(REF.execution_id, EventType.TOKEN, "llm", {"index": i})
    assert sequences(bus) == [1, 2, 3]  # the third token filled a batch
    await asyncio.sleep(0.06)
    assert sequences(bus) == [1, 2, 3, 4]  # the fourth waited at most the delay
    assert [len(b) for b in store.batches] == [3, 1]
    await journal.close()


async def test_finish_writes_pending_tokens_first_and_publishes_the_final_status() -> None:
    db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id, token_delay=10)
    await journal.append_event(REF.execution_id, EventType.TOKEN, "llm", {"index": 0})
    await journal.finish(REF.execution_id, RunOutcome(ExecutionStatus.COMPLETED, {"out": 1}))
    assert sequences(bus) == [1]
    assert bus.statuses_published == [ExecutionStatus.COMPLETED]
    assert db.runs[REF.execution_id].execution.outputs == {"out": 1}
    await journal.close()


async def test_a_failed_background_flush_stops_the_run_at_its_next_write() -> None:
    db, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id, token_delay=0.01)
    await journal.append_event(REF.execution_id, EventType.TOKEN, "llm", {"index": 0})
    db.runs[REF.execution_id].lease_owner = "someone else"  # the lease was taken over
    await asyncio.sleep(0.05)
    with pytest.raises(LeaseLost):
        await journal.append_event(REF.execution_id, EventType.LOG, "llm", {})
    with pytest.raises(LeaseLost):
        await journal.save_node_result(REF.execution_id, NodeResult("llm", NodeStatus.FAILED))
    assert db.runs[REF.execution_id].events == []  # nothing stored, no sequence used


async def test_a_publish_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    _db, store, bus = running()
    bus.fail = True
    journal = RunJournal(store, bus, REF.tenant_id)
    with caplog.at_level(logging.ERROR):
        event = await journal.append_event(REF.execution_id, EventType.NODE_STARTED, "n", {})
    assert event is not None and event.sequence == 1
    assert "publishing an event failed" in caplog.text


async def test_finish_refuses_an_illegal_transition() -> None:
    _, store, bus = running()
    journal = RunJournal(store, bus, REF.tenant_id)
    with pytest.raises(Exception, match="illegal execution state transition"):
        await journal.finish(REF.execution_id, RunOutcome(ExecutionStatus.RUNNING, {}))
