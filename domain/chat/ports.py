"""What chat needs from storage, the token bus, the queue and the model catalogue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol, TypeVar

from domain.chat.model import ChatMessage, ChatSession, ChatToken, MessageStatus, ReplyRef
from domain.executions.streams import Subscription
from domain.llm import Usage
from domain.ports import Page

T = TypeVar("T")


class ChatSessionStore(Protocol):
    """Sessions in the tenant's PostgreSQL schema."""

    async def add(self, tenant_schema: str, session: ChatSession, *, max_sessions: int = 0) -> bool:
        """Store the session unless the schema already holds `max_sessions` (0: no
        limit), counted under a lock so concurrent adds never pass it; False: refused."""
        ...

    async def get(self, tenant_schema: str, session_id: str) -> ChatSession | None: ...

    async def page(self, tenant_schema: str, first: int, after: str | None) -> Page[ChatSession]:
        """Oldest first, keyset on (created_at, id)."""
        ...

    async def delete(self, tenant_schema: str, session_id: str) -> bool: ...

    async def tenant_schema(self, tenant_id: str) -> str | None:
        """The schema of a tenant (for work that starts from a message, not a request)."""
        ...

    async def replying(self, tenant_schema: str) -> list[str]:
        """The ids of the sessions with a reply in progress (their reply lock is set)."""
        ...

    async def change(
        self, tenant_schema: str, session_id: str, change: Callable[[ChatSession], T]
    ) -> T | None:
        """Lock the session row, let `change` mutate the session (or raise, which stores
        nothing), store its counters and reply lock, commit; None when it does not exist.
        The session it sees says whether its tenant is suspended, as of that lock."""
        ...


class ChatMessageStore(Protocol):
    """Messages (MongoDB). Every call names the tenant and filters on it."""

    async def insert(self, messages: Sequence[ChatMessage]) -> None:
        """Idempotent by id: a message already stored (a retry) is not an error."""
        ...

    async def get(self, tenant_id: str, message_id: str) -> ChatMessage | None: ...

    async def delete_ids(self, tenant_id: str, ids: Sequence[str]) -> None: ...

    async def delete_session(self, tenant_id: str, session_id: str) -> int: ...

    async def streaming_since(self, before: datetime, limit: int) -> list[ChatMessage]:
        """At most `limit` STREAMING replies (of every tenant) created before `before`."""
        ...

    async def before(
        self, tenant_id: str, session_id: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        """At most `limit` messages with seq < `before_seq` (all when None), newest first."""
        ...

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
        """Store the final state of a STREAMING message; False when it is not streaming
        any more (someone else finished it first)."""
        ...


class ChatTokenBus(Protocol):
    """Per-session token channel, a short-lived per-reply buffer, cancel signals."""

    async def push(self, tenant_id: str, token: ChatToken) -> None:
        """Append to the reply's buffer, then publish on the session's channel."""
        ...

    async def buffered(
        self, tenant_id: str, message_id: str, start: int = 0, stop: int = -1
    ) -> list[ChatToken]:
        """The buffered tokens of a reply with start <= index (<= stop when >= 0)."""
        ...

    def tokens(
        self, tenant_id: str, session_id: str
    ) -> AbstractAsyncContextManager[Subscription[ChatToken]]:
        """A subscription active on the server when entered."""
        ...

    async def signal_cancel(self, ref: ReplyRef) -> None: ...

    def cancels(self) -> AbstractAsyncContextManager[Subscription[ReplyRef]]: ...


class ReplyDispatcher(Protocol):
    async def dispatch(self, ref: ReplyRef) -> None: ...


class ContextWindows(Protocol):
    def __call__(self, provider: str, model: str) -> int | None:
        """The model's input window in tokens, when the catalogue knows it."""
        ...
