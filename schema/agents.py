"""Agent types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import agents as d
from schema.context import Info
from schema.providers import LlmProvider
from schema.records import from_record, shallow_fields
from schema.tools import Tool


@strawberry.type
class Agent:
    id: strawberry.ID
    name: str
    role: str
    goal: str
    backstory: str
    max_iterations: int
    allow_delegation: bool
    verbose: bool
    temperature: float | None
    version: int
    created_at: datetime
    updated_at: datetime
    llm_provider_id: strawberry.Private[str | None]
    tool_ids: strawberry.Private[list[str]]
    # Set by a listing that loaded every agent's tools at once (`prefetch_tools`): the
    # field then answers without an awaitable, so graphql-core completes each agent in
    # place instead of gathering one task per agent.
    prefetched_tools: strawberry.Private[list[Tool] | None] = None

    @strawberry.field
    async def llm_provider(self, info: Info) -> LlmProvider | None:
        if self.llm_provider_id is None:
            return None
        found = await info.context.loaders.provider.load(self.llm_provider_id)
        return LlmProvider.from_domain(found) if found else None

    @strawberry.field
    def tools(self, info: Info) -> list[Tool]:
        if self.prefetched_tools is not None:
            return self.prefetched_tools
        return self._load_tools(info)  # type: ignore[return-value]  # awaited by graphql-core

    async def _load_tools(self, info: Info) -> list[Tool]:
        found = await info.context.loaders.tool.load_many(self.tool_ids)
        return [Tool.from_domain(t) for t in found if t is not None]

    @classmethod
    def from_domain(cls, a: d.Agent) -> Agent:
        return from_record(cls, a, prefetched_tools=None, **shallow_fields(a.options))


async def prefetch_tools(info: Info, agents: list[Agent]) -> None:
    """Every agent's tools through the request's tool loader in one batch (the same one
    statement the field's own loads make), kept on the agents."""
    ids = list(dict.fromkeys(i for a in agents for i in a.tool_ids))
    if not ids:
        for a in agents:
            a.prefetched_tools = []
        return
    found = dict(zip(ids, await info.context.loaders.tool.load_many(ids), strict=True))
    for a in agents:
        a.prefetched_tools = [
            Tool.from_domain(t) for t in (found[i] for i in a.tool_ids) if t is not None
        ]


@strawberry.input
class AgentInput:
    name: str
    role: str
    goal: str
    backstory: str
    llm_provider_id: strawberry.ID | None = None
    tool_ids: list[strawberry.ID] | None = None
    max_iterations: int | None = strawberry.field(default=None, description="1..100, default 20")
    allow_delegation: bool | None = None
    verbose: bool | None = None
    temperature: float | None = strawberry.field(default=None, description="0..2")

    def to_domain(self) -> d.AgentInput:
        return d.AgentInput(
            self.name,
            self.role,
            self.goal,
            self.backstory,
            self.llm_provider_id,
            [str(t) for t in self.tool_ids] if self.tool_ids is not None else None,
            self.max_iterations,
            self.allow_delegation,
            self.verbose,
            self.temperature,
        )
