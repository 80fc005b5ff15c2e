"""Flow documents: a flow and everything it uses as one portable, versioned JSON document.

``exportFlow`` writes one; ``importFlow`` recreates it in the caller's tenant, in one
transaction; the shipped templates are such documents. The document (format
``crewgraph.flow/v1``)::

    {"format": "crewgraph.flow/v1",
     "flow": {"name", "description", "nodes": [{id, kind, name, config}], "edges": [...]},
     "providers": [{"id", "name", "model"}],
     "tools": [{"id", "name", "description", "kind", "config", "inputSchema"}],
     "agents": [{"id", "name", "role", "goal", "backstory", "llmProviderId", "toolIds",
                 "maxIterations", "allowDelegation", "verbose", "temperature"}],
     "crews": [{"id", "name", "process", "agentIds", "tasks", "managerAgentId",
                "managerLlmProviderId"}]}

The ``id`` of an entry is a reference local to the document (``agent-1``, ...); node
configs (``agentId``, ``crewId``, ``toolId``, ``providerId``), agents and crews point at
entries by it. Document ids are never taken for database ids: a reference to anything but
an entry of the document is refused, so a document cannot reach another tenant's rows.
Providers carry their name and model only (never a key, URL or id): an import binds each
to a provider of the importing tenant, by ``providerMap`` or else by name.

Exports are deterministic: entries sorted by name, references numbered in that order, so
export → import elsewhere → export gives the same document.
"""

from __future__ import annotations

import enum
import importlib.resources
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from domain.agents import Agent, AgentInput, AgentOptions
from domain.agents import _validate as _validate_agent
from domain.crews import Crew, CrewInput, CrewTask
from domain.crews import _validate as _validate_crew
from domain.errors import BadUserInput, Conflict, LimitExceeded, NotFound
from domain.flows.graph import ReferenceIndex, validate_flow
from domain.flows.model import FlowEdge, FlowGraph, FlowNode
from domain.flows.service import DEFAULT_MAX_NODES, Flow, FlowInput, FlowService
from domain.identity import Principal
from domain.ports import ResourceRepository, TenantUnitOfWork, TenantUnitOfWorkFactory
from domain.providers import LlmProvider
from domain.rbac import Action
from domain.resources import require_id
from domain.tools import Tool, ToolInput, ToolKind
from domain.tools import _validate as _validate_tool
from domain.validation import MAX_NAME, MAX_TEXT, Checker

FORMAT = "crewgraph.flow/v1"
#: the largest document accepted (its compact JSON size), checked before anything else
DEFAULT_MAX_DOCUMENT_BYTES = 1_000_000
MAX_DEPTH = 64  # nesting of JSON values anywhere in a document
MAX_ENTRIES = 500  # providers, tools, agents or crews in one document (each)
MAX_REF_LENGTH = 128
MAX_RENAME_ATTEMPTS = 1000

# Node config key → the document section its value refers to (the keys flows reference
# resources by, on any node kind: see domain.flows.service).
NODE_REF_KEYS = {
    "agentId": "agents",
    "crewId": "crews",
    "toolId": "tools",
    "providerId": "providers",
}
_SECTION_KIND = {"providers": "provider", "tools": "tool", "agents": "agent", "crews": "crew"}
_TOP_KEYS = ("format", "flow", "providers", "tools", "agents", "crews")


class ImportConflict(enum.StrEnum):
    """What an import does with a name already taken in the tenant."""

    FAIL = "FAIL"  # CONFLICT naming every clash; nothing is written
    RENAME = "RENAME"  # the imported one is named "<name> (2)" (or 3, 4, ...)
    REUSE = "REUSE"  # bind to the existing one (the flow itself is renamed instead)


# --------------------------------------------------------------------------------------------
# The document as values


@dataclass(frozen=True, slots=True)
class DocProvider:
    ref: str
    name: str
    model: str


@dataclass(frozen=True, slots=True)
class DocTool:
    ref: str
    name: str
    description: str
    kind: ToolKind
    config: dict[str, Any]
    input_schema: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class DocAgent:
    ref: str
    name: str
    role: str
    goal: str
    backstory: str
    provider: str | None  # a DocProvider ref
    tools: tuple[str, ...]  # DocTool refs
    options: AgentOptions


@dataclass(frozen=True, slots=True)
class DocCrew:
    ref: str
    name: str
    process: str
    agents: tuple[str, ...]  # DocAgent refs
    tasks: tuple[CrewTask, ...]  # agent_id: a DocAgent ref
    manager_agent: str | None
    manager_provider: str | None


