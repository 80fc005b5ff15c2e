"""Every resource resolver, called with the other tenant's ids, answers NOT_FOUND
and changes nothing — including ids inside flow node configs and crew tasks."""

from __future__ import annotations

from typing import Any

from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL, error_code


async def test_other_tenants_ids_are_not_found_everywhere(
    gql: GQL, team: Team, other_team: Team
) -> None:
    mine = await b.world(gql, team.token)
    theirs = await b.world(gql, other_team.token)
    t = {k: v["id"] for k, v in theirs.items()}
    m = {k: v["id"] for k, v in mine.items()}

    agent_in = {"name": "x", "role": "r", "goal": "g", "backstory": "b"}
    tool_in = {
        "name": "x",
        "description": "d",
        "kind": "BUILTIN",
        "config": {"builtin": "file_read"},
    }
    crew_in = {
        "name": "x",
        "agentIds": [m["agent"]],
        "tasks": [{"description": "d", "expectedOutput": "e", "agentId": m["agent"]}],
    }
    flow_in: dict[str, Any] = {"name": "x", **b.graph(m["agent"], m["crew"], m["tool"])}
    provider_in = {"name": "x", "provider": "openai", "model": "m"}

    def read_update_delete(kind: str, key: str, data: Any) -> list[tuple[str, dict[str, Any]]]:
        return [
            (kind, {"id": t[key]}),
            (f"Update{kind}", {"id": t[key], "input": data}),
            (f"Delete{kind}", {"id": t[key]}),
        ]

    calls = [
        *read_update_delete("LlmProvider", "provider", provider_in),
        *read_update_delete("Tool", "tool", tool_in),
        *read_update_delete("Agent", "agent", agent_in),
        *read_update_delete("Crew", "crew", crew_in),
        ("FlowVersion", {"id": t["flow"], "version": 1}),
        *read_update_delete("Flow", "flow", flow_in),
        # Their ids smuggled into my writes.
        ("CreateAgent", {"input": {**agent_in, "name": "a1", "llmProviderId": t["provider"]}}),
        ("CreateAgent", {"input": {**agent_in, "name": "a2", "toolIds": [m["tool"], t["tool"]]}}),
        ("UpdateAgent", {"id": m["agent2"], "input": {**agent_in, "toolIds": [t["tool"]]}}),
        (
            "CreateCrew",
            {
                "input": {
                    **crew_in,
                    "agentIds": [t["agent"]],
                    "tasks": [{"description": "d", "expectedOutput": "e", "agentId": t["agent"]}],
                }
            },
        ),
        (
            "CreateCrew",
            {"input": {**crew_in, "process": "hierarchical", "managerAgentId": t["agent"]}},
        ),
        ("CreateFlow", {"input": {"name": "f1", **b.graph(t["agent"], m["crew"], m["tool"])}}),
        ("CreateFlow", {"input": {"name": "f2", **b.graph(m["agent"], t["crew"], m["tool"])}}),
        ("CreateFlow", {"input": {"name": "f3", **b.graph(m["agent"], m["crew"], t["tool"])}}),
        (
            "UpdateFlow",
            {"id": m["flow"], "input": {"name": "f4", **b.graph(t["agent"], t["crew"], t["tool"])}},
        ),
    ]
    failures = []
    for name, variables in calls:
        body = await gql.op(name, variables, token=team.token)
        if error_code(body) != "NOT_FOUND":
            failures.append(f"{name}: {error_code(body)} {body.get('errors') or body.get('data')}")
    assert not failures, "\n".join(failures)

    # validateFlow with their ids: the references simply do not exist here.
    check = (
        await gql.ok("ValidateFlow", b.graph(t["agent"], t["crew"], t["tool"]), token=team.token)
    )["validateFlow"]
    assert check["valid"] is False
    assert any("does not exist" in e for e in check["errors"])

    # Their world is untouched and mine did not grow.
    flow = (await gql.ok("Flow", {"id": t["flow"]}, token=other_team.token))["flow"]
    assert flow["version"] == 1
    assert (await gql.ok("Agent", {"id": t["agent"]}, token=other_team.token))["agent"][
        "version"
    ] == 1
    lists = {
        "Agents": "agents",
        "Crews": "crews",
        "Tools": "tools",
        "Flows": "flows",
        "LlmProviders": "llmProviders",
    }
    for op_name, field in lists.items():
        ids = {e["node"]["id"] for e in (await gql.ok(op_name, token=team.token))[field]["edges"]}
        assert not ids & set(t.values()), op_name
    assert len((await gql.ok("Agents", token=team.token))["agents"]["edges"]) == 2
    assert len((await gql.ok("Flows", token=team.token))["flows"]["edges"]) == 1
