"""Agents: a role, a goal, a backstory, a model and tools (CrewAI's vocabulary)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from domain.identity import Principal
from domain.ports import Page, TenantUnitOfWork
from domain.rbac import Action
from domain.resources import ResourceService, missing_references, not_found_refs
from domain.validation import MAX_TEXT, Checker

MAX_TOOLS = 50


@dataclass(frozen=True, slots=True)
class AgentOptions:
    max_iterations: int = 20
    allow_delegation: bool = False
    verbose: bool = False
    temperature: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "maxIterations": self.max_iterations,
            "allowDelegation": self.allow_delegation,
            "verbose": self.verbose,
            "temperature": self.temperature,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentOptions:
        return cls(
            max_iterations=int(data.get("maxIterations", 20)),
            allow_delegation=bool(data.get("allowDelegation", False)),
            verbose=bool(data.get("verbose", False)),
            temperature=data.get("temperature"),
        )


@dataclass(slots=True)
class Agent:
    id: str
    name: str
    role: str
    goal: str
    backstory: str
    llm_provider_id: str | None
    tool_ids: list[str]
    options: AgentOptions
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AgentInput:
    name: str
    role: str
    goal: str
    backstory: str
    llm_provider_id: str | None = None
    tool_ids: list[str] | None = None
    max_iterations: int | None = None
    allow_delegation: bool | None = None
    verbose: bool | None = None
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _validate(
    data: AgentInput, previous: AgentOptions | None = None
) -> tuple[AgentInput, AgentOptions]:
    check = Checker("input.")
    name = check.text("name", data.name) or ""
    role = check.text("role", data.role, max_len=2000) or ""
    goal = check.text("goal", data.goal, max_len=MAX_TEXT) or ""
    backstory = check.text("backstory", data.backstory, max_len=MAX_TEXT) or ""
    tool_ids = list(data.tool_ids or [])
    check.check("toolIds", len(tool_ids) <= MAX_TOOLS, f"must list at most {MAX_TOOLS} tools")
    check.check("toolIds", len(set(tool_ids)) == len(tool_ids), "must not repeat a tool")
    base = previous or AgentOptions()
    options = AgentOptions(
        max_iterations=base.max_iterations if data.max_iterations is None else data.max_iterations,
        allow_delegation=base.allow_delegation
        if data.allow_delegation is None
        else data.allow_delegation,
        verbose=base.verbose if data.verbose is None else data.verbose,
        temperature=base.temperature if data.temperature is None else data.temperature,
    )
    check.check("maxIterations", 1 <= options.max_iterations <= 100, "must be between 1 and 100")
    if options.temperature is not None:
        check.check("temperature", 0.0 <= options.temperature <= 2.0, "must be between 0 and 2")
    check.raise_if_any()
    cleaned = AgentInput(name, role, goal, backstory, data.llm_provider_id, tool_ids)
    return cleaned, options


async def check_agent_refs(uow: TenantUnitOfWork, data: AgentInput) -> None:
    if data.llm_provider_id is not None:
        found = await uow.providers.existing_ids([data.llm_provider_id])
        missing = missing_references("LLM provider", [data.llm_provider_id], found)
        if missing:
            raise not_found_refs("LLM provider", "input.llmProviderId", missing)
    if data.tool_ids:
        found = await uow.tools.existing_ids(data.tool_ids)
        missing = missing_references("tool", data.tool_ids, found)
        if missing:
            raise not_found_refs("tool", "input.toolIds", missing)


class AgentService(ResourceService[Agent]):
    kind = "agent"
    repo_attr = "agents"

    async def list(
        self, p: Principal, first: int, after: str | None, search: str | None = None
    ) -> Page[Agent]:
        return await self._list(p, first, after, search=search)

    async def create(self, p: Principal, data: AgentInput) -> Agent:
        p.require(Action.WRITE)
        data, options = _validate(data)
        now = datetime.now(UTC)
        agent = Agent(
            str(uuid.uuid4()),
            data.name,
            data.role,
            data.goal,
            data.backstory,
            data.llm_provider_id,
            list(data.tool_ids or []),
            options,
            1,
            now,
            now,
        )
        return await self._insert(p, agent, lambda uow: check_agent_refs(uow, data))

    async def update(
        self, p: Principal, ident: str, data: AgentInput, expected_version: int | None = None
    ) -> Agent:
        p.require(Action.WRITE)

        async def change(uow: TenantUnitOfWork, agent: Agent) -> None:
            cleaned, options = _validate(data, agent.options)
            await check_agent_refs(uow, cleaned)
            agent.name, agent.role, agent.goal, agent.backstory = (
                cleaned.name,
                cleaned.role,
                cleaned.goal,
                cleaned.backstory,
            )
            agent.llm_provider_id = cleaned.llm_provider_id
            agent.tool_ids = list(cleaned.tool_ids or [])
            agent.options = options

        return await self._modify(p, ident, expected_version, change)