@dataclass(frozen=True, slots=True)
class FlowDocument:
    name: str
    description: str | None
    nodes: tuple[FlowNode, ...]  # configs reference entries by their document ids
    edges: tuple[FlowEdge, ...]
    providers: tuple[DocProvider, ...] = ()
    tools: tuple[DocTool, ...] = ()
    agents: tuple[DocAgent, ...] = ()
    crews: tuple[DocCrew, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form (what exportFlow returns)."""
        return {
            "format": FORMAT,
            "flow": {
                "name": self.name,
                "description": self.description,
                "nodes": [
                    {"id": n.id, "kind": n.kind, "name": n.name, "config": n.config}
                    for n in self.nodes
                ],
                "edges": [
                    {"source": e.source, "target": e.target, "branch": e.branch} for e in self.edges
                ],
            },
            "providers": [{"id": p.ref, "name": p.name, "model": p.model} for p in self.providers],
            "tools": [
                {
                    "id": t.ref,
                    "name": t.name,
                    "description": t.description,
                    "kind": t.kind.value,
                    "config": t.config,
                    "inputSchema": t.input_schema,
                }
                for t in self.tools
            ],
            "agents": [
                {
                    "id": a.ref,
                    "name": a.name,
                    "role": a.role,
                    "goal": a.goal,
                    "backstory": a.backstory,
                    "llmProviderId": a.provider,
                    "toolIds": list(a.tools),
                    **a.options.to_json(),
                }
                for a in self.agents
            ],
            "crews": [
                {
                    "id": c.ref,
                    "name": c.name,
                    "process": c.process,
                    "agentIds": list(c.agents),
                    "tasks": [
                        {
                            "description": t.description,
                            "expectedOutput": t.expected_output,
                            "agentId": t.agent_id,
                        }
                        for t in c.tasks
                    ],
                    "managerAgentId": c.manager_agent,
                    "managerLlmProviderId": c.manager_provider,
                }
                for c in self.crews
            ],
        }


# --------------------------------------------------------------------------------------------
# Export (pure): stored entities → document


class _Refs:
    """Database id → document id, numbered in name order per section."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}

    def number(self, prefix: str, items: Iterable[tuple[str, str]]) -> None:
        """`items`: (database id, name); numbered in name order."""
        for n, (ident, _) in enumerate(sorted(items, key=lambda i: (i[1], i[0])), start=1):
            self.by_id[ident] = f"{prefix}-{n}"

    def __call__(self, ident: str | None) -> str | None:
        if ident is None:
            return None
        return self.by_id[ident]

    def each(self, idents: Iterable[str]) -> tuple[str, ...]:
        return tuple(self.by_id[i] for i in idents)


def build_document(
    flow: Flow,
    providers: Iterable[LlmProvider],
    tools: Iterable[Tool],
    agents: Iterable[Agent],
    crews: Iterable[Crew],
) -> FlowDocument:
    """The document of `flow` with the resources it uses (the caller found them all)."""
    providers = sorted(providers, key=lambda p: (p.name, p.id))
    tools = sorted(tools, key=lambda t: (t.name, t.id))
    agents = sorted(agents, key=lambda a: (a.name, a.id))
    crews = sorted(crews, key=lambda c: (c.name, c.id))
    refs = {section: _Refs() for section in _SECTION_KIND}
    refs["providers"].number("provider", ((p.id, p.name) for p in providers))
    refs["tools"].number("tool", ((t.id, t.name) for t in tools))
    refs["agents"].number("agent", ((a.id, a.name) for a in agents))
    refs["crews"].number("crew", ((c.id, c.name) for c in crews))
    pr, tr, ar = refs["providers"], refs["tools"], refs["agents"]

    nodes = []
    for node in flow.nodes:
        config = dict(node.config)
        for key, section in NODE_REF_KEYS.items():
            value = config.get(key)
            if isinstance(value, str) and value:
                config[key] = refs[section](value)
        nodes.append(FlowNode(node.id, node.kind, node.name, config))
    return FlowDocument(
        name=flow.name,
        description=flow.description,
        nodes=tuple(nodes),
        edges=flow.edges,
        providers=tuple(DocProvider(pr.by_id[p.id], p.name, p.model) for p in providers),
        tools=tuple(
            DocTool(tr.by_id[t.id], t.name, t.description, t.kind, t.config, t.input_schema)
            for t in tools
        ),
        agents=tuple(
            DocAgent(
                ar.by_id[a.id],
                a.name,
                a.role,
                a.goal,
                a.backstory,
                pr(a.llm_provider_id),
                tr.each(a.tool_ids),
                a.options,
            )
            for a in agents
        ),
        crews=tuple(
            DocCrew(
                refs["crews"].by_id[c.id],
                c.name,
                c.process,
                ar.each(c.agent_ids),
                tuple(
                    CrewTask(t.description, t.expected_output, ar.by_id[t.agent_id])
                    for t in c.tasks
                ),
                ar(c.manager_agent_id),
                pr(c.manager_llm_provider_id),
            )
            for c in crews
        ),
    )


def node_references(nodes: Iterable[FlowNode]) -> dict[str, list[str]]:
    """Section → the ids the nodes' configs reference, in first-use order."""
    found: dict[str, dict[str, None]] = {section: {} for section in _SECTION_KIND}
    for node in nodes:
        config = node.config if isinstance(node.config, dict) else {}
        for key, section in NODE_REF_KEYS.items():
            value = config.get(key)
            if isinstance(value, str) and value:
                found[section][value] = None
    return {section: list(ids) for section, ids in found.items()}


# --------------------------------------------------------------------------------------------
# Import (pure): JSON → a checked document


def check_size(raw: object, max_bytes: int) -> None:
    """Refuse a document whose JSON is larger than `max_bytes` or nested deeper than
    MAX_DEPTH, walking it without recursion and stopping as soon as the limit is passed
    (so a huge document costs at most `max_bytes` of work)."""
    size = 0
    stack: list[tuple[object, int]] = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadUserInput(
                f"document is nested deeper than {MAX_DEPTH} levels",
                {"document": f"nested deeper than {MAX_DEPTH} levels"},
            )
        if isinstance(value, dict | list | tuple):
            size += 2 + len(value)  # counted before its items are visited
        elif isinstance(value, str):
            size += len(value) + 2
        else:
            size += 5
        if size > max_bytes:
            raise LimitExceeded(
                f"document is larger than {max_bytes} bytes",
                extensions={"limit": "maxFlowDocumentBytes", "max": max_bytes},
            )
        if isinstance(value, dict):
            for key, item in value.items():
                size += len(key) + 3 if isinstance(key, str) else 8
                stack.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)


