"""Chat queries, mutations and the token subscription (thin: parse, call one use case, map)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from domain.validation import page_size
from schema.chat import ChatMessage, ChatSession, ChatSessionInput, ChatToken
from schema.context import Info
from schema.relay import Connection, connection


async def chat_sessions(
    info: Info, first: int | None = None, after: str | None = None
) -> Connection[ChatSession]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    page = await info.context.services.chat.list(p, size, after)
    return connection(page, ChatSession.from_domain)


async def chat_session(info: Info, id: strawberry.ID) -> ChatSession:
    p = await info.context.principal()
    return ChatSession.from_domain(await info.context.services.chat.get(p, id))


async def create_chat_session(info: Info, input: ChatSessionInput) -> ChatSession:
    p = await info.context.principal()
    return ChatSession.from_domain(await info.context.services.chat.create(p, input.to_domain()))


async def send_chat_message(info: Info, session_id: strawberry.ID, content: str) -> ChatMessage:
    p = await info.context.principal()
    return ChatMessage.from_domain(await info.context.services.chat.send(p, session_id, content))


async def cancel_chat_reply(info: Info, session_id: strawberry.ID) -> ChatMessage | None:
    p = await info.context.principal()
    found = await info.context.services.chat.cancel(p, session_id)
    return ChatMessage.from_domain(found) if found is not None else None


async def delete_chat_session(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.chat.delete(p, id)


async def chat_tokens(info: Info, session_id: strawberry.ID) -> AsyncGenerator[ChatToken, None]:
    """The session's reply tokens, from the reply under way (if any) on; open until the
    client unsubscribes."""
    p = await info.context.principal()
    async for token in info.context.services.chat.follow_tokens(p, session_id):
        yield ChatToken.from_domain(token)
