"""Flow types: graph nodes and edges, validation, versions."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON

from domain.errors import BadUserInput
from domain.flows import graph as g
from domain.flows import service as d
from domain.flows.model import FlowEdge as DomainEdge
from domain.flows.model import FlowNode as DomainNode
from domain.flows.model import NodeKind as DomainNodeKind
from domain.validation import page_size
from schema.agents import Agent
from schema.context import Info
from schema.crews import Crew
from schema.fields import described
from schema.providers import LlmProvider
from schema.records import from_record
from schema.relay import Connection, connection
from schema.tools import Tool

if TYPE_CHECKING:
    from schema.executions import Execution

NodeKind = strawberry.enum(DomainNodeKind, name="NodeKind")


@strawberry.type
class FlowNode:
    id: str
    kind: NodeKind  # type: ignore[valid-type]
    name: str | None
    config: JSON


@strawberry.type(description="A graph edge (Relay edge types use the <Type>Edge names).")
class FlowGraphEdge:
    source: str
    target: str
    branch: str | None


@strawberry.type
class FlowValidation:
    valid: bool
    errors: list[str]
    execution_order: list[str] = strawberry.field(description="a topological order when valid")
    field_errors: JSON = strawberry.field(description="input path → problem, for editors")

    @classmethod
    def from_domain(cls, v: g.FlowValidation) -> FlowValidation:
        return cls(
            valid=v.valid,
            errors=list(v.errors),
            execution_order=list(v.execution_order),
            field_errors=JSON(dict(v.field_errors)),
        )


def _kind(kind: str) -> Any:
    try:
        return DomainNodeKind(kind)
    except ValueError:
        return kind


@strawberry.type
class Flow:
    id: strawberry.ID
    name: str
    description: str | None
    version: int
    nodes: list[FlowNode]
    edges: list[FlowGraphEdge]
    created_at: datetime
    updated_at: datetime
    domain: strawberry.Private[d.Flow]

    @strawberry.field
    async def validation(self, info: Info) -> FlowValidation:
        return FlowValidation.from_domain(
            await info.context.loaders.flow_validation.load(self.domain)
        )

    @described("Agents referenced by AGENT nodes.")
    async def agents(self, info: Info) -> list[Agent]:
        ids = sorted(d.refs_of(self.domain.nodes).agent_ids)
        return [Agent.from_domain(a) for a in await info.context.loaders.agent.load_many(ids) if a]

    @described("Crews referenced by CREW nodes.")
    async def crews(self, info: Info) -> list[Crew]:
        ids = sorted(d.refs_of(self.domain.nodes).crew_ids)
        return [Crew.from_domain(c) for c in await info.context.loaders.crew.load_many(ids) if c]

    @described("Tools referenced by TOOL nodes.")
    async def tools(self, info: Info) -> list[Tool]:
        ids = sorted(d.refs_of(self.domain.nodes).tool_ids)
        return [Tool.from_domain(t) for t in await info.context.loaders.tool.load_many(ids) if t]

    @described("LLM providers referenced by LLM nodes.")
    async def llm_providers(self, info: Info) -> list[LlmProvider]:
        ids = sorted(d.refs_of(self.domain.nodes).llm_provider_ids)
        return [
            LlmProvider.from_domain(p)
            for p in await info.context.loaders.provider.load_many(ids)
            if p
        ]

    @described("Runs of this flow (any version), newest first.")
    async def executions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Annotated[Execution, strawberry.lazy("schema.executions")]]:
        from schema.executions import Execution

        p = await info.context.principal()
        size = page_size(first, info.context.settings.page_size_max)
        page = await info.context.services.executions.list(p, size, after, flow_id=self.domain.id)
        return connection(page, Execution.from_domain)

    @described("Every version of this flow, newest first.")
    async def versions(self, info: Info) -> list[Flow]:
        principal = await info.context.principal()
        history = await info.context.services.flows.versions(principal, self.domain.id)
        return [Flow.from_domain(f) for f in history]

    @classmethod
    def from_domain(cls, f: d.Flow) -> Flow:
        return from_record(
            cls,
            f,
            nodes=[from_record(FlowNode, n, kind=_kind(n.kind)) for n in f.nodes],
            edges=[from_record(FlowGraphEdge, e) for e in f.edges],
            domain=f,
        )


@strawberry.input
class FlowNodeInput:
    id: str
    kind: NodeKind  # type: ignore[valid-type]
    name: str | None = None
    config: JSON | None = None


@strawberry.input
class FlowEdgeInput:
    source: str
    target: str
    branch: str | None = None


@strawberry.input
class FlowInput:
    name: str
    nodes: list[FlowNodeInput]
    edges: list[FlowEdgeInput]
    description: str | None = None

    def to_domain(self) -> d.FlowInput:
        return d.FlowInput(
            self.name, graph_nodes(self.nodes), graph_edges(self.edges), self.description
        )


def graph_nodes(nodes: list[FlowNodeInput], prefix: str = "input.") -> list[DomainNode]:
    out: list[DomainNode] = []
    bad: dict[str, str] = {}
    for i, n in enumerate(nodes):
        config: object = n.config if n.config is not None else {}
        if not isinstance(config, dict):
            bad[f"{prefix}nodes[{i}].config"] = "must be a JSON object"
            config = {}
        # Strawberry hands the domain's NodeKind (a StrEnum): str() is its value.
        out.append(DomainNode(id=n.id, kind=str(n.kind), name=n.name, config=config))
    if bad:
        raise BadUserInput(f"invalid flow: {next(iter(bad))} must be a JSON object", bad)
    return out


def graph_edges(edges: list[FlowEdgeInput]) -> list[DomainEdge]:
    return [DomainEdge(source=e.source, target=e.target, branch=e.branch) for e in edges]
