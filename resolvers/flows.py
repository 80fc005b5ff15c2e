"""Flow queries and mutations."""

from __future__ import annotations

import strawberry

from domain.validation import page_size
from schema.context import Info
from schema.flows import (
    Flow,
    FlowEdgeInput,
    FlowInput,
    FlowNodeInput,
    FlowValidation,
    graph_edges,
    graph_nodes,
)
from schema.relay import Connection, connection


async def flows(
    info: Info, first: int | None = None, after: str | None = None, search: str | None = None
) -> Connection[Flow]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    return connection(
        await info.context.services.flows.list(p, size, after, search), Flow.from_domain
    )


async def flow(info: Info, id: strawberry.ID) -> Flow:
    p = await info.context.principal()
    return Flow.from_domain(await info.context.services.flows.get(p, id))


async def flow_version(info: Info, id: strawberry.ID, version: int) -> Flow:
    p = await info.context.principal()
    return Flow.from_domain(await info.context.services.flows.version(p, id, version))


async def validate_flow(
    info: Info, nodes: list[FlowNodeInput], edges: list[FlowEdgeInput]
) -> FlowValidation:
    p = await info.context.principal()
    result = await info.context.services.flows.validate(
        p, graph_nodes(nodes, ""), graph_edges(edges)
    )
    return FlowValidation.from_domain(result)


async def create_flow(info: Info, input: FlowInput) -> Flow:
    p = await info.context.principal()
    return Flow.from_domain(await info.context.services.flows.create(p, input.to_domain()))


async def update_flow(
    info: Info, id: strawberry.ID, input: FlowInput, expected_version: int | None = None
) -> Flow:
    p = await info.context.principal()
    return Flow.from_domain(
        await info.context.services.flows.update(p, id, input.to_domain(), expected_version)
    )


async def delete_flow(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.flows.delete(p, id)
