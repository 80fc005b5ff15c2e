"""Flows: versioned graphs. Every update writes a new immutable version."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from domain.audit import FLOW_DELETED, NO_AUDIT, AuditRecorder
from domain.errors import BadUserInput, LimitExceeded, NotFound
from domain.flows.graph import FlowValidation, ReferenceIndex, validate_flow
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from domain.identity import Principal
from domain.ports import Page, TenantUnitOfWork, TenantUnitOfWorkFactory
from domain.rbac import Action
from domain.resources import ResourceService, missing_references, require_id
from domain.validation import MAX_TEXT, Checker

DEFAULT_MAX_NODES = 2000

# Node config key → (resource kind, repository attribute) it references.
_REF_KEYS = {
    "agentId": ("agent", "agents"),
    "crewId": ("crew", "crews"),
    "toolId": ("tool", "tools"),
    "providerId": ("LLM provider", "providers"),
}


@dataclass(slots=True)
class Flow:
    id: str
    name: str
    description: str | None
    version: int
    nodes: tuple[FlowNode, ...]
    edges: tuple[FlowEdge, ...]
    created_at: datetime
    updated_at: datetime

    @property
    def graph(self) -> FlowGraph:
        return FlowGraph(self.nodes, self.edges)


@dataclass(frozen=True, slots=True)
class FlowInput:
    name: str
    nodes: list[FlowNode]
    edges: list[FlowEdge]
    description: str | None = None


@dataclass(slots=True)
class _Collected:
    by_attr: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # attr → id → paths


def _collect_refs(nodes: list[FlowNode]) -> _Collected:
    out = _Collected()
    for i, node in enumerate(nodes):
        config = node.config if isinstance(node.config, dict) else {}
        for key, (_, attr) in _REF_KEYS.items():
            value = config.get(key)
            if isinstance(value, str) and value:
                out.by_attr.setdefault(attr, {}).setdefault(value, []).append(
                    f"input.nodes[{i}].config.{key}"
                )
    return out


def _index(by_attr: Mapping[str, Iterable[str]]) -> ReferenceIndex:
    return ReferenceIndex(
        agent_ids=frozenset(by_attr.get("agents", ())),
        crew_ids=frozenset(by_attr.get("crews", ())),
        tool_ids=frozenset(by_attr.get("tools", ())),
        llm_provider_ids=frozenset(by_attr.get("providers", ())),
    )


def refs_of(nodes: tuple[FlowNode, ...] | list[FlowNode]) -> ReferenceIndex:
    """The ids the nodes reference, whether they exist or not."""
    return _index(_collect_refs(list(nodes)).by_attr)


async def reference_index(
    uow: TenantUnitOfWork, nodes: list[FlowNode] | tuple[FlowNode, ...]
) -> ReferenceIndex:
    """The referenced ids that exist in this tenant (others' ids simply are not found)."""
    by = _collect_refs(list(nodes)).by_attr
    wanted = {attr: list(by[attr]) for _, attr in _REF_KEYS.values() if by.get(attr)}
    found = await uow.existing_ids(wanted) if wanted else {}
    return _index({attr: found.get(attr, set()) for _, attr in _REF_KEYS.values()})


async def _check_refs_exist(uow: TenantUnitOfWork, nodes: list[FlowNode]) -> None:
    by = _collect_refs(nodes).by_attr
    fields: dict[str, str] = {}
    for kind, attr in _REF_KEYS.values():
        paths = by.get(attr, {})
        if not paths:
            continue
        found = await getattr(uow, attr).existing_ids(list(paths))
        for missing in missing_references(kind, list(paths), found):
            for path in paths[missing]:
                fields[path] = f"{kind} {missing} not found"
    if fields:
        err = NotFound(
            "referenced resource", ", ".join(sorted({m.split()[-3] for m in fields.values()}))
        )
        err.message = "flow references resources that do not exist: " + "; ".join(
            f"{k}: {v}" for k, v in fields.items()
        )
        err.args = (err.message,)
        err.extensions["fields"] = fields
        raise err


def _first_version(data: FlowInput, now: datetime) -> Flow:
    return Flow(
        str(uuid.uuid4()),
        data.name,
        data.description,
        1,
        tuple(data.nodes),
        tuple(data.edges),
        now,
        now,
    )


class FlowService(ResourceService[Flow]):
    """Deleting a flow is a soft delete (see SqlFlows.delete): the flow disappears and
    frees its references and name; its versions stay for executions that pinned one."""

    kind = "flow"
    repo_attr = "flows"
    audit_deleted = FLOW_DELETED

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        max_nodes: int = DEFAULT_MAX_NODES,
        audit: AuditRecorder = NO_AUDIT,
    ) -> None:
        super().__init__(uow, audit)
        self.max_nodes = max_nodes

    def _clean(self, data: FlowInput) -> FlowInput:
        check = Checker("input.")
        name = check.text("name", data.name) or ""
        description = check.text("description", data.description, required=False, max_len=MAX_TEXT)
        check.raise_if_any()
        if len(data.nodes) > self.max_nodes:
            raise LimitExceeded(
                f"a flow may have at most {self.max_nodes} nodes; this one has {len(data.nodes)}",
                extensions={"limit": "maxNodesPerFlow", "max": self.max_nodes},
            )
        if len(data.edges) > self.max_nodes * 4:
            raise LimitExceeded(
                f"a flow may have at most {self.max_nodes * 4} edges",
                extensions={"limit": "maxEdgesPerFlow", "max": self.max_nodes * 4},
            )
        return FlowInput(name, data.nodes, data.edges, description or None)

    async def validate(
        self, p: Principal, nodes: list[FlowNode], edges: list[FlowEdge]
    ) -> FlowValidation:
        p.require(Action.READ)
        if len(nodes) > self.max_nodes:
            raise LimitExceeded(f"a flow may have at most {self.max_nodes} nodes")
        async with self._uow(p.tenant_schema) as uow:
            refs = await reference_index(uow, nodes)
        return validate_flow(FlowGraph(tuple(nodes), tuple(edges)), refs)

    async def validations_of(
        self, p: Principal, flows: Sequence[Flow]
    ) -> builtins.list[FlowValidation]:
        """Stored flows checked as `validate` checks drafts, with one reference lookup for
        all of them (the `Flow.validation` DataLoader)."""
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            refs = await reference_index(uow, [n for f in flows for n in f.nodes])
        return [validate_flow(f.graph, refs) for f in flows]

    async def _check_graph(self, uow: TenantUnitOfWork, data: FlowInput) -> None:
        """References to missing (or other tenants') resources are NOT_FOUND; any other
        problem is BAD_USER_INPUT naming each offending path. Nothing invalid is stored,
        so `executeFlow` always finds a runnable graph (`validateFlow` checks drafts)."""
        await _check_refs_exist(uow, data.nodes)
        refs = await reference_index(uow, data.nodes)
        result = validate_flow(FlowGraph(tuple(data.nodes), tuple(data.edges)), refs)
        if not result.valid:
            fields = {f"input.{k}": v for k, v in result.field_errors.items()}
            raise BadUserInput(
                f"invalid flow: {result.errors[0]}", fields or {"input.nodes": result.errors[0]}
            )

    async def list(
        self, p: Principal, first: int, after: str | None, search: str | None = None
    ) -> Page[Flow]:
        return await self._list(p, first, after, search=search)

    async def version(self, p: Principal, ident: str, version: int) -> Flow:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            found = await uow.flows.get_version(require_id("flow", ident), version)
        if found is None:
            raise NotFound(f"version {version} of flow", ident)
        return found

    async def versions(self, p: Principal, ident: str) -> builtins.list[Flow]:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return await uow.flows.versions(require_id("flow", ident))

    async def pinned_versions(
        self, p: Principal, keys: Sequence[tuple[str, int]]
    ) -> builtins.list[Flow | None]:
        """(flow id, version) pairs pinned by executions, in order; also versions of
        deleted flows, whose runs stay readable (the `Execution.flow` DataLoader)."""
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            return [await uow.flows.get_version(flow_id, version) for flow_id, version in keys]

    async def create(self, p: Principal, data: FlowInput) -> Flow:
        p.require(Action.WRITE)
        data = self._clean(data)
        flow = _first_version(data, datetime.now(UTC))
        return await self._insert(p, flow, lambda uow: self._check_graph(uow, data))

    async def create_in(
        self, uow: TenantUnitOfWork, p: Principal, data: FlowInput, now: datetime
    ) -> Flow:
        """A new flow written in the caller's transaction, through the same checks and
        storage steps as `create` (importFlow: the flow's references resolve to rows
        written earlier in that transaction). The caller checked the permission, chose a
        free name and commits."""
        data = self._clean(data)
        await self._check_graph(uow, data)
        flow = _first_version(data, now)
        await uow.flows.add(flow)
        await self._stored(uow, p, flow)
        return flow

    async def update(
        self, p: Principal, ident: str, data: FlowInput, expected_version: int | None = None
    ) -> Flow:
        p.require(Action.WRITE)
        data = self._clean(data)

        async def change(uow: TenantUnitOfWork, flow: Flow) -> None:
            await self._check_graph(uow, data)
            flow.name, flow.description = data.name, data.description
            flow.nodes, flow.edges = tuple(data.nodes), tuple(data.edges)

        return await self._modify(p, ident, expected_version, change)

    async def _stored(self, uow: TenantUnitOfWork, p: Principal, entity: Flow) -> None:
        """Every write is a new immutable version, with the references it holds."""
        await uow.flows.add_version(entity, p.user_id or p.api_key_id)
        await uow.flows.set_refs(entity.id, refs_of(entity.nodes))
