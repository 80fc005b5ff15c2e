"""Flow graph validation and the graph helpers the engine uses.

:func:`validate_flow` checks a :class:`FlowGraph` and collects every problem instead of
stopping at the first. Each problem is a readable sentence in ``errors`` and, keyed by the
offending input path (``nodes[3].config.prompt``, ``edges[2].target``, ``nodes``), in
``field_errors`` for GraphQL ``extensions.fields``.

Cost is O(V + E) plus template parsing, with two bounded exceptions: when the input order is
not already topological, the deterministic order uses a heap (O((V + E) log V)); and
``nodes.<id>`` references to nodes that are not direct predecessors are checked with bit masks,
O((V + E) * R / 64) for R such distinct nodes (usually a handful).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal

from domain.errors import BadUserInput
from domain.flows.expressions import (
    ALLOWED_ROOTS,
    MAX_TEMPLATE_LENGTH,
    ExpressionError,
    RefPath,
    SourceKind,
    TemplateError,
    referenced_names,
)
from domain.flows.model import FlowEdge, FlowGraph, FlowNode, NodeKind
from domain.json_schema import schema_problems

__all__ = [
    "BRANCH_FALSE",
    "BRANCH_TRUE",
    "MAX_NODE_ID_LENGTH",
    "FlowValidation",
    "ReferenceIndex",
    "ancestors",
    "descendants",
    "predecessors",
    "successors",
    "validate_flow",
]

BRANCH_TRUE = "true"
BRANCH_FALSE = "false"
MAX_NODE_ID_LENGTH = 128
MAX_NODE_NAME_LENGTH = 200
MAX_REFERENCE_ID_LENGTH = 200
MAX_REPORTED_ERRORS = 100  # further problems are summarised in one last error
MAX_LISTED_IDS = 10  # node ids spelled out in one message
MAX_TIMEOUT_SECONDS = 86_400
MAX_APPROVAL_TIMEOUT_SECONDS = 90 * 86_400  # a person may take weeks to answer
APPROVAL_ON_TIMEOUT = ("reject", "fail")
MAX_RETRIES = 10


@dataclass(frozen=True, slots=True)
class ReferenceIndex:
    """Ids of the tenant's agents, crews, tools and LLM providers (fetched by the caller)."""

    agent_ids: AbstractSet[str] = frozenset()
    crew_ids: AbstractSet[str] = frozenset()
    tool_ids: AbstractSet[str] = frozenset()
    llm_provider_ids: AbstractSet[str] = frozenset()


@dataclass(frozen=True, slots=True)
class FlowValidation:
    valid: bool
    errors: tuple[str, ...]
    execution_order: tuple[str, ...]  # node ids in topological order; empty unless valid
    field_errors: dict[str, str] = field(default_factory=dict, hash=False)

    def raise_if_invalid(self, message: str = "invalid flow") -> None:
        """Raise :class:`BadUserInput` (with ``fields``) summarising the errors, if any."""
        if self.valid:
            return
        more = len(self.errors) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise BadUserInput(f"{message}: {self.errors[0]}{suffix}", self.field_errors)


# --------------------------------------------------------------------------------------------
# Graph helpers for the engine (valid graphs; edges with unknown endpoints, self loops and
# repeated source/target pairs are ignored).


def _edge_pairs(graph: FlowGraph) -> list[FlowEdge]:
    known = {node.id for node in graph.nodes}
    seen: set[tuple[str, str]] = set()
    kept: list[FlowEdge] = []
    for edge in graph.edges:
        pair = (edge.source, edge.target)
        if edge.source in known and edge.target in known and edge.source != edge.target:
            if pair not in seen:
                seen.add(pair)
                kept.append(edge)
    return kept


def predecessors(graph: FlowGraph) -> dict[str, list[str]]:
    """Every node id mapped to the ids of its direct predecessors, in edge order."""
    result: dict[str, list[str]] = {node.id: [] for node in graph.nodes}
    for edge in _edge_pairs(graph):
        result[edge.target].append(edge.source)
    return result


