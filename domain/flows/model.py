"""The flow graph as the domain sees it: plain immutable values."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class NodeKind(enum.StrEnum):
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    AGENT = "AGENT"
    CREW = "CREW"
    TOOL = "TOOL"
    LLM = "LLM"
    CONDITION = "CONDITION"
    APPROVAL = "APPROVAL"


@dataclass(frozen=True, slots=True)
class FlowNode:
    id: str
    kind: str  # a NodeKind value; kept as str so unknown kinds reach validation
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlowEdge:
    source: str
    target: str
    branch: str | None = None  # "true" / "false" on edges leaving a CONDITION / APPROVAL node


@dataclass(frozen=True, slots=True)
class FlowGraph:
    nodes: tuple[FlowNode, ...]
    edges: tuple[FlowEdge, ...]
