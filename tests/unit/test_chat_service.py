"""Chat use cases and the reply worker over in-memory fakes of their ports."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from domain.chat.model import (
    ChatLimits,
    ChatMessage,
    ChatSession,
    ChatToken,
    MessageStatus,
    ReplyRef,
    utcnow,
)
from domain.chat.replies import ChatReplier
from domain.chat.service import ChatService, StoreUnavailable
from domain.executions.streams import FeedInterrupted
from domain.identity import Principal
from domain.llm import LlmCallFailed, LlmReply, LlmRequest, Usage
from domain.ports import Page
from domain.rbac import Role

T = TypeVar("T")
P = Principal("t1", "tenant_000000000001", Role.MEMBER, user_id="u1")
LIMITS = ChatLimits(reply_lease_seconds=0.3)


class Sessions:
    def __init__(self) -> None:
        self.rows: dict[str, ChatSession] = {}

    async def add(self, schema: str, session: ChatSession, *, max_sessions: int = 0) -> bool:
        if max_sessions and len(self.rows) >= max_sessions:
            return False
        self.rows[session.id] = copy.copy(session)
        return True

    async def get(self, schema: str, session_id: str) -> ChatSession | None:
        found = self.rows.get(session_id)
        return copy.copy(found) if found else None

    async def page(self, schema: str, first: int, after: str | None) -> Page[ChatSession]:
        return Page([(s, s.id) for s in self.rows.values()][:first], False)

    async def delete(self, schema: str, session_id: str) -> bool:
        return self.rows.pop(session_id, None) is not None

    async def tenant_schema(self, tenant_id: str) -> str | None:
        return P.tenant_schema if tenant_id == P.tenant_id else None

    async def replying(self, schema: str) -> list[str]:
        return [s.id for s in self.rows.values() if s.reply_id is not None]

    async def change(
        self, schema: str, session_id: str, change: Callable[[ChatSession], T]
    ) -> T | None:
        found = self.rows.get(session_id)
        if found is None:
            return None
        work = copy.copy(found)
        outcome = change(work)  # a raise stores nothing
        self.rows[session_id] = work
        return outcome


class Messages:
    def __init__(self) -> None:
        self.rows: dict[str, ChatMessage] = {}
        self.down = False
        self.deleted: list[str] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("store down")

    async def insert(self, messages: Sequence[ChatMessage]) -> None:
        self._check()
        for m in messages:
            self.rows.setdefault(m.id, copy.copy(m))

    async def get(self, tenant_id: str, message_id: str) -> ChatMessage | None:
        self._check()
        found = self.rows.get(message_id)
        return copy.copy(found) if found and found.tenant_id == tenant_id else None

    async def delete_ids(self, tenant_id: str, ids: Sequence[str]) -> None:
        self.deleted += ids
        self._check()
        for i in ids:
            self.rows.pop(i, None)

    async def delete_session(self, tenant_id: str, session_id: str) -> int:
        self._check()
        gone = [i for i, m in self.rows.items() if m.session_id == session_id]
        for i in gone:
            del self.rows[i]
        return len(gone)

    async def streaming_since(self, before: datetime, limit: int) -> list[ChatMessage]:
        self._check()
        found = [
            copy.copy(m)
            for m in self.rows.values()
            if m.status is MessageStatus.STREAMING and m.created_at < before
        ]
        return found[:limit]

    async def before(
        self, tenant_id: str, session_id: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        self._check()
        found = [
            m
            for m in self.rows.values()
            if m.tenant_id == tenant_id
            and m.session_id == session_id
            and (before_seq is None or m.seq < before_seq)
        ]
        return sorted(found, key=lambda m: -m.seq)[:limit]

    async def finish(
        self,
        tenant_id: str,
        message_id: str,
        status: MessageStatus,
        content: str,
        *,
        error: str | None,
        model: str | None,
        usage: Usage | None,
        at: datetime,
    ) -> bool:
        self._check()
        m = self.rows.get(message_id)
        if m is None or m.status is not MessageStatus.STREAMING:
            return False
        m.status, m.content, m.error, m.model, m.usage = status, content, error, model, usage
        return True


class Feed:
    def __init__(self) -> None:
        self.items: asyncio.Queue[ChatToken | Exception] = asyncio.Queue()

    async def next(self, timeout: float | None = None) -> ChatToken | None:
        item = await asyncio.wait_for(self.items.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item


class Bus:
    """Buffers and a channel; `lose` drops the next n publications (not the buffer)."""

    def __init__(self) -> None:
        self.buffers: dict[str, list[ChatToken]] = {}
        self.feeds: list[Feed] = []
        self.lose = 0
        self.subscribed = asyncio.Event()
        self.cancelled: list[ReplyRef] = []

    async def push(self, tenant_id: str, token: ChatToken) -> None:
        self.buffers.setdefault(token.message_id, []).append(token)
        if self.lose:
            self.lose -= 1
            return
        for feed in self.feeds:
            feed.items.put_nowait(token)

    async def buffered(
        self, tenant_id: str, message_id: str, start: int = 0, stop: int = -1
    ) -> list[ChatToken]:
        return [
            t
            for t in self.buffers.get(message_id, [])
            if t.index >= start and (stop < 0 or t.index <= stop)
        ]

    @asynccontextmanager
    async def tokens(self, tenant_id: str, session_id: str) -> AsyncIterator[Feed]:
        feed = Feed()
        self.feeds.append(feed)
        self.subscribed.set()
        try:
            yield feed
        finally:
            self.feeds.remove(feed)

    async def signal_cancel(self, ref: ReplyRef) -> None:
        self.cancelled.append(ref)

    def cancels(self) -> Any:
        raise NotImplementedError


class Dispatcher:
    def __init__(self) -> None:
        self.refs: list[ReplyRef] = []

    async def dispatch(self, ref: ReplyRef) -> None:
        self.refs.append(ref)


class Llm:
    """Streams `words` one per `delay`, or fails."""

    def __init__(self, words: list[str], delay: float = 0.0, fail: bool = False) -> None:
        self.words = words
        self.delay = delay
        self.fail = fail
        self.requests: list[LlmRequest] = []

    async def complete(
        self, scope: Any, provider_id: str, request: LlmRequest, **kw: Any
    ) -> LlmReply:
        self.requests.append(request)
        on_token = kw["on_token"]
        for word in self.words:
            await asyncio.sleep(self.delay)
            await on_token(word)
        if self.fail:
            raise LlmCallFailed("server", "provider said 500", usage=Usage(1, 3, 0))
        return LlmReply("".join(self.words), "m1", provider_id, Usage(1, 3, len(self.words)))


def _world() -> tuple[ChatService, Sessions, Messages, Bus, Dispatcher]:
    sessions, messages, bus, dispatcher = Sessions(), Messages(), Bus(), Dispatcher()
    service = ChatService(None, sessions, messages, bus, lambda: dispatcher, LIMITS)  # type: ignore[arg-type]
    return service, sessions, messages, bus, dispatcher


async def _session(sessions: Sessions, **over: Any) -> ChatSession:
    s = ChatSession(
        "11111111-1111-4111-8111-111111111111", None, "p1", None, "Be brief.", 10, utcnow()
    )
    for k, v in over.items():
        setattr(s, k, v)
    await sessions.add(P.tenant_schema, s)
    return s


def _replier(sessions: Sessions, messages: Messages, bus: Bus, llm: Llm) -> ChatReplier:
    return ChatReplier(None, sessions, messages, bus, llm, LIMITS, owner="w1")  # type: ignore[arg-type]


async def test_a_send_the_message_store_refuses_leaves_nothing_behind() -> None:
    service, sessions, messages, _, dispatcher = _world()
    s = await _session(sessions)
    messages.down = True
    with pytest.raises(StoreUnavailable, match="nothing was stored"):
        await service.send(P, s.id, "hello")
    row = sessions.rows[s.id]
    assert row.message_count == 0 and row.reply_id is None and dispatcher.refs == []
    assert len(messages.deleted) == 2  # whatever may have landed is removed
    messages.down = False
    user = await service.send(P, s.id, "hello")
    assert [m.seq for m in sorted(messages.rows.values(), key=lambda m: m.seq)] == [3, 4]
    assert sessions.rows[s.id].message_count == 2 and user.content == "hello"
    assert dispatcher.refs[0].message_id == sessions.rows[s.id].reply_id


async def test_a_reply_streams_is_stored_and_ends_with_done_after_the_lock_is_released() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    llm = Llm(["Hel", "lo", "!"])
    await service.send(P, s.id, "hi")
    released_before_done: list[bool] = []
    original = bus.push

    async def push(tenant_id: str, token: ChatToken) -> None:
        if token.done:
            released_before_done.append(sessions.rows[s.id].reply_id is None)
        await original(tenant_id, token)

    bus.push = push  # type: ignore[method-assign]
    await _replier(sessions, messages, bus, llm).run(dispatcher.refs[0])
    reply = messages.rows[dispatcher.refs[0].message_id]
    assert (reply.status, reply.content, reply.usage) == (
        MessageStatus.COMPLETED,
        "Hello!",
        Usage(1, 3, 3),
    )
    tokens = bus.buffers[reply.id]
    assert [(t.index, t.delta, t.done) for t in tokens][-1] == (3, "", True)
    assert released_before_done == [True]
    sent = llm.requests[0].messages
    assert sent[0] == {"role": "system", "content": "Be brief."} and sent[-1]["content"] == "hi"
    # A second run of the same job (a retried queue message) does nothing.
    await _replier(sessions, messages, bus, llm).run(dispatcher.refs[0])
    assert len(llm.requests) == 1


async def test_a_provider_failure_stores_a_failed_reply_with_the_error() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    await _replier(sessions, messages, bus, Llm(["par", "tial"], fail=True)).run(dispatcher.refs[0])
    reply = messages.rows[dispatcher.refs[0].message_id]
    assert reply.status is MessageStatus.FAILED and reply.content == "partial"
    assert reply.error == "provider said 500" and reply.usage == Usage(1, 3, 0)
    assert bus.buffers[reply.id][-1] == ChatToken(s.id, reply.id, 2, "", True, "provider said 500")


async def test_cancel_stops_the_worker_and_stores_what_was_generated() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    replier = _replier(sessions, messages, bus, Llm([f"w{i} " for i in range(100)], delay=0.02))
    run = asyncio.create_task(replier.run(dispatcher.refs[0]))
    while len(bus.buffers.get(dispatcher.refs[0].message_id, [])) < 3:
        await asyncio.sleep(0.01)
    bus.signal_cancel = lambda ref: _cancel_local(replier, ref)  # type: ignore[method-assign]
    cancelled = await service.cancel(P, s.id)
    await run
    assert cancelled is not None and cancelled.status is MessageStatus.CANCELLED
    streamed = [t for t in bus.buffers[cancelled.id] if not t.done]
    assert cancelled.content == "".join(t.delta for t in streamed) and len(streamed) < 100
    assert sessions.rows[s.id].reply_id is None
    assert await service.cancel(P, s.id) is None


async def _cancel_local(replier: ChatReplier, ref: ReplyRef) -> None:
    replier.cancel_local(ref.message_id)


async def test_cancelling_a_reply_nobody_picked_up_ends_it_at_once() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    cancelled = await service.cancel(P, s.id)
    assert cancelled is not None and cancelled.status is MessageStatus.CANCELLED
    assert cancelled.content == "" and bus.cancelled == []
    # The job arriving later finds nothing to do.
    llm = Llm(["x"])
    await _replier(sessions, messages, bus, llm).run(dispatcher.refs[0])
    assert llm.requests == []


async def test_a_joining_subscriber_gets_every_token_once_in_order_despite_lost_messages() -> None:
    service, sessions, _messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    ref = dispatcher.refs[0]
    for i in range(3):  # streamed before anyone listened
        await bus.push(ref.tenant_id, ChatToken(s.id, ref.message_id, i, f"t{i}"))
    got: list[ChatToken] = []

    async def consume() -> None:
        async for token in service.follow_tokens(P, s.id):
            got.append(token)
            if token.done:
                return

    consumer = asyncio.create_task(consume())
    await bus.subscribed.wait()
    await bus.push(ref.tenant_id, ChatToken(s.id, ref.message_id, 2, "t2"))  # a duplicate
    bus.lose = 2  # two publications lost: the buffer has them
    for i in range(3, 7):
        await bus.push(ref.tenant_id, ChatToken(s.id, ref.message_id, i, f"t{i}"))
    bus.feeds[0].items.put_nowait(FeedInterrupted("reset"))  # resubscribes, catches up
    await asyncio.sleep(0.05)
    await bus.push(ref.tenant_id, ChatToken(s.id, ref.message_id, 7, "", True))
    await asyncio.wait_for(consumer, 5)
    assert [t.index for t in got] == list(range(8))
    assert "".join(t.delta for t in got) == "t0t1t2t3t4t5t6"


async def test_an_abandoned_reply_fails_when_the_next_send_comes() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    ref = dispatcher.refs[0]
    await bus.push(ref.tenant_id, ChatToken(s.id, ref.message_id, 0, "half"))
    sessions.rows[s.id].reply_owner = "dead-worker"
    sessions.rows[s.id].reply_expires_at = utcnow()
    await asyncio.sleep(0.01)
    await service.send(P, s.id, "again")
    old = messages.rows[ref.message_id]
    assert old.status is MessageStatus.FAILED and old.content == "half"
    assert "interrupted" in (old.error or "")
    assert bus.buffers[ref.message_id][-1].done
    assert sessions.rows[s.id].message_count == 4


async def test_the_sweep_fails_only_replies_nobody_holds_any_more() -> None:
    service, sessions, messages, bus, _ = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    reply_id = sessions.rows[s.id].reply_id
    assert reply_id is not None
    old = utcnow() - timedelta(seconds=60)
    for m in messages.rows.values():
        m.created_at = old
    # Still within its claim (queued or being generated): left alone.
    assert await service.fail_abandoned_replies() == 0
    assert messages.rows[reply_id].status is MessageStatus.STREAMING
    # Its claim expired: failed, the lock released, the final token published.
    sessions.rows[s.id].reply_expires_at = utcnow() - timedelta(seconds=1)
    assert await service.fail_abandoned_replies() == 1
    assert messages.rows[reply_id].status is MessageStatus.FAILED
    assert "interrupted" in (messages.rows[reply_id].error or "")
    assert sessions.rows[s.id].reply_id is None
    final = bus.buffers[reply_id][-1]
    assert final.done and final.error is not None and "interrupted" in final.error
    assert await service.fail_abandoned_replies() == 0  # once


async def test_a_suspended_tenants_reply_is_cancelled_at_its_claim_or_its_next_renewal() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    # Accepted, then the tenant was suspended before a worker claimed it: never generated.
    await service.send(P, s.id, "hi")
    sessions.rows[s.id].tenant_suspended = True
    llm = Llm(["x"])
    await _replier(sessions, messages, bus, llm).run(dispatcher.refs[0])
    ended = messages.rows[dispatcher.refs[0].message_id]
    assert (ended.status, ended.error, llm.requests) == (
        MessageStatus.CANCELLED,
        "tenant suspended",
        [],
    )
    assert sessions.rows[s.id].reply_id is None
    # Suspended while it streams, its cancel signal lost: the renewal stops it.
    sessions.rows[s.id].tenant_suspended = False
    await service.send(P, s.id, "again")
    replier = _replier(sessions, messages, bus, Llm([f"w{i} " for i in range(500)], delay=0.01))
    run = asyncio.create_task(replier.run(dispatcher.refs[1]))
    while len(bus.buffers.get(dispatcher.refs[1].message_id, [])) < 3:
        await asyncio.sleep(0.01)
    sessions.rows[s.id].tenant_suspended = True
    await asyncio.wait_for(run, 5)
    ended = messages.rows[dispatcher.refs[1].message_id]
    assert (ended.status, ended.error) == (MessageStatus.CANCELLED, "tenant suspended")
    assert 3 <= len(ended.content.split()) < 500


async def test_the_suspensions_cancel_signal_ends_a_reply_saying_why() -> None:
    service, sessions, messages, bus, dispatcher = _world()
    s = await _session(sessions)
    await service.send(P, s.id, "hi")
    replier = _replier(sessions, messages, bus, Llm([f"w{i} " for i in range(500)], delay=0.01))
    run = asyncio.create_task(replier.run(dispatcher.refs[0]))
    while len(bus.buffers.get(dispatcher.refs[0].message_id, [])) < 3:
        await asyncio.sleep(0.01)
    sessions.rows[s.id].tenant_suspended = True  # stored before the replies are stopped
    bus.signal_cancel = lambda ref: _cancel_local(replier, ref)  # type: ignore[method-assign]
    assert await service.cancel_tenant_replies(P.tenant_id, P.tenant_schema) == 1
    await run
    ended = messages.rows[dispatcher.refs[0].message_id]
    assert (ended.status, ended.error) == (MessageStatus.CANCELLED, "tenant suspended")
