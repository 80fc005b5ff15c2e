"""AGENT and CREW nodes: what one run needs from the stored agents, crews and tools.

The domain decides what runs (which agents, tasks, tools and providers, the rendered task
and inputs, what an agent's tool call may do); the `CrewRuntime` port (CrewAI, in
`runtime/`) only performs it. Everything an agent does goes back through the domain: each
model call through `LlmService` (the gateway: failover, usage, cancellation, egress policy)
and each tool call through `ToolRunner` (the sandbox).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from domain.agents import Agent
from domain.crews import Crew
from domain.errors import BadUserInput, DomainError, NotConfigured, NotFound
from domain.executions.ports import NodeContext, NodeExecutor
from domain.flows.model import FlowNode
from domain.llm import LlmReply, LlmRequest, TokenCallback
from domain.llm_calls import CallScope, LlmService
from domain.ports import TenantUnitOfWorkFactory
from domain.resources import require_id
from domain.tool_runs import ToolRunner, input_problems
from domain.tools import Tool, ToolKind

DEFAULT_EXPECTED_OUTPUT = "A complete, direct answer to the task."
TOOL_OUTPUT_LOG_CHARS = 2000
# Builtins an agent calls without side effects: their results may be cached by the runtime.
PURE_BUILTINS = frozenset({"json_transform", "file_read", "directory_read"})
# Builtins the runtime implements itself over the execution's workspace directory.
WORKSPACE_BUILTINS = frozenset({"file_read", "directory_read"})


class CrewRunFailed(DomainError):
    """The crew or agent did not reach a final answer (a model failed after its fallbacks,
    an agent broke its own rules...): the node fails with the cause."""

    code = "CREW_FAILED"


@dataclass(frozen=True, slots=True)
class AgentTool:
    """A stored tool as an agent sees it."""

    tool: Tool

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def builtin(self) -> str | None:
        if self.tool.kind is ToolKind.BUILTIN:
            return str(self.tool.config.get("builtin"))
        return None

    @property
    def side_effects(self) -> bool:
        return self.builtin not in PURE_BUILTINS

    @property
    def workspace_builtin(self) -> bool:
        return self.builtin in WORKSPACE_BUILTINS


@dataclass(frozen=True, slots=True)
class AgentSpec:
    id: str
    name: str
    role: str
    goal: str
    backstory: str
    provider_id: str
    tools: tuple[AgentTool, ...]
    max_iterations: int
    allow_delegation: bool
    temperature: float | None
    verbose: bool = False


@dataclass(frozen=True, slots=True)
class TaskSpec:
    description: str
    expected_output: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class CrewSpec:
    """One crew run: agents, ordered tasks, the process and (hierarchical) its manager."""

    name: str
    process: str  # "sequential" | "hierarchical"
    agents: tuple[AgentSpec, ...]
    tasks: tuple[TaskSpec, ...]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    manager: AgentSpec | None = None
    manager_provider_id: str | None = None


@dataclass(slots=True)
class CrewRun:
    """One AGENT / CREW node run, as the runtime sees it: where events go, how the agents
    reach models and tools. Built by the executors below; all callables are coroutines to
    run on the service's event loop."""

    tenant_id: str
    tenant_schema: str
    execution_id: str
    node_id: str
    complete: Callable[[str, LlmRequest, TokenCallback | None], Coroutine[Any, Any, LlmReply]]
    run_tool: Callable[[AgentTool, Any], Coroutine[Any, Any, str]]
    emit_token: Callable[[str], Awaitable[None]]
    log: Callable[[str, str, dict[str, Any]], Awaitable[None]]


class CrewRuntime(Protocol):
    """Performs a crew run and returns the final output text. Must be cancellable: when
    the awaiting task is cancelled no further model or tool call may start for the run."""

    async def run(self, spec: CrewSpec, run: CrewRun) -> str: ...


