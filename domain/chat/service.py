"""Chat use cases on the request side: sessions, sending, cancelling, history, tokens.

Where things live: a session, its counters and its reply lock in PostgreSQL; messages in
MongoDB; the tokens of a reply on a Redis channel per session plus a short-lived buffer
per reply. A send touches both stores, so it is ordered to never leave half of it:

1. PostgreSQL (one transaction, the session row locked): the reply lock and the message
   limit are checked, two sequence numbers are reserved, `messageCount` grows by 2 and
   the lock names the new reply.
2. MongoDB: the user message and the STREAMING reply placeholder, in one insert.
3. When 2 fails (MongoDB down), the reservation is given back (counter and lock; the
   sequence numbers stay used) and whatever may have landed is deleted, so a retry
   after recovery stores the exchange exactly once; the sender gets a clear error.
4. The reply is dispatched to a worker (`replies.py`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from domain.chat.model import (
    ChatLimits,
    ChatMessage,
    ChatRole,
    ChatSession,
    ChatSessionInput,
    ChatToken,
    MessagePage,
    MessageStatus,
    ReplyRef,
    Reservation,
    decode_cursor,
    new_id,
    release,
    reserve,
    undo_reservation,
    utcnow,
    validate_content,
    validate_session,
)
from domain.chat.ports import ChatMessageStore, ChatSessionStore, ChatTokenBus, ReplyDispatcher
from domain.errors import BadUserInput, DomainError, NotFound
from domain.executions.claims import TENANT_SUSPENDED_ERROR
from domain.executions.streams import FeedInterrupted
from domain.identity import Principal
from domain.llm import Usage
from domain.ports import Page, TenantUnitOfWorkFactory
from domain.quotas import TenantQuotas
from domain.rbac import Action
from domain.resources import missing_references, not_found_refs, require_id

log = logging.getLogger("crewgraph.chat")

T = TypeVar("T")
# `ChatService.list` shadows the builtin inside the class body.
_Tokens = list[ChatToken]

INTERRUPTED = "the reply was interrupted: the worker generating it stopped"
CANCEL_WAIT_SECONDS = 1.5
MAX_PAGE = 100


class StoreUnavailable(DomainError):
    """The message store did not answer; nothing of the request was kept."""

    code = "SERVICE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Finisher:
    """Ends a reply once, whoever gets there first (its worker, a cancel, the expiry of
    an abandoned reply): the message store's conditional update picks the one writer;
    the lock is released and the final `done` token published only by that writer, in
    that order (a client that sends again on `done` never meets the old lock)."""

    sessions: ChatSessionStore
    messages: ChatMessageStore
    bus: ChatTokenBus

    async def finish_from_buffer(
        self, ref: ReplyRef, status: MessageStatus, error: str | None
    ) -> bool:
        """End a reply whose worker is gone or too slow: its content is what was streamed."""
        tokens = await self.bus.buffered(ref.tenant_id, ref.message_id)
        parts = [t for t in tokens if not t.done]
        content = "".join(t.delta for t in parts)
        return await self.finish(ref, status, content, len(parts), error=error)

    async def finish(
        self,
        ref: ReplyRef,
        status: MessageStatus,
        content: str,
        next_index: int,
        *,
        error: str | None = None,
        model: str | None = None,
        usage: Usage | None = None,
    ) -> bool:
        won = await self.messages.finish(
            ref.tenant_id,
            ref.message_id,
            status,
            content,
            error=error,
            model=model,
            usage=usage,
            at=utcnow(),
        )
        try:
            await self.sessions.change(
                ref.tenant_schema, ref.session_id, lambda s: release(s, ref.message_id)
            )
        except Exception:
            # The claim then expires; the next send finds the reply finished and goes on.
            log.warning("releasing a chat reply's lock failed", exc_info=True)
        if won:
            done = ChatToken(ref.session_id, ref.message_id, next_index, "", True, error)
            try:
                await self.bus.push(ref.tenant_id, done)
            except Exception:
                log.exception("publishing the final chat token failed")
        return won


class ChatService:
    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        sessions: ChatSessionStore,
        messages: ChatMessageStore,
        bus: ChatTokenBus,
        dispatcher: Callable[[], ReplyDispatcher],
        limits: ChatLimits,
        *,
        remove_workspace: Callable[[str, str], Awaitable[None]] | None = None,
        quotas: TenantQuotas | None = None,
    ) -> None:
        self._uow = uow
        self._quotas = quotas  # the chat session quota; None: not enforced
        self._sessions = sessions
        self._messages = messages
        self._bus = bus
        self._dispatcher = dispatcher
        self.limits = limits
        self._remove_workspace = remove_workspace
        self.finisher = Finisher(sessions, messages, bus)

    # ---- sessions

    async def get(self, p: Principal, session_id: str) -> ChatSession:
        p.require(Action.READ)
        found = await self._sessions.get(p.tenant_schema, require_id("chat session", session_id))
        if found is None:
            raise NotFound("chat session", session_id)
        return found

    async def list(self, p: Principal, first: int, after: str | None) -> Page[ChatSession]:
        p.require(Action.READ)
        return await self._sessions.page(p.tenant_schema, first, after)

    async def create(self, p: Principal, data: ChatSessionInput) -> ChatSession:
        p.require(Action.WRITE)
        data = validate_session(data, self.limits)
        async with self._uow(p.tenant_schema) as uow:
            if data.llm_provider_id is not None:
                found = await uow.providers.existing_ids([data.llm_provider_id])
                missing = missing_references("LLM provider", [data.llm_provider_id], found)
                if missing:
                    raise not_found_refs("LLM provider", "input.llmProviderId", missing)
            if data.agent_id is not None:
                found = await uow.agents.existing_ids([data.agent_id])
                missing = missing_references("agent", [data.agent_id], found)
                if missing:
                    raise not_found_refs("agent", "input.agentId", missing)
        assert data.message_limit is not None
        session = ChatSession(
            id=new_id(),
            title=data.title,
            llm_provider_id=data.llm_provider_id,
            agent_id=data.agent_id,
            system_prompt=data.system_prompt,
            message_limit=data.message_limit,
            created_at=utcnow(),
            created_by=p.user_id or p.api_key_id,
        )
        limit = 0 if self._quotas is None else await self._quotas.chat_session_limit(p.tenant_id)
        # A provider or agent deleted meanwhile: the foreign key refuses the row.
        if not await self._sessions.add(p.tenant_schema, session, max_sessions=limit):
            raise TenantQuotas.chat_sessions_exceeded(limit)
        return session

    async def delete(self, p: Principal, session_id: str) -> bool:
        """Messages first (a store outage leaves everything as it was), then the session,
        then messages again: a send racing the delete leaves nothing behind."""
        p.require(Action.WRITE)
        session = await self.get(p, session_id)
        await self._unavailable_as_error(self._messages.delete_session(p.tenant_id, session.id))
        if not await self._sessions.delete(p.tenant_schema, session.id):
            raise NotFound("chat session", session_id)
        if session.reply_id is not None:
            ref = ReplyRef(p.tenant_id, p.tenant_schema, session.id, session.reply_id)
            await self._quietly(self._bus.signal_cancel(ref))
        await self._quietly(self._messages.delete_session(p.tenant_id, session.id))
        if self._remove_workspace is not None:
            await self._quietly(self._remove_workspace(p.tenant_id, session.id))
        return True

    # ---- messages

    async def messages(
        self, p: Principal, session: ChatSession, last: int | None, before: str | None
    ) -> MessagePage:
        """A page walking backwards from `before` (or the newest message)."""
        p.require(Action.READ)
        if last is None:
            last = 20
        if not 1 <= last <= MAX_PAGE:
            raise BadUserInput(
                f"last must be between 1 and {MAX_PAGE}",
                {"last": f"must be between 1 and {MAX_PAGE}"},
            )
        before_seq = decode_cursor(before) if before else None
        await self._expire_if_stale(p, session)
        found = await self._unavailable_as_error(
            self._messages.before(p.tenant_id, session.id, before_seq, last + 1)
        )
        items = list(reversed(found[:last]))
        return MessagePage(items, has_previous_page=len(found) > last)

    async def send(self, p: Principal, session_id: str, content: str) -> ChatMessage:
        p.require(Action.WRITE)
        content = validate_content(content, self.limits)
        session = await self.get(p, session_id)
        now = utcnow()
        reservation = await self._sessions.change(
            p.tenant_schema, session.id, lambda s: reserve(s, now, self.limits)
        )
        if reservation is None:
            raise NotFound("chat session", session_id)
        if reservation.stale_reply is not None:
            stale = ReplyRef(p.tenant_id, p.tenant_schema, session.id, reservation.stale_reply)
            await self._quietly(
                self.finisher.finish_from_buffer(stale, MessageStatus.FAILED, INTERRUPTED)
            )
        user = ChatMessage(
            id=reservation.user_id,
            tenant_id=p.tenant_id,
            session_id=session.id,
            seq=reservation.user_seq,
            role=ChatRole.USER,
            content=content,
            status=MessageStatus.COMPLETED,
            created_at=now,
            updated_at=now,
        )
        reply = ChatMessage(
            id=reservation.reply_id,
            tenant_id=p.tenant_id,
            session_id=session.id,
            seq=reservation.reply_seq,
            role=ChatRole.ASSISTANT,
            content="",
            status=MessageStatus.STREAMING,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._messages.insert([user, reply])
        except BaseException as exc:
            await self._undo(p, session.id, reservation)
            if isinstance(exc, Exception) and not isinstance(exc, DomainError):
                log.warning("storing a chat message failed: %s", exc)
                raise _unavailable() from None
            raise
        ref = ReplyRef(p.tenant_id, p.tenant_schema, session.id, reply.id)
        try:
            await self._dispatcher().dispatch(ref)
        except Exception:
            # The queue is down: the reply cannot start, so it fails now, visibly.
            log.exception("dispatching a chat reply failed")
            await self._quietly(
                self.finisher.finish(
                    ref, MessageStatus.FAILED, "", 0, error="the reply could not be queued"
                )
            )
        return user

    async def cancel(self, p: Principal, session_id: str) -> ChatMessage | None:
        """Stop the streaming reply (within a second) and return it, stored CANCELLED with
        what was generated so far; None when no reply is streaming."""
        p.require(Action.WRITE)
        session = await self.get(p, session_id)

        found = await self._sessions.change(p.tenant_schema, session.id, _request_cancel)
        if found is None:
            return None
        reply_id, claimed = found
        ref = ReplyRef(p.tenant_id, p.tenant_schema, session.id, reply_id)
        return await self._unavailable_as_error(self._stop(ref, claimed))

    async def cancel_tenant_replies(self, tenant_id: str, tenant_schema: str) -> int:
        """Stop every reply of a tenant (suspended by the operator) as `cancel` stops one,
        with the error "tenant suspended"; how many were streaming. A reply accepted
        while this runs is ended by its claim, which sees the suspension (replies.py)."""
        stopped = 0
        for session_id in await self._sessions.replying(tenant_schema):
            found = await self._sessions.change(tenant_schema, session_id, _request_cancel)
            if found is None:
                continue
            reply_id, claimed = found
            ref = ReplyRef(tenant_id, tenant_schema, session_id, reply_id)
            await self._stop(ref, claimed, TENANT_SUSPENDED_ERROR)
            stopped += 1
        return stopped

    async def _stop(
        self, ref: ReplyRef, claimed: bool, error: str | None = None
    ) -> ChatMessage | None:
        p_tenant, reply_id = ref.tenant_id, ref.message_id
        if claimed:
            await self._quietly(self._bus.signal_cancel(ref))
            deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
            while asyncio.get_running_loop().time() < deadline:
                message = await self._messages.get(p_tenant, reply_id)
                if message is None or message.status is not MessageStatus.STREAMING:
                    return message
                await asyncio.sleep(0.05)
        # Nobody is generating it (not picked up yet, or its worker is gone): end it here.
        await self.finisher.finish_from_buffer(ref, MessageStatus.CANCELLED, error)
        return await self._messages.get(p_tenant, reply_id)

    # ---- abandoned replies

    async def fail_abandoned_replies(self, limit: int = 100) -> int:
        """Fail the STREAMING replies whose worker is gone (their claim expired), so a
        `chatTokens` subscriber gets the final token without waiting for someone to
        send, cancel or read the history; how many were failed. Safe in every process:
        the message store's conditional update picks one writer."""
        now = utcnow()
        older = now - timedelta(seconds=self.limits.reply_lease_seconds)
        schemas: dict[str, str | None] = {}
        failed = 0
        for message in await self._messages.streaming_since(older, limit):
            tenant = message.tenant_id
            if tenant not in schemas:
                schemas[tenant] = await self._sessions.tenant_schema(tenant)
            schema = schemas[tenant]
            if schema is None:
                continue  # its tenant is being removed, messages and all
            session = await self._sessions.get(schema, message.session_id)
            if (
                session is not None
                and session.reply_id == message.id
                and not session.reply_stale(now)
            ):
                continue  # its worker (or the queue) still holds it
            ref = ReplyRef(tenant, schema, message.session_id, message.id)
            if await self.finisher.finish_from_buffer(ref, MessageStatus.FAILED, INTERRUPTED):
                failed += 1
        return failed

    async def sweep_forever(self, interval: float) -> None:
        while True:
            # Jitter keeps the sweeps of many processes apart.
            await asyncio.sleep(interval * random.uniform(0.75, 1.25))
            try:
                await self.fail_abandoned_replies()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # MongoDB or PostgreSQL down: the next pass retries
                log.warning("sweeping abandoned chat replies failed: %s", exc)

    # ---- tokens

    async def follow_tokens(
        self,
        p: Principal,
        session_id: str,
        *,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[ChatToken]:
        """The session's reply tokens from now on, until the caller stops. A reply under
        way when this starts is sent from its first token (from the reply's buffer), then
        live; each (message, index) exactly once, in order, whatever the bus drops."""
        session = await self.get(p, session_id)
        tenant = p.tenant_id
        seen: dict[str, int] = {}  # message id -> next index expected
        first = True
        while True:
            try:
                async with self._bus.tokens(tenant, session.id) as subscription:
                    if first and on_subscribed is not None:
                        await on_subscribed()
                    first = False
                    current = await self._sessions.get(p.tenant_schema, session.id)
                    if current is None:
                        return
                    if current.reply_id is not None:
                        for early in await self._catch_up(tenant, current.reply_id, seen):
                            yield early
                    while True:
                        token = await subscription.next(None)
                        if token is None:
                            continue
                        expected = seen.get(token.message_id, 0)
                        if token.index < expected:
                            continue  # already sent (from the buffer, or a duplicate)
                        if token.index > expected:
                            for missed in await self._catch_up(
                                tenant, token.message_id, seen, token.index - 1
                            ):
                                yield missed
                            if seen.get(token.message_id, 0) != token.index:
                                continue  # the buffer lacks them: never send out of order
                        seen[token.message_id] = token.index + 1
                        yield token
                        if token.done and len(seen) > 64:
                            seen = {token.message_id: token.index + 1}
            except FeedInterrupted:
                continue  # subscribe again; the buffer fills what was missed

    async def _catch_up(
        self, tenant_id: str, message_id: str, seen: dict[str, int], stop: int = -1
    ) -> _Tokens:
        start = seen.get(message_id, 0)
        out: _Tokens = []
        for token in await self._bus.buffered(tenant_id, message_id, start, stop):
            if token.index != seen.get(message_id, 0):
                break
            seen[message_id] = token.index + 1
            out.append(token)
        return out

    # ---- helpers

    async def _expire_if_stale(self, p: Principal, session: ChatSession) -> None:
        """A reply abandoned by its worker is failed when someone looks at it."""
        if session.reply_id is None or not session.reply_stale(utcnow()):
            return
        ref = ReplyRef(p.tenant_id, p.tenant_schema, session.id, session.reply_id)
        await self._quietly(
            self.finisher.finish_from_buffer(ref, MessageStatus.FAILED, INTERRUPTED)
        )

    async def _undo(self, p: Principal, session_id: str, r: Reservation) -> None:
        try:
            await self._sessions.change(
                p.tenant_schema, session_id, lambda s: undo_reservation(s, r)
            )
        except Exception:
            log.exception("giving back a chat reservation failed")
        # Anything that did land must not surface later (a retry stores it again).
        await self._quietly(self._messages.delete_ids(p.tenant_id, [r.user_id, r.reply_id]))

    @staticmethod
    async def _quietly(work: Awaitable[object]) -> None:
        try:
            await work
        except Exception:
            log.warning("chat clean-up step failed", exc_info=True)

    @staticmethod
    async def _unavailable_as_error(work: Awaitable[T]) -> T:
        try:
            return await work
        except DomainError:
            raise
        except Exception as exc:
            log.warning("the chat message store failed: %s", exc)
            raise _unavailable() from None


def _request_cancel(s: ChatSession) -> tuple[str, bool] | None:
    """The reply to stop and whether a worker holds it; None when none is streaming."""
    if s.reply_id is None:
        return None
    s.cancel_requested = True
    return s.reply_id, s.reply_owner is not None


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable(
        "chat messages are unavailable right now (the message store does not answer); "
        "nothing was stored, try again shortly"
    )
