"""The multiplexing handler's pure parts: which documents share, slow consumers, ordering."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from server.context import Credentials
from server.ws import (
    SLOW_CONSUMER_CODE,
    Multiplexer,
    MultiplexingHandler,
    _fan_out,
    _Member,
    _shared_check,
    plan,
)


def test_only_single_root_execution_subscriptions_are_multiplexed() -> None:
    events = plan(
        "subscription S($id: ID!, $a: Int) { executionEvents(executionId: $id, afterSequence: $a)"
        " { sequence ...F } } fragment F on ExecutionEvent { type }",
        None,
    )
    assert events is not None and events.field == "executionEvents"
    assert events.after_variable == "a"
    assert plan("subscription { executionUpdates { id status } }", None) is not None
    assert plan("subscription { heartbeat }", None) is None
    assert plan("query { me { id } }", None) is None
    assert plan("subscription { executionUpdates { id } heartbeat }", None) is None
    assert plan("subscription { ... on Subscription { executionUpdates { id } } }", None) is None
    assert plan("subscription { executionUpdates @include(if: true) { id } }", None) is None
    assert plan("subscription {", None) is None
    two = "subscription A { executionUpdates { id } } subscription B { heartbeat }"
    assert plan(two, "A") is not None and plan(two, "B") is None and plan(two, None) is None


def test_group_keys_ignore_after_sequence_but_not_tenant_or_role() -> None:
    mux = Multiplexer(schema=None)
    query = "subscription S($id: ID!, $a: Int) { executionEvents(executionId: $id, afterSequence: $a) { sequence } }"
    shape = plan(query, None)
    assert shape is not None

    class Op:
        def __init__(self, variables: dict[str, Any]) -> None:
            self.query, self.operation_name, self.variables = query, None, variables

    a = mux.key(shape, Op({"id": "x", "a": 0}), "t1", "VIEWER")  # type: ignore[arg-type]
    b = mux.key(shape, Op({"a": 50, "id": "x"}), "t1", "VIEWER")  # type: ignore[arg-type]
    assert a == b
    assert a != mux.key(shape, Op({"id": "y", "a": 0}), "t1", "VIEWER")  # type: ignore[arg-type]
    assert a != mux.key(shape, Op({"id": "x", "a": 0}), "t2", "VIEWER")  # type: ignore[arg-type]
    assert a != mux.key(shape, Op({"id": "x", "a": 0}), "t1", "ADMIN")  # type: ignore[arg-type]


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.open = asyncio.Event()

    async def send_text(self, text: str) -> None:
        await self.open.wait()  # a client that does not read
        self.sent.append(text)


class _Adapter:
    def __init__(self) -> None:
        self.ws = _Socket()
        self.closed: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class _View:
    def __init__(self, queue_size: int) -> None:
        self.multiplexer = Multiplexer(schema=None, queue_size=queue_size)

    def encode_json(self, message: object) -> str:
        return json.dumps(message)


def _handler(queue_size: int) -> tuple[MultiplexingHandler, _Adapter]:
    adapter = _Adapter()
    handler = MultiplexingHandler(
        view=_View(queue_size),
        websocket=adapter,
        context=None,
        root_value=None,
        schema=None,
        connection_init_wait_timeout=timedelta(seconds=60),
    )
    return handler, adapter


async def test_a_connection_that_lags_is_closed_not_waited_for() -> None:
    handler, adapter = _handler(queue_size=10)
    for i in range(11):  # the writer holds one frame in flight, ten wait in the queue
        handler.push_frame(f"frame {i}")
        await asyncio.sleep(0)
    handler.push_frame("one too many")
    await asyncio.sleep(0.01)
    assert adapter.closed is not None
    assert adapter.closed[0] == SLOW_CONSUMER_CODE
    assert "slow consumer" in adapter.closed[1]
    handler.push_frame("ignored after close")  # never raises, never blocks
    await handler.shutdown()


async def test_frames_and_stock_messages_keep_their_order() -> None:
    handler, adapter = _handler(queue_size=100)
    adapter.ws.open.set()
    handler.push_frame("a")
    await handler.send_message({"type": "pong"})
    handler.push_frame("b")
    await asyncio.sleep(0.01)
    assert adapter.ws.sent == ["a", json.dumps({"type": "pong"}), "b"]
    assert adapter.closed is None
    await handler.shutdown()


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


class _Proto:
    """What the direct path reads of uvicorn's websockets-sansio protocol."""

    def __init__(self) -> None:
        self.transport = _Transport()
        self.handshake_complete = True
        self.close_sent = False
        self.writable = asyncio.Event()
        self.writable.set()


