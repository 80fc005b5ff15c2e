"""Agent queries and mutations."""

from __future__ import annotations

from collections.abc import Iterator

import strawberry

from domain.validation import page_size
from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode
from schema.agents import Agent, AgentInput, prefetch_tools
from schema.context import Info
from schema.relay import Connection, connection


async def agents(
    info: Info, first: int | None = None, after: str | None = None, search: str | None = None
) -> Connection[Agent]:
    p = await info.context.principal()
    size = page_size(first, info.context.settings.page_size_max)
    result = connection(
        await info.context.services.agents.list(p, size, after, search), Agent.from_domain
    )
    if result.edges and _selects_node_field(info, "tools"):
        await prefetch_tools(info, [edge.node for edge in result.edges])
    return result


def _selects_node_field(info: Info, name: str) -> bool:
    """Whether the document asks for `edges { node { <name> } }` of this connection
    (through fragments too): only then is it worth loading for every node up front."""
    raw = info._raw_info
    fragments = raw.fragments

    def fields(selection_set: SelectionSetNode | None, seen: set[str]) -> Iterator[FieldNode]:
        for node in selection_set.selections if selection_set else ():
            if isinstance(node, FieldNode):
                yield node
            elif isinstance(node, InlineFragmentNode):
                yield from fields(node.selection_set, seen)
            elif isinstance(node, FragmentSpreadNode) and node.name.value not in seen:
                seen.add(node.name.value)
                fragment = fragments.get(node.name.value)
                if fragment is not None:
                    yield from fields(fragment.selection_set, seen)

    for top in raw.field_nodes:
        for edges in fields(top.selection_set, set()):
            if edges.name.value != "edges":
                continue
            for node in fields(edges.selection_set, set()):
                if node.name.value == "node" and any(
                    f.name.value == name for f in fields(node.selection_set, set())
                ):
                    return True
    return False


async def agent(info: Info, id: strawberry.ID) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(await info.context.services.agents.get(p, id))


async def create_agent(info: Info, input: AgentInput) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(await info.context.services.agents.create(p, input.to_domain()))


async def update_agent(
    info: Info, id: strawberry.ID, input: AgentInput, expected_version: int | None = None
) -> Agent:
    p = await info.context.principal()
    return Agent.from_domain(
        await info.context.services.agents.update(p, id, input.to_domain(), expected_version)
    )


async def delete_agent(info: Info, id: strawberry.ID) -> bool:
    p = await info.context.principal()
    return await info.context.services.agents.delete(p, id)
