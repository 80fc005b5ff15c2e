"""Crew types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain import crews as d
from domain.errors import NotFound
from schema.agents import Agent
from schema.context import Info
from schema.providers import LlmProvider
from schema.records import from_record


@strawberry.type
class CrewTask:
    description: str
    expected_output: str
    agent_id: strawberry.Private[str]

    @strawberry.field
    async def agent(self, info: Info) -> Agent:
        found = await info.context.loaders.agent.load(self.agent_id)
        if found is None:  # cannot happen while the foreign key holds
            raise NotFound("agent", self.agent_id)
        return Agent.from_domain(found)


@strawberry.type
class Crew:
    id: strawberry.ID
    name: str
    process: str = strawberry.field(description='"sequential" | "hierarchical"')
    tasks: list[CrewTask]
    version: int
    created_at: datetime
    updated_at: datetime
    agent_ids: strawberry.Private[list[str]]
    manager_agent_id: strawberry.Private[str | None]
    manager_llm_provider_id: strawberry.Private[str | None]

    @strawberry.field
    async def agents(self, info: Info) -> list[Agent]:
        found = await info.context.loaders.agent.load_many(self.agent_ids)
        return [Agent.from_domain(a) for a in found if a is not None]

    @strawberry.field
    async def manager_agent(self, info: Info) -> Agent | None:
        if not self.manager_agent_id:
            return None
        found = await info.context.loaders.agent.load(self.manager_agent_id)
        return Agent.from_domain(found) if found else None

    @strawberry.field
    async def manager_llm_provider(self, info: Info) -> LlmProvider | None:
        if not self.manager_llm_provider_id:
            return None
        found = await info.context.loaders.provider.load(self.manager_llm_provider_id)
        return LlmProvider.from_domain(found) if found else None

    @classmethod
    def from_domain(cls, c: d.Crew) -> Crew:
        return from_record(cls, c, tasks=[from_record(CrewTask, t) for t in c.tasks])


@strawberry.input
class CrewTaskInput:
    description: str
    expected_output: str
    agent_id: strawberry.ID


@strawberry.input
class CrewInput:
    name: str
    agent_ids: list[strawberry.ID]
    tasks: list[CrewTaskInput]
    process: str | None = strawberry.field(
        default=None, description='"sequential" (default) or "hierarchical"'
    )
    manager_agent_id: strawberry.ID | None = None
    manager_llm_provider_id: strawberry.ID | None = None

    def to_domain(self) -> d.CrewInput:
        return d.CrewInput(
            self.name,
            [str(a) for a in self.agent_ids],
            [d.CrewTask(t.description, t.expected_output, str(t.agent_id)) for t in self.tasks],
            self.process,
            self.manager_agent_id,
            self.manager_llm_provider_id,
        )