def _truncate(text: str, limit: int = TOOL_OUTPUT_LOG_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


class AgentToolCalls:
    """Runs an agent's tool call through the sandbox. Failures are told to the agent (as
    the tool's answer) rather than failing the node: the agent may try another way."""

    def __init__(self, runner: ToolRunner) -> None:
        self._runner = runner

    async def __call__(self, run: CrewRun, tool: AgentTool, data: Any) -> str:
        if isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else {}
            except ValueError:
                return f"Error: the input of tool {tool.name!r} must be a JSON object"
        problems = input_problems(tool.tool, data)
        if problems:
            return f"Error: the input of tool {tool.name!r} is invalid: {problems[0]}"
        try:
            outcome = await self._runner.run(run.tenant_id, tool.tool, data, run.execution_id)
        except (BadUserInput, NotConfigured) as exc:
            return f"Error: {exc.message}"
        if not outcome.ok:
            return f"Error: tool {tool.name!r} failed: {outcome.error}"
        return _as_text(outcome.output)


class _CrewRunBuilder:
    """Shared by the AGENT and CREW executors: loads what the run needs and binds it."""

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        runtime: CrewRuntime,
        llm: LlmService,
        tools: ToolRunner,
    ) -> None:
        self._uow = uow
        self.runtime = runtime
        self._llm = llm
        self._tool_calls = AgentToolCalls(tools)

    async def schema(self, ctx: NodeContext) -> str:
        if not ctx.tenant_schema:
            raise NotConfigured("the node context carries no tenant schema")
        return ctx.tenant_schema

    def bind(self, ctx: NodeContext, schema: str) -> CrewRun:
        llm = self._llm
        tool_calls = self._tool_calls

        scope = CallScope(
            tenant_id=ctx.tenant_id,
            tenant_schema=schema,
            execution_id=ctx.execution_id,
            node_id=ctx.node_id,
        )

        async def on_event(message: str, data: dict[str, Any]) -> None:
            await ctx.log(message, level="warning", **data)

        async def complete(
            provider_id: str, request: LlmRequest, on_token: TokenCallback | None
        ) -> LlmReply:
            return await llm.complete(
                scope, provider_id, request, on_token=on_token, on_event=on_event
            )

        async def log(message: str, level: str, data: dict[str, Any]) -> None:
            await ctx.log(message, level=level, **data)

        run = CrewRun(
            tenant_id=ctx.tenant_id,
            tenant_schema=schema,
            execution_id=ctx.execution_id,
            node_id=ctx.node_id,
            complete=complete,
            run_tool=lambda tool, data: tool_calls(run, tool, data),
            emit_token=ctx.emit_token,
            log=log,
        )
        return run

    async def agents(
        self, schema: str, agent_ids: Sequence[str], *, owner: str
    ) -> dict[str, AgentSpec]:
        return await load_agent_specs(self._uow, schema, agent_ids, owner=owner)


async def load_agent_specs(
    uow_factory: TenantUnitOfWorkFactory, schema: str, agent_ids: Sequence[str], *, owner: str
) -> dict[str, AgentSpec]:
    """The specs of `agent_ids` (with their tools), or NotFound naming what is gone;
    `owner` names who uses them in error messages."""
    async with uow_factory(schema) as uow:
        found: dict[str, Agent] = await uow.agents.get_many(list(agent_ids))
        missing = [a for a in agent_ids if a not in found]
        if missing:
            raise NotFound("agent", missing[0])
        tool_ids = sorted({t for a in found.values() for t in a.tool_ids})
        tools: dict[str, Tool] = await uow.tools.get_many(tool_ids) if tool_ids else {}
    specs: dict[str, AgentSpec] = {}
    for agent_id in agent_ids:
        agent = found[agent_id]
        gone = [t for t in agent.tool_ids if t not in tools]
        if gone:
            raise BadUserInput(
                f"agent {agent.name!r} of {owner} uses tool {gone[0]} which no longer exists"
            )
        if not agent.llm_provider_id:
            raise BadUserInput(
                f"agent {agent.name!r} of {owner} has no LLM provider: set its llmProviderId"
            )
        specs[agent_id] = AgentSpec(
            id=agent.id,
            name=agent.name,
            role=agent.role,
            goal=agent.goal,
            backstory=agent.backstory,
            provider_id=agent.llm_provider_id,
            tools=tuple(AgentTool(tools[t]) for t in agent.tool_ids),
            max_iterations=agent.options.max_iterations,
            allow_delegation=agent.options.allow_delegation,
            temperature=agent.options.temperature,
            verbose=agent.options.verbose,
        )
    return specs


async def _render(value: Any, ctx: NodeContext) -> Any:
    from domain.executions.builtins import render_value_async

    return await render_value_async(value, ctx.scope)


