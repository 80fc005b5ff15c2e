"""Flow export/import and template types."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from domain import flow_documents as d
from schema.flows import Flow

ImportConflict = strawberry.enum(
    d.ImportConflict,
    name="ImportConflict",
    description="What importFlow does with a name already taken: FAIL (CONFLICT naming "
    'every clash), RENAME (the import is named "<name> (2)", "(3)", ...) or REUSE (bind to '
    "the existing resource; the flow itself is renamed).",
)


@strawberry.input(description="A provider name in the document -> a provider of this tenant")
class ProviderMappingInput:
    name: str
    provider_id: strawberry.ID


@strawberry.type
class ImportFlowPayload:
    flow: Flow
    created: list[str] = strawberry.field(description='"agent:<name>", "tool:<name>", ...')
    renamed: list[str] = strawberry.field(description='"agent:<old> -> <new>"')
    reused: list[str]

    @classmethod
    def from_domain(cls, result: d.ImportResult) -> ImportFlowPayload:
        return cls(
            flow=Flow.from_domain(result.flow),
            created=list(result.created),
            renamed=list(result.renamed),
            reused=list(result.reused),
        )


@strawberry.type
class FlowTemplate:
    id: strawberry.ID
    name: str
    description: str
    document: JSON = strawberry.field(description="An export document: pass it to importFlow.")

    @classmethod
    def from_domain(cls, t: d.FlowTemplate) -> FlowTemplate:
        return cls(
            id=strawberry.ID(t.id),
            name=t.name,
            description=t.description,
            document=JSON(t.document),
        )