class _Reader:
    """Reads JSON values by path, collecting every problem (like domain.validation.Checker)."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def fail(self, path: str, message: str) -> None:
        self.errors.setdefault(path, message)

    def obj(self, path: str, value: object, allowed: Collection[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, "must be a JSON object")
            return None
        unknown = sorted(k for k in value if k not in allowed)
        if unknown:
            self.fail(
                f"{path}.{unknown[0]}", f"unknown field (expected one of {', '.join(allowed)})"
            )
        return value

    def list(self, path: str, value: object, *, limit: int = MAX_ENTRIES) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        if len(value) > limit:
            self.fail(path, f"must have at most {limit} entries")
            return []
        return value

    def text(self, path: str, value: object, *, required: bool = True) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str):
            self.fail(path, "must be a string")
            return None
        return value

    def ref(self, path: str, value: object) -> str | None:
        text = self.text(path, value)
        if text is not None and not (0 < len(text) <= MAX_REF_LENGTH):
            self.fail(path, f"must be 1 to {MAX_REF_LENGTH} characters")
            return None
        return text

    def optional(self, path: str, value: object, types: tuple[type, ...], what: str) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) and bool not in types:
            self.fail(path, f"must be {what}")
            return None
        if not isinstance(value, types):
            self.fail(path, f"must be {what}")
            return None
        return value


def _reprefix(err: BadUserInput, prefix: str, into: dict[str, str]) -> None:
    """Errors of a resource validator (keyed "input.<field>") under `prefix`."""
    fields = err.fields or {"": err.message}
    for key, message in fields.items():
        rest = key.removeprefix("input.")
        into.setdefault(f"{prefix}.{rest}" if rest else prefix, message)


def _section_entries(
    r: _Reader, raw: dict[str, Any], section: str
) -> list[tuple[str, dict[str, Any]]]:
    """(path, entry) of each well-formed-enough entry of a section."""
    out = []
    for i, entry in enumerate(r.list(f"document.{section}", raw.get(section))):
        path = f"document.{section}[{i}]"
        if isinstance(entry, dict):
            out.append((path, entry))
        else:
            r.fail(path, "must be a JSON object")
    return out


def _ids_and_names(r: _Reader, section: str, entries: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """The section's document ids; refuses repeated ids and names."""
    ids: dict[str, str] = {}
    names: dict[str, str] = {}
    for path, entry in entries:
        ref = r.ref(f"{path}.id", entry.get("id"))
        if ref is not None:
            if ref in ids:
                r.fail(f"{path}.id", f"repeats the id {ref!r} of {ids[ref]}")
            ids.setdefault(ref, path)
        name = entry.get("name")
        if isinstance(name, str):
            key = name.strip()
            if key in names:
                kind = _SECTION_KIND[section]
                r.fail(f"{path}.name", f"repeats the {kind} name {key!r} of {names[key]}")
            names.setdefault(key, path)
    return set(ids)


def _check_ref(r: _Reader, path: str, value: object, known: set[str], kind: str) -> str | None:
    ref = r.ref(path, value)
    if ref is not None and ref not in known:
        r.fail(path, f"names no {kind} of this document ({ref!r})")
        return None
    return ref


def _ref_list(
    r: _Reader, path: str, value: object, known: set[str], kind: str, limit: int
) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(r.list(path, value, limit=limit)):
        ref = _check_ref(r, f"{path}[{i}]", item, known, kind)
        if ref is not None:
            out.append(ref)
    return tuple(out)


