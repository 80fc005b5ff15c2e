"""Stored agents, crews and tasks → CrewAI objects, built fresh for every run (never cached
across runs or tenants: CrewAI objects carry per-run state such as tool usage counts).

Imports CrewAI: import this module only after `runtime.crewai_env.load()`.
"""

from __future__ import annotations

from pathlib import Path

from crewai import Agent, Crew, Process, Task

from domain.crew_runs import AgentSpec, CrewSpec
from runtime.crewai_llm import GatewayLLM
from runtime.crewai_tools import agent_tools


def gateway_llm(provider_id: str, temperature: float | None = None) -> GatewayLLM:
    # `model` is only a label inside CrewAI: the stored provider decides the real model.
    return GatewayLLM(
        model=f"crewgraph/{provider_id}", provider_id=provider_id, temperature=temperature
    )


def build_agent(spec: AgentSpec, workspace: Path, *, manager: bool = False) -> Agent:
    return Agent(
        role=spec.role,
        goal=spec.goal,
        backstory=spec.backstory,
        llm=gateway_llm(spec.provider_id, spec.temperature),
        tools=[] if manager else agent_tools(spec.tools, workspace),
        max_iter=spec.max_iterations,
        allow_delegation=True if manager else spec.allow_delegation,
        # Never print to the server's stdout: events are the run's log.
        verbose=False,
        # The gateway retries and fails over; a whole-task retry would repeat every call.
        max_retry_limit=0,
        respect_context_window=True,
    )


def build_crew(spec: CrewSpec, workspace: Path) -> Crew:
    agents = {a.id: build_agent(a, workspace) for a in spec.agents}
    tasks = [
        Task(description=t.description, expected_output=t.expected_output, agent=agents[t.agent_id])
        for t in spec.tasks
    ]
    if spec.process == "hierarchical":
        if spec.manager is not None:
            return Crew(
                name=spec.name,
                agents=list(agents.values()),
                tasks=tasks,
                process=Process.hierarchical,
                manager_agent=build_agent(spec.manager, workspace, manager=True),
                verbose=False,
                tracing=False,
            )
        assert spec.manager_provider_id is not None
        return Crew(
            name=spec.name,
            agents=list(agents.values()),
            tasks=tasks,
            process=Process.hierarchical,
            manager_llm=gateway_llm(spec.manager_provider_id),
            verbose=False,
            tracing=False,
        )
    return Crew(
        name=spec.name,
        agents=list(agents.values()),
        tasks=tasks,
        process=Process.sequential,
        verbose=False,
        tracing=False,
    )
