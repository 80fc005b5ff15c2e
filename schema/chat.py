"""Chat types: sessions, messages (a backwards Relay connection), streamed tokens."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from domain.chat import model as d
from schema.agents import Agent
from schema.context import Info
from schema.fields import described
from schema.providers import LlmProvider
from schema.relay import Connection, Edge, PageInfo
from schema.usage import Usage


@strawberry.enum
class ChatRole(enum.Enum):
    SYSTEM = "SYSTEM"
    USER = "USER"
    ASSISTANT = "ASSISTANT"


@strawberry.enum(description="A reply streams, then ends in one of the other states.")
class ChatMessageStatus(enum.Enum):
    STREAMING = "STREAMING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.type
class ChatMessage:
    id: strawberry.ID
    role: ChatRole
    content: str
    created_at: datetime
    status: ChatMessageStatus
    error: str | None
    usage: Usage | None

    @classmethod
    def from_domain(cls, m: d.ChatMessage) -> ChatMessage:
        return cls(
            id=strawberry.ID(m.id),
            role=ChatRole(m.role.value),
            content=m.content,
            created_at=m.created_at,
            status=ChatMessageStatus(m.status.value),
            error=m.error,
            usage=Usage.from_domain(m.usage) if m.usage is not None else None,
        )


@strawberry.type(
    description="One piece of a reply: indexes 0, 1, 2, ... per message; each reply ends "
    'with one token whose done is true and delta is "" (error set when the reply failed).'
)
class ChatToken:
    session_id: strawberry.ID
    message_id: strawberry.ID
    index: int
    delta: str
    done: bool
    error: str | None

    @classmethod
    def from_domain(cls, t: d.ChatToken) -> ChatToken:
        return cls(
            session_id=strawberry.ID(t.session_id),
            message_id=strawberry.ID(t.message_id),
            index=t.index,
            delta=t.delta,
            done=t.done,
            error=t.error,
        )


@strawberry.type
class ChatSession:
    id: strawberry.ID
    title: str | None
    message_count: int
    message_limit: int
    created_at: datetime
    system_prompt: str | None
    record: strawberry.Private[d.ChatSession]

    @strawberry.field
    async def llm_provider(self, info: Info) -> LlmProvider | None:
        if self.record.llm_provider_id is None:
            return None
        found = await info.context.loaders.provider.load(self.record.llm_provider_id)
        return LlmProvider.from_domain(found) if found else None

    @strawberry.field
    async def agent(self, info: Info) -> Agent | None:
        if self.record.agent_id is None:
            return None
        found = await info.context.loaders.agent.load(self.record.agent_id)
        return Agent.from_domain(found) if found else None

    @described(
        "Newest page first, edges oldest to newest within a page; pass "
        "pageInfo.startCursor as `before` for the page before."
    )
    async def messages(
        self, info: Info, last: int | None = None, before: str | None = None
    ) -> Connection[ChatMessage]:
        p = await info.context.principal()
        page = await info.context.services.chat.messages(p, self.record, last, before)
        edges = [
            Edge(node=ChatMessage.from_domain(m), cursor=d.encode_cursor(m.seq)) for m in page.items
        ]
        return Connection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=before is not None,
                end_cursor=edges[-1].cursor if edges else None,
                has_previous_page=page.has_previous_page,
                start_cursor=edges[0].cursor if edges else None,
            ),
        )

    @classmethod
    def from_domain(cls, s: d.ChatSession) -> ChatSession:
        return cls(
            id=strawberry.ID(s.id),
            title=s.title,
            message_count=s.message_count,
            message_limit=s.message_limit,
            created_at=s.created_at,
            system_prompt=s.system_prompt,
            record=s,
        )


@strawberry.input
class ChatSessionInput:
    title: str | None = None
    llm_provider_id: strawberry.ID | None = None
    agent_id: strawberry.ID | None = None
    message_limit: int | None = strawberry.field(
        default=None, description="2..the deployment's maximum; default 100"
    )
    system_prompt: str | None = None

    def to_domain(self) -> d.ChatSessionInput:
        return d.ChatSessionInput(
            title=self.title,
            llm_provider_id=str(self.llm_provider_id) if self.llm_provider_id is not None else None,
            agent_id=str(self.agent_id) if self.agent_id is not None else None,
            message_limit=self.message_limit,
            system_prompt=self.system_prompt,
        )
