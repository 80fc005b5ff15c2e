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

    @strawberry.field
    async def llm_provider(self, info: Info) -> LlmProvider | None:
        if self.llm_provider_id is None:
            return None
        found = await info.context.loaders.provider.load(self.llm_provider_id)
        return LlmProvider.from_domain(found) if found else None

    @strawberry.field
    async def tools(self, info: Info) -> list[Tool]:
        found = await info.context.loaders.tool.load_many(self.tool_ids)
        return [Tool.from_domain(t) for t in found if t is not None]

    @classmethod
    def from_domain(cls, a: d.Agent) -> Agent:
        return from_record(cls, a, **shallow_fields(a.options))


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