def parse_document(
    raw: object,
    *,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
    allowed_images: Collection[str] | None = None,
) -> FlowDocument:
    """Check a document completely and return it as values, or raise: LIMIT_EXCEEDED
    over the size or node limits, BAD_USER_INPUT naming every problem otherwise (paths
    like ``document.agents[2].toolIds[0]``). Nothing here touches storage."""
    check_size(raw, max_bytes)
    r = _Reader()
    top = r.obj("document", raw, _TOP_KEYS)
    if top is None:
        raise BadUserInput("invalid flow document: must be a JSON object", r.errors)
    if top.get("format") != FORMAT:
        found = top.get("format")
        shown = repr(found) if isinstance(found, str) and len(found) <= 100 else "missing"
        raise BadUserInput(
            f"unknown flow document format {shown}: this server reads {FORMAT!r}",
            {"document.format": f"must be {FORMAT!r}"},
        )
    flow = r.obj("document.flow", top.get("flow"), ("name", "description", "nodes", "edges"))
    flow = flow or {}
    raw_nodes = flow.get("nodes")
    if isinstance(raw_nodes, list) and len(raw_nodes) > max_nodes:
        raise LimitExceeded(
            f"a flow may have at most {max_nodes} nodes; this one has {len(raw_nodes)}",
            extensions={"limit": "maxNodesPerFlow", "max": max_nodes},
        )
    raw_edges = flow.get("edges")
    if isinstance(raw_edges, list) and len(raw_edges) > max_nodes * 4:
        raise LimitExceeded(
            f"a flow may have at most {max_nodes * 4} edges",
            extensions={"limit": "maxEdgesPerFlow", "max": max_nodes * 4},
        )

    sections = {s: _section_entries(r, top, s) for s in _SECTION_KIND}
    known = {s: _ids_and_names(r, s, entries) for s, entries in sections.items()}

    providers = tuple(_provider(r, path, e) for path, e in sections["providers"])
    tools = tuple(_tool(r, path, e, allowed_images) for path, e in sections["tools"])
    agents = tuple(_agent(r, path, e, known) for path, e in sections["agents"])
    crews = tuple(_crew(r, path, e, known) for path, e in sections["crews"])

    check = Checker("document.flow.")
    name = check.text("name", r.text("document.flow.name", flow.get("name"))) or ""
    description = r.text("document.flow.description", flow.get("description"), required=False)
    description = check.text("description", description, required=False, max_len=MAX_TEXT)
    for key, message in check.errors.items():
        r.fail(key, message)
    nodes = _nodes(r, raw_nodes, known)
    edges = _edges(r, raw_edges)

    if r.errors:
        raise _invalid(r.errors)
    index = ReferenceIndex(
        agent_ids=frozenset(known["agents"]),
        crew_ids=frozenset(known["crews"]),
        tool_ids=frozenset(known["tools"]),
        llm_provider_ids=frozenset(known["providers"]),
    )
    result = validate_flow(FlowGraph(nodes, edges), index)
    if not result.valid:
        fields = {f"document.flow.{k}": v for k, v in result.field_errors.items()}
        raise BadUserInput(
            f"invalid flow document: {result.errors[0]}",
            fields or {"document.flow.nodes": result.errors[0]},
        )
    document = FlowDocument(
        name,
        description or None,
        nodes,
        edges,
        tuple(p for p in providers if p is not None),
        tuple(t for t in tools if t is not None),
        tuple(a for a in agents if a is not None),
        tuple(c for c in crews if c is not None),
    )
    _check_all_used(document)
    return document


def _invalid(errors: Mapping[str, str]) -> BadUserInput:
    first = next(iter(errors.items()))
    more = len(errors) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return BadUserInput(f"invalid flow document: {first[0]} {first[1]}{suffix}", errors)


def _provider(r: _Reader, path: str, e: dict[str, Any]) -> DocProvider | None:
    r.obj(path, e, ("id", "name", "model"))
    name = r.text(f"{path}.name", e.get("name"))
    model = r.text(f"{path}.model", e.get("model"), required=False)
    if name is not None and not (0 < len(name.strip()) <= MAX_NAME):
        r.fail(f"{path}.name", f"must be 1 to {MAX_NAME} characters")
    if model is not None and len(model) > MAX_NAME:
        r.fail(f"{path}.model", f"must be at most {MAX_NAME} characters")
    ref = e.get("id")
    if name is None or not isinstance(ref, str):
        return None
    return DocProvider(ref, name.strip(), model or "")


def _tool(
    r: _Reader, path: str, e: dict[str, Any], allowed_images: Collection[str] | None
) -> DocTool | None:
    r.obj(path, e, ("id", "name", "description", "kind", "config", "inputSchema"))
    kind_text = r.text(f"{path}.kind", e.get("kind"))
    kind: ToolKind | None = None
    if kind_text is not None:
        try:
            kind = ToolKind(kind_text)
        except ValueError:
            r.fail(f"{path}.kind", f"must be one of {', '.join(k.value for k in ToolKind)}")
    name = r.text(f"{path}.name", e.get("name"))
    description = r.text(f"{path}.description", e.get("description"), required=False) or ""
    ref = e.get("id")
    if kind is None or name is None or not isinstance(ref, str):
        return None
    try:
        # The same rules as createTool: custom code is parsed (never run), images allowed.
        data = _validate_tool(
            ToolInput(name, description, kind, e.get("config"), e.get("inputSchema")),
            allowed_images,
        )
    except BadUserInput as err:
        _reprefix(err, path, r.errors)
        return None
    return DocTool(ref, data.name, data.description, kind, data.config, data.input_schema)


_AGENT_KEYS = (
    "id",
    "name",
    "role",
    "goal",
    "backstory",
    "llmProviderId",
    "toolIds",
    "maxIterations",
    "allowDelegation",
    "verbose",
    "temperature",
)


