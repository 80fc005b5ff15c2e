"""DataLoaders keep SQL statements bounded, whatever the number of rows listed."""

from __future__ import annotations

from typing import Any

from tests.conftest import Team, register
from tests.support import builders as b
from tests.support.client import GQL
from tests.support.statements import count_statements


async def _flows(gql: GQL, token: str, count: int) -> None:
    tools = [await b.tool(gql, token) for _ in range(3)]
    agents = [
        await b.agent(gql, token, toolIds=[t["id"] for t in tools[: i % 3 + 1]]) for i in range(3)
    ]
    crew = await b.crew(gql, token, [a["id"] for a in agents])
    for i in range(count):
        await b.flow(gql, token, agents[i % 3]["id"], crew["id"], tools[i % 3]["id"])


async def _listing_statements(gql: GQL, container: Any, token: str, first: int) -> int:
    with count_statements(container) as seen:
        data = await gql.ok("FlowsWithReferences", {"first": first}, token=token)
    assert len(data["flows"]["edges"]) == first
    node = data["flows"]["edges"][0]["node"]
    assert node["agents"] and node["agents"][0]["tools"] and node["tools"] and node["crews"]
    # Authentication reads the caller's user and tenant unless the principal cache still
    # holds them (server/principal_cache.py): not part of the listing.
    return len([s for s in seen if "FROM public." not in s])


async def test_listing_flows_with_agents_and_tools_is_bounded(gql: GQL, container: Any) -> None:
    small: Team = await register(gql)
    big: Team = await register(gql)
    await _flows(gql, small.token, 5)
    await _flows(gql, big.token, 100)
    few = await _listing_statements(gql, container, small.token, 5)
    many = await _listing_statements(gql, container, big.token, 100)
    # Flows; agents (with their tool ids), tools, crews (with members and tasks), each by
    # id; and one existence check of every reference for `validation`. An N+1 would add
    # ~95 statements for 100 flows. What PostgreSQL receives, transaction control
    # included, is counted in tests/api/test_wire_statements.py.
    assert many <= 6 and few <= 6, f"5 flows took {few} statements, 100 flows took {many}"
    assert many <= few + 1, f"5 flows took {few} statements, 100 flows took {many}"