def successors(graph: FlowGraph) -> dict[str, list[FlowEdge]]:
    """Every node id mapped to its out-edges (with their ``branch``), in edge order."""
    result: dict[str, list[FlowEdge]] = {node.id: [] for node in graph.nodes}
    for edge in _edge_pairs(graph):
        result[edge.source].append(edge)
    return result


def _reach(start: str, neighbours: Mapping[str, list[str]]) -> frozenset[str]:
    seen: set[str] = set()
    queue = deque(neighbours.get(start, ()))
    while queue:
        current = queue.popleft()
        if current not in seen:
            seen.add(current)
            queue.extend(neighbours.get(current, ()))
    return frozenset(seen)


def ancestors(graph: FlowGraph, node_id: str) -> frozenset[str]:
    """Ids of all nodes with a path to ``node_id`` (not including it, unless on a cycle)."""
    return _reach(node_id, predecessors(graph))


def descendants(graph: FlowGraph, node_id: str) -> frozenset[str]:
    """Ids of all nodes reachable from ``node_id`` (not including it, unless on a cycle)."""
    forward = {key: [edge.target for edge in edges] for key, edges in successors(graph).items()}
    return _reach(node_id, forward)


# --------------------------------------------------------------------------------------------
# Config schema per kind

_FieldType = Literal["template", "expression", "string", "ref", "number", "int", "map", "schema"]
_RefKind = Literal["agent", "crew", "tool", "LLM provider"]


@dataclass(frozen=True, slots=True)
class _Field:
    key: str
    type: _FieldType
    required: bool = False
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    ref: _RefKind | None = None
    choices: tuple[str, ...] | None = None  # allowed values of a "string" field


_ENGINE_OPTIONS = (
    _Field(
        "timeoutSeconds", "number", minimum=0, exclusive_minimum=True, maximum=MAX_TIMEOUT_SECONDS
    ),
    _Field("retries", "int", minimum=0, maximum=MAX_RETRIES),
    _Field("retryBackoffSeconds", "number", minimum=0),
)

_CONFIG_FIELDS: dict[NodeKind, tuple[_Field, ...]] = {
    NodeKind.INPUT: (_Field("schema", "schema"),),
    NodeKind.OUTPUT: (_Field("value", "template"),),
    NodeKind.CONDITION: (_Field("expression", "expression", required=True),),
    NodeKind.LLM: (
        _Field("providerId", "ref", required=True, ref="LLM provider"),
        _Field("prompt", "template", required=True),
        _Field("system", "string"),
        _Field("temperature", "number", minimum=0, maximum=2),
        _Field("maxTokens", "int", minimum=1),
        _Field("responseFormat", "string", choices=("text", "json")),
    ),
    NodeKind.AGENT: (
        _Field("agentId", "ref", required=True, ref="agent"),
        _Field("task", "template", required=True),
        _Field("expectedOutput", "string"),
    ),
    NodeKind.CREW: (
        _Field("crewId", "ref", required=True, ref="crew"),
        _Field("inputs", "map"),
    ),
    NodeKind.TOOL: (
        _Field("toolId", "ref", required=True, ref="tool"),
        _Field("input", "map"),
    ),
    # An approval waits for a person, not for a runtime: its own timeout (how long the
    # answer may take) replaces the engine's per-attempt options, and it is not retried.
    NodeKind.APPROVAL: (
        _Field("prompt", "template", required=True),
        _Field("inputSchema", "schema"),
        _Field(
            "timeoutSeconds",
            "number",
            minimum=0,
            exclusive_minimum=True,
            maximum=MAX_APPROVAL_TIMEOUT_SECONDS,
        ),
        _Field("onTimeout", "string", choices=APPROVAL_ON_TIMEOUT),
    ),
}

_KIND_VALUES = ", ".join(kind.value for kind in NodeKind)
_KINDS = frozenset(kind.value for kind in NodeKind)