def _agent(r: _Reader, path: str, e: dict[str, Any], known: dict[str, set[str]]) -> DocAgent | None:
    r.obj(path, e, _AGENT_KEYS)
    before = len(r.errors)
    texts = {k: r.text(f"{path}.{k}", e.get(k)) for k in ("name", "role", "goal", "backstory")}
    provider = None
    if e.get("llmProviderId") is not None:
        provider = _check_ref(
            r, f"{path}.llmProviderId", e["llmProviderId"], known["providers"], "provider"
        )
    tools = _ref_list(r, f"{path}.toolIds", e.get("toolIds"), known["tools"], "tool", 50)
    iterations = r.optional(f"{path}.maxIterations", e.get("maxIterations"), (int,), "an integer")
    delegation = r.optional(
        f"{path}.allowDelegation", e.get("allowDelegation"), (bool,), "true or false"
    )
    verbose = r.optional(f"{path}.verbose", e.get("verbose"), (bool,), "true or false")
    temperature = r.optional(f"{path}.temperature", e.get("temperature"), (int, float), "a number")
    ref = e.get("id")
    if len(r.errors) > before or not isinstance(ref, str):
        return None
    try:
        data, options = _validate_agent(
            AgentInput(
                texts["name"] or "",
                texts["role"] or "",
                texts["goal"] or "",
                texts["backstory"] or "",
                provider,
                list(tools),
                iterations,
                delegation,
                verbose,
                None if temperature is None else float(temperature),
            )
        )
    except BadUserInput as err:
        _reprefix(err, path, r.errors)
        return None
    return DocAgent(ref, data.name, data.role, data.goal, data.backstory, provider, tools, options)


_CREW_KEYS = (
    "id",
    "name",
    "process",
    "agentIds",
    "tasks",
    "managerAgentId",
    "managerLlmProviderId",
)


def _crew(r: _Reader, path: str, e: dict[str, Any], known: dict[str, set[str]]) -> DocCrew | None:
    r.obj(path, e, _CREW_KEYS)
    before = len(r.errors)
    name = r.text(f"{path}.name", e.get("name"))
    process = r.text(f"{path}.process", e.get("process"), required=False)
    agents = _ref_list(r, f"{path}.agentIds", e.get("agentIds"), known["agents"], "agent", 50)
    tasks = []
    for i, task in enumerate(r.list(f"{path}.tasks", e.get("tasks"), limit=100)):
        tpath = f"{path}.tasks[{i}]"
        t = r.obj(tpath, task, ("description", "expectedOutput", "agentId"))
        if t is None:
            continue
        description = r.text(f"{tpath}.description", t.get("description"))
        expected = r.text(f"{tpath}.expectedOutput", t.get("expectedOutput"))
        agent = _check_ref(r, f"{tpath}.agentId", t.get("agentId"), known["agents"], "agent")
        if description is not None and expected is not None and agent is not None:
            tasks.append(CrewTask(description, expected, agent))
    manager = None
    if e.get("managerAgentId") is not None:
        manager = _check_ref(
            r, f"{path}.managerAgentId", e["managerAgentId"], known["agents"], "agent"
        )
    manager_llm = None
    if e.get("managerLlmProviderId") is not None:
        manager_llm = _check_ref(
            r,
            f"{path}.managerLlmProviderId",
            e["managerLlmProviderId"],
            known["providers"],
            "provider",
        )
    ref = e.get("id")
    if len(r.errors) > before or name is None or not isinstance(ref, str):
        return None
    try:
        data = _validate_crew(CrewInput(name, list(agents), tasks, process, manager, manager_llm))
    except BadUserInput as err:
        _reprefix(err, path, r.errors)
        return None
    return DocCrew(
        ref,
        data.name,
        data.process or "sequential",
        tuple(data.agent_ids),
        tuple(data.tasks),
        data.manager_agent_id,
        data.manager_llm_provider_id,
    )


def _nodes(r: _Reader, raw: object, known: dict[str, set[str]]) -> tuple[FlowNode, ...]:
    nodes = []
    for i, node in enumerate(r.list("document.flow.nodes", raw, limit=10**9)):
        path = f"document.flow.nodes[{i}]"
        n = r.obj(path, node, ("id", "kind", "name", "config"))
        if n is None:
            continue
        node_id = r.text(f"{path}.id", n.get("id"))
        kind = r.text(f"{path}.kind", n.get("kind"))
        name = r.text(f"{path}.name", n.get("name"), required=False)
        config = n.get("config")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            r.fail(f"{path}.config", "must be a JSON object")
            continue
        for key, section in NODE_REF_KEYS.items():
            if key in config:
                # Only this document's entries: never an id of the database.
                _check_ref(r, f"{path}.config.{key}", config[key], known[section], section[:-1])
        if node_id is not None and kind is not None:
            nodes.append(FlowNode(node_id, kind, name, config))
    return tuple(nodes)


def _edges(r: _Reader, raw: object) -> tuple[FlowEdge, ...]:
    edges = []
    for i, edge in enumerate(r.list("document.flow.edges", raw, limit=10**9)):
        path = f"document.flow.edges[{i}]"
        e = r.obj(path, edge, ("source", "target", "branch"))
        if e is None:
            continue
        source = r.text(f"{path}.source", e.get("source"))
        target = r.text(f"{path}.target", e.get("target"))
        branch = r.text(f"{path}.branch", e.get("branch"), required=False)
        if source is not None and target is not None:
            edges.append(FlowEdge(source, target, branch))
    return tuple(edges)


