"""Chat messages in MongoDB through beanie: the document and the `ChatMessageStore`.

Plain ids (the message's UUID is `_id`; tenant and session are plain fields, no `Link`).
Every query filters on `tenant_id`. A session's messages are numbered by `seq` (reserved
in PostgreSQL, increasing with creation time), which orders the history and is its keyset
cursor: the unique index (tenant_id, session_id, seq) serves every read and makes a
retried insert harmless.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from beanie import Document
from pydantic import BaseModel, Field
from pymongo import ASCENDING, IndexModel
from pymongo.errors import BulkWriteError, DuplicateKeyError

from domain.chat.model import ChatMessage, ChatRole, MessageStatus
from domain.llm import Usage
from persistence.mongo import MongoStore

_DUPLICATE_KEY = 11000


class ChatUsageDoc(BaseModel):
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class ChatMessageDocument(Document):
    id: str  # type: ignore[assignment]  # the message's UUID, not an ObjectId
    tenant_id: str
    session_id: str
    seq: int
    role: str
    content: str = ""
    status: str
    error: str | None = None
    model: str | None = None
    usage: ChatUsageDoc | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    class Settings:
        name = "chat_messages"
        indexes = [
            IndexModel(
                [("tenant_id", ASCENDING), ("session_id", ASCENDING), ("seq", ASCENDING)],
                name="chat_messages_tenant_session_seq",
                unique=True,
            ),
            # The sweep for replies whose worker died.
            IndexModel([("status", ASCENDING), ("created_at", ASCENDING)]),
        ]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _to_domain(d: ChatMessageDocument) -> ChatMessage:
    usage = None
    if d.usage is not None:
        u = d.usage
        usage = Usage(u.llm_calls, u.prompt_tokens, u.completion_tokens, u.cost_usd)
    return ChatMessage(
        id=d.id,
        tenant_id=d.tenant_id,
        session_id=d.session_id,
        seq=d.seq,
        role=ChatRole(d.role),
        content=d.content,
        status=MessageStatus(d.status),
        created_at=_aware(d.created_at),
        updated_at=_aware(d.updated_at),
        error=d.error,
        model=d.model,
        usage=usage,
    )


def _usage_doc(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return ChatUsageDoc(
        llm_calls=usage.llm_calls,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=usage.cost_usd,
    ).model_dump()


def _document(m: ChatMessage) -> ChatMessageDocument:
    usage = _usage_doc(m.usage)
    return ChatMessageDocument(
        id=m.id,
        tenant_id=m.tenant_id,
        session_id=m.session_id,
        seq=m.seq,
        role=m.role.value,
        content=m.content,
        status=m.status.value,
        error=m.error,
        model=m.model,
        usage=ChatUsageDoc(**usage) if usage else None,
        created_at=m.created_at,
        updated_at=m.updated_at,
    )


class MongoChatMessages:
    """`domain.chat.ports.ChatMessageStore` over `ChatMessageDocument`, registered with
    the process's `MongoStore` (bound on first use; an outage is `MongoUnavailable`)."""

    def __init__(self, store: MongoStore) -> None:
        self._store = store

    @asynccontextmanager
    async def _mongo(self, doing: str) -> AsyncIterator[None]:
        await self._store.ready()
        with self._store.errors(doing):
            yield

    async def insert(self, messages: Sequence[ChatMessage]) -> None:
        if not messages:
            return
        async with self._mongo("storing chat messages"):
            await self._insert(messages)

    async def _insert(self, messages: Sequence[ChatMessage]) -> None:
        try:
            await ChatMessageDocument.insert_many([_document(m) for m in messages], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if not errors or any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise
        except DuplicateKeyError:
            pass  # stored by an earlier attempt

    async def get(self, tenant_id: str, message_id: str) -> ChatMessage | None:
        async with self._mongo("reading a chat message"):
            found = await ChatMessageDocument.find_one({"_id": message_id, "tenant_id": tenant_id})
        return _to_domain(found) if found is not None else None

    async def delete_ids(self, tenant_id: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self._mongo("deleting chat messages"):
            await ChatMessageDocument.find(
                {"_id": {"$in": list(ids)}, "tenant_id": tenant_id}
            ).delete()

    async def delete_session(self, tenant_id: str, session_id: str) -> int:
        async with self._mongo("deleting a chat session's messages"):
            result = await ChatMessageDocument.find(
                {"tenant_id": tenant_id, "session_id": session_id}
            ).delete()
        return int(result.deleted_count) if result is not None else 0

    async def streaming_since(self, before: datetime, limit: int) -> list[ChatMessage]:
        # One explicit `$and` of typed values (see MongoAuditLog.page on nx-27017).
        query = {
            "$and": [
                {"status": MessageStatus.STREAMING.value},
                {"created_at": {"$lt": before}},
            ]
        }
        async with self._mongo("looking for abandoned chat replies"):
            found = await ChatMessageDocument.find(query).limit(limit).to_list()
        return [_to_domain(d) for d in found]

    async def before(
        self, tenant_id: str, session_id: str, before_seq: int | None, limit: int
    ) -> list[ChatMessage]:
        query: dict[str, Any] = {"tenant_id": tenant_id, "session_id": session_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        async with self._mongo("reading chat messages"):
            found = await ChatMessageDocument.find(query).sort("-seq").limit(limit).to_list()
        return [_to_domain(d) for d in found]

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
        async with self._mongo("storing a chat reply"):
            result = await self._finish(
                message_id, tenant_id, status, content, error, model, usage, at
            )
        return bool(getattr(result, "matched_count", 0))

    async def _finish(
        self,
        message_id: str,
        tenant_id: str,
        status: MessageStatus,
        content: str,
        error: str | None,
        model: str | None,
        usage: Usage | None,
        at: datetime,
    ) -> Any:
        return await ChatMessageDocument.find_one(
            {"_id": message_id, "tenant_id": tenant_id, "status": MessageStatus.STREAMING.value}
        ).update(
            {
                "$set": {
                    "status": status.value,
                    "content": content,
                    "error": error,
                    "model": model,
                    "usage": _usage_doc(usage),
                    "updated_at": at,
                }
            }
        )
