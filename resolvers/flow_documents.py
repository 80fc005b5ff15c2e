"""Flow export, import and templates."""

from __future__ import annotations

import strawberry
from strawberry.scalars import JSON

from domain import flow_documents as d
from schema.context import Info
from schema.flow_documents import (
    FlowTemplate,
    ImportConflict,
    ImportFlowPayload,
    ProviderMappingInput,
)


async def export_flow(info: Info, id: strawberry.ID) -> JSON:
    p = await info.context.principal()
    return JSON(await info.context.services.flow_documents.export(p, id))


async def flow_templates(info: Info) -> list[FlowTemplate]:
    p = await info.context.principal()
    return [FlowTemplate.from_domain(t) for t in info.context.services.flow_documents.templates(p)]


async def import_flow(
    info: Info,
    document: JSON,
    on_conflict: ImportConflict | None = d.ImportConflict.FAIL,  # type: ignore[valid-type]
    provider_map: list[ProviderMappingInput] | None = None,
) -> ImportFlowPayload:
    p = await info.context.principal()
    mapping = [(m.name, str(m.provider_id)) for m in provider_map or []]
    result = await info.context.services.flow_documents.import_flow(
        p, document, d.ImportConflict(on_conflict or d.ImportConflict.FAIL), mapping
    )
    return ImportFlowPayload.from_domain(result)