def _check_all_used(doc: FlowDocument) -> None:
    """Every entry must be used by the flow (directly or through a crew or agent): a
    document carries what its flow needs and nothing else."""
    used = _closure(doc, lambda section, ref: True)
    unused: dict[str, str] = {}
    for section in _SECTION_KIND:
        for i, entry in enumerate(getattr(doc, section)):
            if entry.ref not in used[section]:
                kind = _SECTION_KIND[section]
                unused[f"document.{section}[{i}]"] = (
                    f"{kind} {entry.name!r} is not used by the flow"
                )
    if unused:
        raise _invalid(unused)


def _closure(doc: FlowDocument, descend: Callable[[str, str], bool]) -> dict[str, set[str]]:
    """Section → refs the flow needs, following crews → agents → tools and providers,
    but not below an entry for which `descend(section, ref)` is false (a reused one)."""
    used: dict[str, set[str]] = {s: set() for s in _SECTION_KIND}
    direct = node_references(doc.nodes)
    crews = {c.ref: c for c in doc.crews}
    agents = {a.ref: a for a in doc.agents}
    pending_agents: list[str] = list(direct["agents"])
    used["tools"].update(direct["tools"])
    used["providers"].update(direct["providers"])
    for ref in direct["crews"]:
        used["crews"].add(ref)
        crew = crews.get(ref)
        if crew is None or not descend("crews", ref):
            continue
        pending_agents.extend(crew.agents)
        if crew.manager_agent:
            pending_agents.append(crew.manager_agent)
        if crew.manager_provider:
            used["providers"].add(crew.manager_provider)
    for ref in pending_agents:
        if ref in used["agents"]:
            continue
        used["agents"].add(ref)
        agent = agents.get(ref)
        if agent is None or not descend("agents", ref):
            continue
        used["tools"].update(agent.tools)
        if agent.provider:
            used["providers"].add(agent.provider)
    return used


# --------------------------------------------------------------------------------------------
# Templates: documents shipped in domain/templates/*.json


@dataclass(frozen=True, slots=True)
class FlowTemplate:
    id: str
    name: str
    description: str
    document: dict[str, Any]


@cache
def shipped_templates() -> tuple[FlowTemplate, ...]:
    """Every shipped template, checked like an import and in canonical form, by id."""
    found = []
    folder = importlib.resources.files("domain.templates")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        raw = json.loads(entry.read_text(encoding="utf-8"))
        doc = parse_document(raw)
        found.append(
            FlowTemplate(
                entry.name.removesuffix(".json"),
                doc.name,
                doc.description or "",
                doc.to_json(),
            )
        )
    return tuple(found)


# --------------------------------------------------------------------------------------------
# The use cases


@dataclass(frozen=True, slots=True)
class ImportResult:
    flow: Flow
    created: list[str] = field(default_factory=list)  # "agent:<name>", ...
    renamed: list[str] = field(default_factory=list)  # "agent:<old> -> <new>"
    reused: list[str] = field(default_factory=list)


R = TypeVar("R")


async def _id_named(repo: ResourceRepository[R], name: str) -> str | None:
    """The id of the tenant's resource named exactly `name`, if any."""
    after: str | None = None
    while True:
        page = await repo.page(100, after, search=name)
        for item, _ in page.items:
            if getattr(item, "name", None) == name:
                return str(getattr(item, "id"))  # noqa: B009
        if not page.has_next_page:
            return None
        after = page.end_cursor


def renamed(name: str, n: int) -> str:
    """`name` with the suffix " (n)", shortened to fit the name limit."""
    suffix = f" ({n})"
    return name[: MAX_NAME - len(suffix)].rstrip() + suffix


class FlowDocumentService:
    """exportFlow, importFlow and the shipped templates."""

    def __init__(
        self,
        uow: TenantUnitOfWorkFactory,
        flows: FlowService,
        *,
        max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        allowed_images: Collection[str] | None = None,
    ) -> None:
        self._uow = uow
        self._flows = flows
        self.max_bytes = max_bytes
        self.allowed_images = None if allowed_images is None else frozenset(allowed_images)

    def templates(self, p: Principal) -> tuple[FlowTemplate, ...]:
        p.require(Action.READ)
        return shipped_templates()

    async def export(self, p: Principal, flow_id: str) -> dict[str, Any]:
        p.require(Action.READ)
        async with self._uow(p.tenant_schema) as uow:
            flow = await uow.flows.get(require_id("flow", flow_id))
            if flow is None:
                raise NotFound("flow", flow_id)
            direct = node_references(flow.nodes)
            crews = await _found(uow.crews, direct["crews"], "crew")
            agent_ids = list(direct["agents"])
            for crew in crews:
                agent_ids += crew.agent_ids
                if crew.manager_agent_id:
                    agent_ids.append(crew.manager_agent_id)
            agents = await _found(uow.agents, agent_ids, "agent")
            tool_ids = list(direct["tools"]) + [t for a in agents for t in a.tool_ids]
            tools = await _found(uow.tools, tool_ids, "tool")
            provider_ids = list(direct["providers"])
            provider_ids += [a.llm_provider_id for a in agents if a.llm_provider_id]
            provider_ids += [c.manager_llm_provider_id for c in crews if c.manager_llm_provider_id]
            providers = await _found(uow.providers, provider_ids, "LLM provider")
        return build_document(flow, providers, tools, agents, crews).to_json()

    async def import_flow(
        self,
        p: Principal,
        raw: object,
        on_conflict: ImportConflict = ImportConflict.FAIL,
        provider_map: Sequence[tuple[str, str]] = (),
    ) -> ImportResult:
        """Recreate the document in the caller's tenant, all or nothing."""
        p.require(Action.WRITE)
        doc = parse_document(
            raw,
            max_bytes=self.max_bytes,
            max_nodes=self._flows.max_nodes,
            allowed_images=self.allowed_images,
        )
        mapping = _check_provider_map(doc, provider_map)
        async with self._uow(p.tenant_schema) as uow:
            plan = await _Plan.make(uow, doc, on_conflict)
            providers = await _bind_providers(uow, doc, plan.needed["providers"], mapping)
            result = await plan.write(uow, p, self._flows, providers)
            await uow.commit()
        return result