def _config_text(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else _as_text(value)
    return text.strip()


class AgentNodeExecutor:
    """AGENT node `{agentId, task, expectedOutput?}` → the agent's final answer (text).

    The agent works on one task, rendered from the node's template."""

    def __init__(self, builder: _CrewRunBuilder) -> None:
        self._b = builder

    async def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Any:
        config = node.config
        agent_id = require_id("agent", str(config.get("agentId", "")))
        schema = await self._b.schema(ctx)
        agents = await self._b.agents(schema, [agent_id], owner=f"node {node.id!r}")
        task = _config_text(await _render(config.get("task", ""), ctx))
        if not task:
            raise BadUserInput(f"node {node.id!r}: the task rendered to an empty text")
        expected = _config_text(
            await _render(config.get("expectedOutput") or DEFAULT_EXPECTED_OUTPUT, ctx)
        )
        spec = CrewSpec(
            name=f"agent {agents[agent_id].name}",
            process="sequential",
            agents=(agents[agent_id],),
            tasks=(TaskSpec(task, expected or DEFAULT_EXPECTED_OUTPUT, agent_id),),
        )
        return await self._b.runtime.run(spec, self._b.bind(ctx, schema))


class CrewNodeExecutor:
    """CREW node `{crewId, inputs: {name: template}}` → the crew's final output (text).

    The rendered inputs fill `{name}` placeholders in the crew's task descriptions and its
    agents' role, goal and backstory (CrewAI's interpolation)."""

    def __init__(self, builder: _CrewRunBuilder) -> None:
        self._b = builder

    async def __call__(self, node: FlowNode, ctx: NodeContext, /) -> Any:
        config = node.config
        crew_id = require_id("crew", str(config.get("crewId", "")))
        schema = await self._b.schema(ctx)
        async with self._b._uow(schema) as uow:
            crew: Crew | None = await uow.crews.get(crew_id)
        if crew is None:
            raise NotFound("crew", crew_id)
        raw_inputs = config.get("inputs") or {}
        if not isinstance(raw_inputs, Mapping):
            raise BadUserInput(f"node {node.id!r}: inputs must map names to templates")
        inputs = await _render(dict(raw_inputs), ctx)
        spec = await crew_spec(self._b, schema, crew, inputs)
        return await self._b.runtime.run(spec, self._b.bind(ctx, schema))


def _input_value(value: Any) -> Any:
    """CrewAI interpolates str, int, float, bool, dict and list inputs; None becomes ""."""
    return "" if value is None else value


async def crew_spec(
    builder: _CrewRunBuilder, schema: str, crew: Crew, inputs: Mapping[str, Any]
) -> CrewSpec:
    owner = f"crew {crew.name!r}"
    for i, task in enumerate(crew.tasks):
        if task.agent_id not in crew.agent_ids:
            raise BadUserInput(f"{owner}: task {i + 1} names an agent outside the crew")
    wanted = list(crew.agent_ids)
    if crew.manager_agent_id:
        wanted.append(crew.manager_agent_id)
    specs = await builder.agents(schema, wanted, owner=owner)
    manager = specs.get(crew.manager_agent_id) if crew.manager_agent_id else None
    if crew.process == "hierarchical" and manager is None and not crew.manager_llm_provider_id:
        raise BadUserInput(f"{owner} is hierarchical but has no manager agent or provider")
    return CrewSpec(
        name=crew.name,
        process=crew.process,
        agents=tuple(specs[a] for a in crew.agent_ids),
        tasks=tuple(TaskSpec(t.description, t.expected_output, t.agent_id) for t in crew.tasks),
        inputs={k: _input_value(v) for k, v in inputs.items()},
        manager=manager,
        manager_provider_id=crew.manager_llm_provider_id,
    )


def crew_executors(
    uow: TenantUnitOfWorkFactory,
    runtime: CrewRuntime,
    llm: LlmService,
    tools: ToolRunner,
) -> dict[str, NodeExecutor]:
    """The AGENT and CREW node executors over one runtime (by NodeKind value)."""
    builder = _CrewRunBuilder(uow, runtime, llm, tools)
    return {"AGENT": AgentNodeExecutor(builder), "CREW": CrewNodeExecutor(builder)}
