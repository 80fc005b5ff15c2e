"""Tool types."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain import tools as d
from schema.records import from_record

ToolKind = strawberry.enum(d.ToolKind, name="ToolKind")


@strawberry.type
class Tool:
    id: strawberry.ID
    name: str
    description: str
    kind: ToolKind  # type: ignore[valid-type]
    config: JSON = strawberry.field(
        description='builtin: {"builtin": name}; CUSTOM_PYTHON: {"code", "entrypoint"?}; '
        'DOCKER: {"image", "command": [...], "env"?}'
    )
    input_schema: JSON | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_domain(cls, t: d.Tool) -> Tool:
        return from_record(cls, t)


@strawberry.input
class ToolInput:
    name: str
    description: str
    kind: ToolKind  # type: ignore[valid-type]
    config: JSON
    input_schema: JSON | None = None

    def to_domain(self) -> d.ToolInput:
        return d.ToolInput(self.name, self.description, self.kind, self.config, self.input_schema)


@strawberry.type
class ToolValidation:
    valid: bool
    errors: list[str]
    output: JSON | None
    duration_ms: int | None