E2 = TypeVar("E2")


async def _found(repo: ResourceRepository[E2], ids: Sequence[str], kind: str) -> list[E2]:
    wanted = list(dict.fromkeys(ids))
    found = await repo.get_many(wanted) if wanted else {}
    missing = [i for i in wanted if i not in found]
    if missing:  # references are kept intact by the stores; a gap is not ours to paper over
        raise NotFound(kind, ", ".join(missing))
    return [found[i] for i in wanted]


def _check_provider_map(
    doc: FlowDocument, provider_map: Sequence[tuple[str, str]]
) -> dict[str, str]:
    names = {p.name for p in doc.providers}
    errors: dict[str, str] = {}
    mapping: dict[str, str] = {}
    for i, (name, provider_id) in enumerate(provider_map):
        if name in mapping:
            errors[f"providerMap[{i}].name"] = f"maps the provider {name!r} a second time"
        elif name not in names:
            errors[f"providerMap[{i}].name"] = f"the document has no provider named {name!r}"
        mapping.setdefault(name, provider_id)
    if errors:
        raise BadUserInput(f"invalid providerMap: {next(iter(errors.values()))}", errors)
    return mapping


async def _bind_providers(
    uow: TenantUnitOfWork, doc: FlowDocument, needed: set[str], mapping: Mapping[str, str]
) -> dict[str, str]:
    """Document provider ref → a provider id of this tenant: from `providerMap`, else the
    provider of the same name. Any left unmatched is BAD_USER_INPUT naming them all."""
    bound: dict[str, str] = {}
    unmatched: list[str] = []
    wanted = [p for p in doc.providers if p.ref in needed]
    mapped = [mapping[p.name] for p in wanted if p.name in mapping]
    existing = await uow.providers.existing_ids(mapped) if mapped else set()
    for provider in wanted:
        if provider.name in mapping:
            ident = mapping[provider.name]
            if ident not in existing:
                err = NotFound("LLM provider", ident)
                err.extensions["fields"] = {"providerMap": f"LLM provider not found: {ident}"}
                raise err
            bound[provider.ref] = ident
            continue
        found = await _id_named(uow.providers, provider.name)
        if found is None:
            unmatched.append(provider.name)
        else:
            bound[provider.ref] = found
    if unmatched:
        shown = ", ".join(repr(n) for n in unmatched)
        raise BadUserInput(
            f"no LLM provider of this team matches {shown}: create one with that name or "
            "map it with providerMap",
            {"providerMap": f"unmatched providers: {shown}"},
        )
    return bound