class _Op:
    def __init__(self, id: str) -> None:
        self.id, self.completed = id, False


def _direct(handler: MultiplexingHandler) -> _Proto:
    proto = _Proto()
    handler._proto = proto
    return proto


def _texts(data: bytes) -> list[str]:
    """The text frames in `data` (server frames, short)."""
    out = []
    while data:
        assert data[0] == 0x81 and data[1] < 126
        out.append(data[2 : 2 + data[1]].decode())
        data = data[2 + data[1] :]
    return out


async def test_a_connection_gets_one_write_per_loop_turn_in_order() -> None:
    handler, _ = _handler(queue_size=100)
    proto = _direct(handler)
    mux = handler.mux
    assert mux is not None
    members = {_Member(handler, _Op("a")), _Member(handler, _Op("b"))}  # type: ignore[arg-type]
    for sequence in (1, 2, 3):  # a backlog: three events in one turn
        _fan_out(members, sequence, f'{{"n":{sequence}}}}}'.encode(), mux)
    assert proto.transport.writes == []  # corked until the loop turns
    await asyncio.sleep(0)
    assert len(proto.transport.writes) == 1
    frames = [json.loads(t) for t in _texts(proto.transport.writes[0])]
    for id in ("a", "b"):
        assert [f["payload"]["n"] for f in frames if f["id"] == id] == [1, 2, 3]
    await handler.shutdown()


async def test_corked_frames_go_before_anything_sent_after_them() -> None:
    handler, adapter = _handler(queue_size=100)
    adapter.ws.open.set()
    proto = _direct(handler)
    mux = handler.mux
    assert mux is not None
    members = {_Member(handler, _Op("1"))}  # type: ignore[arg-type]
    _fan_out(members, 1, b'{"n":1}}', mux)
    await handler.send_message({"type": "pong"})  # written out first, then queued
    assert _texts(b"".join(proto.transport.writes)) == [
        '{"id":"1","type":"next","payload":{"n":1}}'
    ]
    await asyncio.sleep(0.01)
    assert adapter.ws.sent == [json.dumps({"type": "pong"})]
    await handler.shutdown()


async def test_corked_frames_take_the_queue_when_the_socket_stops_being_writable() -> None:
    handler, adapter = _handler(queue_size=100)
    adapter.ws.open.set()
    proto = _direct(handler)
    mux = handler.mux
    assert mux is not None
    members = {_Member(handler, _Op("1"))}  # type: ignore[arg-type]
    _fan_out(members, 1, b'{"n":1}}', mux)
    _fan_out(members, 2, b'{"n":2}}', mux)
    proto.writable.clear()
    await asyncio.sleep(0.01)
    assert proto.transport.writes == []
    assert [json.loads(t)["payload"]["n"] for t in adapter.ws.sent] == [1, 2]
    await handler.shutdown()


async def test_concurrent_rechecks_of_one_credential_share_one_check() -> None:
    calls = 0

    class Identity:
        async def authenticate_bearer(self, token: str) -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0.01)
            return f"principal of {token}"

    services = SimpleNamespace(identity=Identity())
    creds = Credentials(bearer="t")
    found = await asyncio.gather(*(_shared_check(services, creds) for _ in range(50)))
    assert found == ["principal of t"] * 50 and calls == 1
    await _shared_check(services, creds)  # a later round checks again
    await _shared_check(services, Credentials(bearer="other"))
    assert calls == 3
