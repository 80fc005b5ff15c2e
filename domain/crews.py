"""Crews: agents working through ordered tasks, sequentially or under a manager."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from domain.identity import Principal
from domain.ports import Page, TenantUnitOfWork
from domain.rbac import Action
from domain.resources import ResourceService, missing_references, not_found_refs
from domain.validation import MAX_TEXT, Checker

PROCESSES = ("sequential", "hierarchical")
MAX_AGENTS = 50
MAX_TASKS = 100


@dataclass(frozen=True, slots=True)
class CrewTask:
    description: str
    expected_output: str
    agent_id: str


@dataclass(slots=True)
class Crew:
    id: str
    name: str
    process: str
    agent_ids: list[str]
    tasks: list[CrewTask]
    manager_agent_id: str | None
    manager_llm_provider_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CrewInput:
    name: str
    agent_ids: list[str]
    tasks: list[CrewTask]
    process: str | None = None
    manager_agent_id: str | None = None
    manager_llm_provider_id: str | None = None


def _validate(data: CrewInput) -> CrewInput:
    check = Checker("input.")
    name = check.text("name", data.name) or ""
    process = (data.process or "sequential").strip().lower()
    check.check("process", process in PROCESSES, "must be sequential or hierarchical")
    agent_ids = list(data.agent_ids)
    check.check("agentIds", 0 < len(agent_ids) <= MAX_AGENTS, f"must list 1 to {MAX_AGENTS} agents")
    check.check("agentIds", len(set(agent_ids)) == len(agent_ids), "must not repeat an agent")
    check.check("tasks", 0 < len(data.tasks) <= MAX_TASKS, f"must list 1 to {MAX_TASKS} tasks")
    tasks = []
    for i, task in enumerate(data.tasks):
        description = check.text(f"tasks[{i}].description", task.description, max_len=MAX_TEXT)
        expected = check.text(f"tasks[{i}].expectedOutput", task.expected_output, max_len=MAX_TEXT)
        if task.agent_id not in agent_ids:
            check.fail(f"tasks[{i}].agentId", "must be one of the crew's agentIds")
        tasks.append(CrewTask(description or "", expected or "", task.agent_id))
    if process == "hierarchical":
        check.check(
            "managerAgentId",
            bool(data.manager_agent_id or data.manager_llm_provider_id),
            "a hierarchical crew needs managerAgentId or managerLlmProviderId",
        )
        if data.manager_agent_id and data.manager_agent_id in agent_ids:
            check.fail("managerAgentId", "the manager must not also be a crew member")
    check.raise_if_any()
    return CrewInput(
        name, agent_ids, tasks, process, data.manager_agent_id, data.manager_llm_provider_id
    )


async def _check_refs(uow: TenantUnitOfWork, data: CrewInput) -> None:
    wanted = list(data.agent_ids)
    if data.manager_agent_id:
        wanted.append(data.manager_agent_id)
    found = await uow.agents.existing_ids(wanted)
    missing = missing_references("agent", data.agent_ids, found)
    if missing:
        raise not_found_refs("agent", "input.agentIds", missing)
    if data.manager_agent_id and data.manager_agent_id not in found:
        raise not_found_refs("agent", "input.managerAgentId", [data.manager_agent_id])
    if data.manager_llm_provider_id:
        found_p = await uow.providers.existing_ids([data.manager_llm_provider_id])
        if data.manager_llm_provider_id not in found_p:
            raise not_found_refs(
                "LLM provider", "input.managerLlmProviderId", [data.manager_llm_provider_id]
            )


class CrewService(ResourceService[Crew]):
    kind = "crew"
    repo_attr = "crews"

    async def list(self, p: Principal, first: int, after: str | None) -> Page[Crew]:
        return await self._list(p, first, after)

    async def create(self, p: Principal, data: CrewInput) -> Crew:
        p.require(Action.WRITE)
        data = _validate(data)
        now = datetime.now(UTC)
        crew = Crew(
            str(uuid.uuid4()),
            data.name,
            data.process or "sequential",
            data.agent_ids,
            data.tasks,
            data.manager_agent_id,
            data.manager_llm_provider_id,
            1,
            now,
            now,
        )
        return await self._insert(p, crew, lambda uow: _check_refs(uow, data))

    async def update(
        self, p: Principal, ident: str, data: CrewInput, expected_version: int | None = None
    ) -> Crew:
        p.require(Action.WRITE)
        data = _validate(data)

        async def change(uow: TenantUnitOfWork, crew: Crew) -> None:
            await _check_refs(uow, data)
            crew.name, crew.process = data.name, data.process or "sequential"
            crew.agent_ids, crew.tasks = data.agent_ids, data.tasks
            crew.manager_agent_id = data.manager_agent_id
            crew.manager_llm_provider_id = data.manager_llm_provider_id

        return await self._modify(p, ident, expected_version, change)