def _reference_set(references: ReferenceIndex, ref: _RefKind) -> AbstractSet[str]:
    if ref == "agent":
        return references.agent_ids
    if ref == "crew":
        return references.crew_ids
    if ref == "tool":
        return references.tool_ids
    return references.llm_provider_ids


def _range_text(spec: _Field) -> str:
    low = spec.minimum
    high = spec.maximum
    if low is not None and high is not None:
        return (
            f" between {low:g} and {high:g}"
            if not spec.exclusive_minimum
            else (f" greater than {low:g} and at most {high:g}")
        )
    if low is not None:
        return f" greater than {low:g}" if spec.exclusive_minimum else f" of at least {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return ""


def _in_range(value: float, spec: _Field) -> bool:
    if spec.minimum is not None:
        if value < spec.minimum or (spec.exclusive_minimum and value == spec.minimum):
            return False
    return spec.maximum is None or value <= spec.maximum


# --------------------------------------------------------------------------------------------
# Validation


class _Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.fields: dict[str, str] = {}
        self.suppressed = 0

    def add(self, path: str, message: str) -> None:
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            self.suppressed += 1
            return
        self.errors.append(message)
        existing = self.fields.get(path)
        self.fields[path] = message if existing is None else f"{existing}; {message}"

    def add_field(self, path: str, message: str) -> None:
        """Detail for ``field_errors`` only (the summary is already in ``errors``)."""
        if len(self.fields) < MAX_REPORTED_ERRORS and path not in self.fields:
            self.fields[path] = message

    def result(self, order: tuple[str, ...]) -> FlowValidation:
        errors = list(self.errors)
        if self.suppressed:
            errors.append(f"... and {self.suppressed} more problems")
        valid = not errors
        return FlowValidation(valid, tuple(errors), order if valid else (), dict(self.fields))


@dataclass(slots=True)
class _Usage:
    """Names read by one template/expression field of one node."""

    position: int
    path: str
    label: str
    refs: frozenset[RefPath]


def _describe_ids(ids: list[str]) -> str:
    shown = ", ".join(repr(node_id) for node_id in ids[:MAX_LISTED_IDS])
    extra = len(ids) - MAX_LISTED_IDS
    return f"{shown} (and {extra} more)" if extra > 0 else shown