@dataclass(slots=True)
class _Plan:
    """What an import will do with each entry: its final name, or the id it reuses."""

    doc: FlowDocument
    needed: dict[str, set[str]]
    names: dict[tuple[str, str], str]  # (section, ref) → name to create under
    reuse: dict[tuple[str, str], str]  # (section, ref) → existing id
    flow_name: str
    created: list[str]
    renamed: list[str]
    reused: list[str]

    @classmethod
    async def make(
        cls, uow: TenantUnitOfWork, doc: FlowDocument, on_conflict: ImportConflict
    ) -> _Plan:
        existing: dict[tuple[str, str], str] = {}
        for section in ("tools", "agents", "crews"):
            repo = getattr(uow, section)
            for entry in getattr(doc, section):
                found = await _id_named(repo, entry.name)
                if found is not None:
                    existing[(section, entry.ref)] = found
        flow_taken = await uow.flows.name_taken(doc.name)

        if on_conflict is ImportConflict.FAIL:
            clashes = [
                f"{_SECTION_KIND[section]}:{entry.name}"
                for section in ("tools", "agents", "crews")
                for entry in getattr(doc, section)
                if (section, entry.ref) in existing
            ]
            if flow_taken:
                clashes.append(f"flow:{doc.name}")
            if clashes:
                raise Conflict(
                    "names already taken in this team: "
                    + ", ".join(clashes)
                    + " (import with onConflict RENAME or REUSE)",
                    extensions={"clashes": clashes},
                )

        reuse: dict[tuple[str, str], str] = {}
        if on_conflict is ImportConflict.REUSE:
            reuse = dict(existing)
        needed = _closure(doc, lambda section, ref: (section, ref) not in reuse)
        plan = cls(doc, needed, {}, {}, doc.name, [], [], [])
        kinds = ("tools", "agents", "crews")
        for section in kinds:
            for entry in getattr(doc, section):
                key = (section, entry.ref)
                if entry.ref not in needed[section]:
                    continue
                if key in reuse:
                    plan.reuse[key] = reuse[key]
                    plan.reused.append(f"{_SECTION_KIND[section]}:{entry.name}")
        # Names: those free keep theirs; a clash gets the first free " (n)" suffix that
        # neither the team nor this import already uses.
        taken: dict[str, set[str]] = {s: set() for s in (*kinds, "flows")}
        for section in kinds:
            for entry in getattr(doc, section):
                key = (section, entry.ref)
                if entry.ref in needed[section] and key not in plan.reuse:
                    if key not in existing:
                        plan.names[key] = entry.name
                        taken[section].add(entry.name)
        repos: dict[str, Any] = {s: getattr(uow, s) for s in (*kinds, "flows")}
        for section in kinds:
            for entry in getattr(doc, section):
                key = (section, entry.ref)
                if entry.ref in needed[section] and key not in plan.reuse and key in existing:
                    new = await _free_name(repos[section], entry.name, taken[section])
                    plan.names[key] = new
                    plan.renamed.append(f"{_SECTION_KIND[section]}:{entry.name} -> {new}")
        if flow_taken:
            # Reusing the flow would import nothing: the flow is renamed under REUSE too.
            plan.flow_name = await _free_name(repos["flows"], doc.name, set())
            plan.renamed.append(f"flow:{doc.name} -> {plan.flow_name}")
        for section in kinds:
            for entry in getattr(doc, section):
                key = (section, entry.ref)
                if key in plan.names:
                    plan.created.append(f"{_SECTION_KIND[section]}:{plan.names[key]}")
        plan.created.append(f"flow:{plan.flow_name}")
        return plan

    async def write(
        self,
        uow: TenantUnitOfWork,
        p: Principal,
        flows: FlowService,
        providers: Mapping[str, str],
    ) -> ImportResult:
        """Insert tools, agents, crews, then the flow, in the caller's transaction; every
        reference is a new id, a reused id of this tenant, or a bound provider."""
        now = datetime.now(UTC)
        ids: dict[str, dict[str, str]] = {"providers": dict(providers)}
        for section in ("tools", "agents", "crews"):
            ids[section] = {}
            for entry in getattr(self.doc, section):
                key = (section, entry.ref)
                if key in self.reuse:
                    ids[section][entry.ref] = self.reuse[key]
                elif key in self.names:
                    ids[section][entry.ref] = str(uuid.uuid4())
        for t in self.doc.tools:
            if ("tools", t.ref) in self.names:
                await uow.tools.add(
                    Tool(
                        ids["tools"][t.ref],
                        self.names[("tools", t.ref)],
                        t.description,
                        t.kind,
                        t.config,
                        t.input_schema,
                        1,
                        now,
                        now,
                    )
                )
        for a in self.doc.agents:
            if ("agents", a.ref) in self.names:
                await uow.agents.add(
                    Agent(
                        ids["agents"][a.ref],
                        self.names[("agents", a.ref)],
                        a.role,
                        a.goal,
                        a.backstory,
                        ids["providers"][a.provider] if a.provider else None,
                        [ids["tools"][t] for t in a.tools],
                        a.options,
                        1,
                        now,
                        now,
                    )
                )
        agent_id = ids["agents"]
        for c in self.doc.crews:
            if ("crews", c.ref) in self.names:
                await uow.crews.add(
                    Crew(
                        ids["crews"][c.ref],
                        self.names[("crews", c.ref)],
                        c.process,
                        [agent_id[a] for a in c.agents],
                        [
                            CrewTask(t.description, t.expected_output, agent_id[t.agent_id])
                            for t in c.tasks
                        ],
                        agent_id[c.manager_agent] if c.manager_agent else None,
                        ids["providers"][c.manager_provider] if c.manager_provider else None,
                        1,
                        now,
                        now,
                    )
                )
        nodes = []
        for node in self.doc.nodes:
            config = dict(node.config)
            for ref_key, section in NODE_REF_KEYS.items():
                if ref_key in config:
                    config[ref_key] = ids[section][config[ref_key]]
            nodes.append(FlowNode(node.id, node.kind, node.name, config))
        # References now resolve to the rows written above, in this transaction.
        flow = await flows.create_in(
            uow,
            p,
            FlowInput(self.flow_name, nodes, list(self.doc.edges), self.doc.description),
            now,
        )
        return ImportResult(flow, self.created, self.renamed, self.reused)


async def _free_name(repo: ResourceRepository[Any], name: str, taken: set[str]) -> str:
    for n in range(2, MAX_RENAME_ATTEMPTS + 2):
        candidate = renamed(name, n)
        if candidate not in taken and not await repo.name_taken(candidate):
            taken.add(candidate)
            return candidate
    raise Conflict(f"no free name like {name!r} after {MAX_RENAME_ATTEMPTS} tries")
