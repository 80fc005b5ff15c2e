"""AGENT / CREW node rules in the domain, with in-memory fakes (no CrewAI, no services)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.agents import Agent, AgentOptions
from domain.crew_runs import (
    AgentTool,
    AgentToolCalls,
    CrewRun,
    CrewSpec,
    _CrewRunBuilder,
    crew_spec,
)
from domain.crews import Crew, CrewTask
from domain.errors import BadUserInput, NotFound
from domain.llm import LlmReply, LlmRequest, TokenCallback
from domain.tool_runs import ToolRunner
from domain.tools import Tool, ToolKind

NOW = datetime.now(UTC)


def _id() -> str:
    return str(uuid.uuid4())


def _agent(name: str, provider: str | None = "p", tools: Sequence[str] = ()) -> Agent:
    return Agent(
        _id(),
        name,
        name.title(),
        "goal",
        "story",
        provider,
        list(tools),
        AgentOptions(),
        1,
        NOW,
        NOW,
    )


def _tool(name: str, builtin: str) -> Tool:
    return Tool(
        _id(),
        name,
        "d",
        ToolKind.BUILTIN,
        {"builtin": builtin},
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        1,
        NOW,
        NOW,
    )


class _Repo:
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = {i.id: i for i in items}

    async def get_many(self, ids: Sequence[str]) -> dict[str, Any]:
        return {i: self.items[i] for i in ids if i in self.items}


class _Uow:
    def __init__(self, agents: Sequence[Agent], tools: Sequence[Tool]) -> None:
        self.agents = _Repo(agents)
        self.tools = _Repo(tools)

    async def __aenter__(self) -> _Uow:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


class _Builtins:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Mapping[str, Any]]] = []

    async def run(
        self, tenant_id: str, execution_id: str, name: str, data: Mapping[str, Any]
    ) -> Any:
        self.calls.append((name, data))
        return {"twice": data["n"] * 2}


class _Runtime:
    async def run(self, spec: CrewSpec, run: CrewRun) -> str:
        return "unused"


async def _nothing(*_: Any) -> None:
    return None


async def _no_llm(pid: str, req: LlmRequest, on_token: TokenCallback | None) -> LlmReply:
    raise AssertionError("no model call expected")


def _builder(agents: Sequence[Agent], tools: Sequence[Tool] = ()) -> _CrewRunBuilder:
    uow = _Uow(agents, tools)
    return _CrewRunBuilder(lambda schema=None: uow, _Runtime(), None, ToolRunner(None, _Builtins()))  # type: ignore[arg-type]


def _crew(agents: Sequence[Agent], tasks: Sequence[CrewTask], **over: Any) -> Crew:
    fields: dict[str, Any] = {"process": "sequential", "manager_agent_id": None}
    fields.update(over)
    return Crew(
        _id(),
        "crew",
        fields["process"],
        [a.id for a in agents],
        list(tasks),
        fields["manager_agent_id"],
        fields.get("manager_llm_provider_id"),
        1,
        NOW,
        NOW,
    )


async def test_crew_spec_keeps_order_tools_and_inputs() -> None:
    tool = _tool("calc", "json_transform")
    a, b = _agent("alpha", tools=[tool.id]), _agent("beta")
    crew = _crew([a, b], [CrewTask("one {x}", "o", a.id), CrewTask("two", "t", b.id)])
    spec = await crew_spec(_builder([a, b], [tool]), "s", crew, {"x": 1, "y": None})
    assert [s.name for s in spec.agents] == ["alpha", "beta"]
    assert [t.description for t in spec.tasks] == ["one {x}", "two"]
    assert spec.agents[0].tools[0].tool is tool and not spec.agents[0].tools[0].side_effects
    assert spec.inputs == {"x": 1, "y": ""}


async def test_crew_spec_refuses_what_cannot_run() -> None:
    a, outsider = _agent("alpha"), _agent("outsider")
    stray = _crew([a], [CrewTask("d", "e", outsider.id)])
    with pytest.raises(BadUserInput, match="outside the crew"):
        await crew_spec(_builder([a, outsider]), "s", stray, {})
    gone = _crew([a], [CrewTask("d", "e", a.id)])
    with pytest.raises(NotFound):
        await crew_spec(_builder([]), "s", gone, {})
    lost = _agent("lost", provider=None)
    with pytest.raises(BadUserInput, match="no LLM provider"):
        await crew_spec(_builder([lost]), "s", _crew([lost], [CrewTask("d", "e", lost.id)]), {})


async def test_agent_tool_calls_validate_input_and_report_errors_to_the_agent() -> None:
    builtins = _Builtins()
    calls = AgentToolCalls(ToolRunner(None, builtins))
    tool = AgentTool(_tool("calc", "json_transform"))
    run = CrewRun("t", "s", "e", "n", _no_llm, lambda *_: _nothing(), _nothing, _nothing)  # type: ignore[arg-type]
    assert await calls(run, tool, '{"n": 21}') == '{"twice": 42}'
    assert "must be a JSON object" in await calls(run, tool, "not json")
    assert "is invalid" in await calls(run, tool, {"n": "x"})
    assert builtins.calls == [("json_transform", {"n": 21})]