class _Validator:
    def __init__(
        self, graph: FlowGraph, references: ReferenceIndex | None, report: _Report
    ) -> None:
        self.graph = graph
        self.references = references
        self.report = report
        self.nodes = graph.nodes
        count = len(graph.nodes)
        # Per input position; None for nodes left out of the structure (bad/duplicate id).
        self.ids: list[str | None] = [None] * count
        self.kinds: list[NodeKind | None] = [None] * count
        self.index: dict[str, int] = {}
        self.out_adj: list[list[int]] = [[] for _ in range(count)]
        self.in_adj: list[list[int]] = [[] for _ in range(count)]
        self.edge_at: dict[tuple[int, int], int] = {}
        self.usages: list[_Usage] = []

    # -- nodes -----------------------------------------------------------------------------

    def label(self, position: int) -> str:
        node_id = getattr(self.nodes[position], "id", None)
        kind = self.kinds[position]
        name = repr(node_id) if isinstance(node_id, str) and node_id else f"#{position}"
        return f"{kind.value} node {name}" if kind is not None else f"node {name}"

    def check_nodes(self) -> None:
        for position, node in enumerate(self.nodes):
            path = f"nodes[{position}]"
            if not isinstance(node, FlowNode):
                self.report.add(path, f"{path} is not a node")
                continue
            self.check_node_id(position, node, path)
            self.check_kind(position, node, path)
            if node.name is not None and (
                not isinstance(node.name, str) or len(node.name) > MAX_NODE_NAME_LENGTH
            ):
                self.report.add(
                    f"{path}.name",
                    f"{self.label(position)}: name must be a string of at most "
                    f"{MAX_NODE_NAME_LENGTH} characters",
                )

    def check_node_id(self, position: int, node: FlowNode, path: str) -> None:
        node_id = node.id
        problem = None
        if not isinstance(node_id, str) or not node_id.strip():
            problem = "a node id must be a non-empty string"
        elif len(node_id) > MAX_NODE_ID_LENGTH:
            problem = f"node id is longer than {MAX_NODE_ID_LENGTH} characters"
        elif node_id != node_id.strip() or not node_id.isprintable():
            problem = f"node id {node_id!r} has surrounding whitespace or control characters"
        elif node_id in self.index:
            first = self.index[node_id]
            problem = f"duplicate node id {node_id!r} (also used by nodes[{first}])"
        if problem is not None:
            self.report.add(f"{path}.id", problem)
            return
        assert isinstance(node_id, str)
        self.ids[position] = node_id
        self.index[node_id] = position

    def check_kind(self, position: int, node: FlowNode, path: str) -> None:
        kind = node.kind
        if isinstance(kind, str) and kind in _KINDS:
            self.kinds[position] = NodeKind(kind)
            return
        name = self.label(position)
        self.report.add(
            f"{path}.kind", f"{name}: unknown kind {kind!r} (expected one of {_KIND_VALUES})"
        )

    # -- edges -----------------------------------------------------------------------------

    def endpoint(self, value: object, path: str, role: str, edge_text: str) -> int | None:
        if isinstance(value, str) and value in self.index:
            return self.index[value]
        self.report.add(path, f"edge {edge_text}: unknown {role} node {value!r}")
        return None

    def check_edges(self) -> dict[int, dict[str, int]]:
        branches: dict[int, dict[str, int]] = {}
        for j, edge in enumerate(self.graph.edges):
            path = f"edges[{j}]"
            if not isinstance(edge, FlowEdge):
                self.report.add(path, f"{path} is not an edge")
                continue
            text = f"{edge.source!r} -> {edge.target!r}"
            source = self.endpoint(edge.source, f"{path}.source", "source", text)
            target = self.endpoint(edge.target, f"{path}.target", "target", text)
            if source is not None:
                self.check_branch(j, edge, source, text, branches)
            if source is None or target is None:
                continue
            if source == target:
                self.report.add(path, f"edge {text} is a self-loop")
                continue
            if (source, target) in self.edge_at:
                first = self.edge_at[(source, target)]
                self.report.add(path, f"duplicate edge {text} (same as edges[{first}])")
                continue
            misplaced = False
            if self.kinds[target] is NodeKind.INPUT:
                misplaced = True
                self.report.add(
                    f"{path}.target",
                    f"edge {text}: INPUT node {edge.target!r} cannot have incoming edges",
                )
            if self.kinds[source] is NodeKind.OUTPUT:
                misplaced = True
                self.report.add(
                    f"{path}.source",
                    f"edge {text}: OUTPUT node {edge.source!r} cannot have outgoing edges",
                )
            if misplaced:
                continue  # kept out of the structure: it would only add cycles to report
            self.edge_at[(source, target)] = j
            self.out_adj[source].append(target)
            self.in_adj[target].append(source)
        return branches

    def check_branch(
        self, j: int, edge: FlowEdge, source: int, text: str, branches: dict[int, dict[str, int]]
    ) -> None:
        branch = edge.branch if edge.branch != "" else None
        path = f"edges[{j}].branch"
        if self.kinds[source] is NodeKind.CONDITION:
            if branch in (BRANCH_TRUE, BRANCH_FALSE):
                assert isinstance(branch, str)
                counts = branches.setdefault(source, {BRANCH_TRUE: 0, BRANCH_FALSE: 0})
                counts[branch] += 1
            else:
                self.report.add(
                    path,
                    f"edge {text} leaves a CONDITION node: branch must be "
                    f"{BRANCH_TRUE!r} or {BRANCH_FALSE!r}, not {edge.branch!r}",
                )
        elif self.kinds[source] is NodeKind.APPROVAL:
            # Optional here: an unbranched edge is followed whatever the answer.
            if branch is not None and branch not in (BRANCH_TRUE, BRANCH_FALSE):
                self.report.add(
                    path,
                    f"edge {text} leaves an APPROVAL node: branch must be "
                    f"{BRANCH_TRUE!r}, {BRANCH_FALSE!r} or absent, not {edge.branch!r}",
                )
        elif branch is not None:
            self.report.add(
                path,
                f"edge {text}: only edges leaving a CONDITION node (or an APPROVAL node) can "
                "have a branch",
            )

    def check_conditions(self, branches: dict[int, dict[str, int]]) -> None:
        for position, kind in enumerate(self.kinds):
            if kind is not NodeKind.CONDITION:
                continue
            counts = branches.get(position, {BRANCH_TRUE: 0, BRANCH_FALSE: 0})
            for branch in (BRANCH_TRUE, BRANCH_FALSE):
                if counts[branch] != 1:
                    self.report.add(
                        f"nodes[{position}]",
                        f"{self.label(position)} needs exactly one {branch!r} out-edge "
                        f"(has {counts[branch]})",
                    )

    # -- config ------------------------------------------------------------------------------

    def check_configs(self) -> None:
        for position, node in enumerate(self.nodes):
            kind = self.kinds[position]
            if kind is None or not isinstance(node, FlowNode):
                continue
            path = f"nodes[{position}].config"
            config = node.config
            if config is None:
                config = {}
            if not isinstance(config, Mapping):
                self.report.add(path, f"{self.label(position)}: config must be an object")
                continue
            options = () if kind is NodeKind.APPROVAL else _ENGINE_OPTIONS
            for spec in (*_CONFIG_FIELDS[kind], *options):
                self.check_field(position, path, config, spec)

    def check_field(
        self, position: int, path: str, config: Mapping[str, Any], spec: _Field
    ) -> None:
        value = config.get(spec.key)
        field_path = f"{path}.{spec.key}"
        label = f"{self.label(position)}: config.{spec.key}"
        if value is None:
            if spec.required:
                self.report.add(field_path, f"{label} is required")
            return
        if spec.type in ("template", "expression"):
            self.check_source(position, field_path, label, value, spec.type)
        elif spec.type == "string":
            if not isinstance(value, str) or len(value) > MAX_TEMPLATE_LENGTH:
                self.report.add(
                    field_path,
                    f"{label} must be a string of at most {MAX_TEMPLATE_LENGTH} characters",
                )
            elif spec.choices is not None and value not in spec.choices:
                self.report.add(
                    field_path, f"{label} must be one of {', '.join(map(repr, spec.choices))}"
                )
        elif spec.type == "ref":
            self.check_reference(field_path, label, value, spec)
        elif spec.type in ("number", "int"):
            self.check_number(field_path, label, value, spec)
        elif spec.type == "map":
            self.check_template_map(position, field_path, label, value)
        else:
            self.check_schema(field_path, label, value)

    def check_source(
        self, position: int, path: str, label: str, value: object, kind: SourceKind
    ) -> None:
        if not isinstance(value, str):
            self.report.add(path, f"{label} must be a {kind} string")
            return
        if kind == "expression" and not value.strip():
            self.report.add(path, f"{label} must not be empty")
            return
        try:
            refs = referenced_names(value, kind)
        except (TemplateError, ExpressionError) as exc:
            self.report.add(path, f"{label}: {exc.message}")
            return
        if refs:
            self.usages.append(_Usage(position, path, label, refs))

    def check_reference(self, path: str, label: str, value: object, spec: _Field) -> None:
        if not isinstance(value, str) or not value or len(value) > MAX_REFERENCE_ID_LENGTH:
            self.report.add(path, f"{label} must be a non-empty {spec.ref} id")
            return
        if self.references is not None and spec.ref is not None:
            if value not in _reference_set(self.references, spec.ref):
                self.report.add(path, f"{label}: {spec.ref} {value!r} does not exist")

    def check_number(self, path: str, label: str, value: object, spec: _Field) -> None:
        number: float | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and spec.type == "number" and math.isfinite(value):
            number = value
        if number is None or not _in_range(number, spec):
            noun = "an integer" if spec.type == "int" else "a number"
            self.report.add(path, f"{label} must be {noun}{_range_text(spec)}")

    def check_template_map(self, position: int, path: str, label: str, value: object) -> None:
        if not isinstance(value, Mapping):
            self.report.add(path, f"{label} must be an object mapping names to templates")
            return
        for name, template in value.items():
            if not isinstance(name, str) or not name:
                self.report.add(path, f"{label}: names must be non-empty strings")
                continue
            self.check_source(position, f"{path}.{name}", f"{label}.{name}", template, "template")

    def check_schema(self, path: str, label: str, value: object) -> None:
        problems = schema_problems(value)
        if problems:
            self.report.add(path, f"{label} {'; '.join(problems)}")

    # -- structure ---------------------------------------------------------------------------

    def members(self) -> list[int]:
        return [position for position, node_id in enumerate(self.ids) if node_id is not None]

    def topological_order(self, members: list[int]) -> tuple[list[int], list[int]]:
        """(order, leftover): leftover is non-empty exactly when there is a cycle."""
        if all(source < target for source, target in self.edge_at):
            return members, []  # input order already is a topological order
        indegree = [len(preds) for preds in self.in_adj]
        ready = [position for position in members if indegree[position] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            position = heapq.heappop(ready)
            order.append(position)
            for target in self.out_adj[position]:
                indegree[target] -= 1
                if indegree[target] == 0:
                    heapq.heappush(ready, target)
        leftover = [position for position in members if indegree[position] > 0]
        return order, leftover

    def report_cycle(self, leftover: list[int]) -> None:
        remaining = set(leftover)
        # Every leftover node has a leftover predecessor: walk backwards until one repeats.
        walk: list[int] = []
        seen: dict[int, int] = {}
        current = leftover[0]
        while current not in seen:
            seen[current] = len(walk)
            walk.append(current)
            current = next(p for p in self.in_adj[current] if p in remaining)
        cycle = walk[seen[current] :]
        cycle.reverse()  # now every element has an edge to the next one
        start = cycle.index(min(cycle))
        cycle = cycle[start:] + cycle[:start]
        names = " -> ".join(str(self.ids[position]) for position in [*cycle, cycle[0]])
        closing = self.edge_at[(cycle[-1], cycle[0])]
        message = f"cycle: {names}"
        extra = len(remaining) - len(cycle)
        if extra:
            plural = "s" if extra > 1 else ""
            message += f" (and {extra} more node{plural} on or downstream of a cycle)"
        self.report.add(f"edges[{closing}]", message)

    def check_terminals(self, members: list[int]) -> tuple[list[int], list[int]]:
        inputs = [p for p in members if self.kinds[p] is NodeKind.INPUT]
        outputs = [p for p in members if self.kinds[p] is NodeKind.OUTPUT]
        if not inputs:
            self.report.add("nodes", "a flow needs at least one INPUT node")
        if not outputs:
            self.report.add("nodes", "a flow needs at least one OUTPUT node")
        return inputs, outputs

    def check_reachability(self, members: list[int], inputs: list[int], outputs: list[int]) -> None:
        for starts, adjacency, what in (
            (inputs, self.out_adj, "not reachable from an INPUT node"),
            (outputs, self.in_adj, "not connected to any OUTPUT node"),
        ):
            if not starts:
                continue
            seen = [False] * len(self.nodes)
            queue = deque(starts)
            for position in starts:
                seen[position] = True
            while queue:
                for neighbour in adjacency[queue.popleft()]:
                    if not seen[neighbour]:
                        seen[neighbour] = True
                        queue.append(neighbour)
            missed = [p for p in members if not seen[p]]
            if missed:
                ids = [str(self.ids[p]) for p in missed]
                self.report.add("nodes", f"nodes {what}: {_describe_ids(ids)}")
                for position in missed:
                    self.report.add_field(f"nodes[{position}]", f"{self.label(position)} is {what}")

    # -- names in templates and expressions --------------------------------------------------

    def check_usages(self, order: list[int] | None) -> None:
        """Roots must be inputs/nodes; nodes.<id> must be a known upstream node (if acyclic)."""
        pending: list[tuple[_Usage, RefPath, int]] = []
        for usage in self.usages:
            for ref in sorted(usage.refs):
                root = ref[0]
                if root not in ALLOWED_ROOTS:
                    self.report.add(
                        usage.path,
                        f"{usage.label} uses unknown name {root!r}; only 'inputs' and "
                        "'nodes.<node id>.output' are available",
                    )
                    continue
                if root != "nodes":
                    continue
                if len(ref) == 1:
                    self.report.add(
                        usage.path,
                        f"{usage.label} must follow 'nodes' with a node id, "
                        "e.g. nodes.research.output",
                    )
                    continue
                target_id = ref[1]
                if len(ref) > 2 and ref[2] != "output":
                    self.report.add(
                        usage.path,
                        f"{usage.label} uses nodes.{target_id}.{ref[2]}; only "
                        f"nodes.{target_id}.output is available",
                    )
                    continue
                target = self.index.get(target_id)
                if self.ids[usage.position] is None:
                    continue  # the node itself has a bad or duplicate id (already reported)
                if target is None:
                    self.report.add(usage.path, f"{usage.label} uses unknown node {target_id!r}")
                elif target == usage.position:
                    self.report.add(usage.path, f"{usage.label} cannot use its own node's output")
                elif target not in self.in_adj[usage.position]:  # direct predecessors are fine
                    pending.append((usage, ref, target))
        if order is None or not pending:
            return
        # Upstream sets as bit masks over the (indirectly) referenced nodes only, in one
        # topological pass: O((V + E) * R / 64) for R such nodes, R usually tiny.
        bit_of = {target: 1 << i for i, target in enumerate(sorted({t for _, _, t in pending}))}
        upstream = [0] * len(self.nodes)
        for position in order:
            mask = 0
            for pred in self.in_adj[position]:
                mask |= upstream[pred] | bit_of.get(pred, 0)
            upstream[position] = mask
        for usage, ref, target in pending:
            if not upstream[usage.position] & bit_of[target]:
                self.report.add(
                    usage.path,
                    f"{usage.label} uses nodes.{ref[1]}, which is not upstream of "
                    f"{self.ids[usage.position]!r} (no path of edges leads from it)",
                )


def validate_flow(
    graph: FlowGraph, references: ReferenceIndex | None = None, *, max_nodes: int | None = None
) -> FlowValidation:
    """Check ``graph``; reference existence is skipped when ``references`` is None."""
    report = _Report()
    nodes = graph.nodes
    if not nodes:
        report.add("nodes", "a flow needs at least one node")
        return report.result(())
    if max_nodes is not None and len(nodes) > max_nodes:
        report.add(
            "nodes", f"a flow can have at most {max_nodes} nodes (this one has {len(nodes)})"
        )
        return report.result(())

    validator = _Validator(graph, references, report)
    validator.check_nodes()
    branches = validator.check_edges()
    validator.check_conditions(branches)
    validator.check_configs()

    members = validator.members()
    order, leftover = validator.topological_order(members)
    if leftover:
        validator.report_cycle(leftover)
    inputs, outputs = validator.check_terminals(members)
    validator.check_reachability(members, inputs, outputs)
    validator.check_usages(None if leftover else order)

    ids = validator.ids
    return report.result(tuple(str(ids[position]) for position in order))
