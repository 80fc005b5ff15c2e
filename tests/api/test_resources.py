"""Providers, tools, agents, crews and flows through the API."""

from __future__ import annotations

import copy
from typing import Any

from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support.client import GQL, error_code


async def test_member_builds_validates_updates_and_reads_history(gql: GQL, team: Team) -> None:
    provider = await b.provider(gql, team.token)
    assert provider["hasApiKey"] is True
    member = await member_token(gql, team, "MEMBER")
    tool = await b.tool(gql, member)
    agent = await b.agent(
        gql, member, llmProviderId=provider["id"], toolIds=[tool["id"]], temperature=0.3
    )
    assert agent["llmProvider"]["id"] == provider["id"]
    assert [t["id"] for t in agent["tools"]] == [tool["id"]]
    assert agent["temperature"] == 0.3 and agent["maxIterations"] == 20
    helper = await b.agent(gql, member)
    crew = await b.crew(gql, member, [agent["id"], helper["id"]])
    assert [a["id"] for a in crew["agents"]] == [agent["id"], helper["id"]]
    assert crew["tasks"][0]["agent"]["id"] == agent["id"]

    flow = await b.flow(gql, member, agent["id"], crew["id"], tool["id"])
    assert flow["version"] == 1
    assert flow["validation"] == {
        "valid": True,
        "errors": [],
        "executionOrder": ["in", "research", "check", "team", "echo", "out"],
    }

    # A cycle is reported readably by validateFlow (which writes nothing).
    graph = b.graph(agent["id"], crew["id"], tool["id"])
    graph["edges"].append({"source": "team", "target": "research"})
    check = (await gql.ok("ValidateFlow", graph, token=member))["validateFlow"]
    assert check["valid"] is False
    assert any("cycle" in e and "research" in e and "team" in e for e in check["errors"]), check[
        "errors"
    ]
    assert check["executionOrder"] == []

    # Optimistic concurrency: a stale expectedVersion is CONFLICT; the right one bumps.
    new = {"name": "renamed", **b.graph(agent["id"], crew["id"], tool["id"])}
    new["nodes"][1]["config"]["task"] = "Dig into {{ inputs.topic }}"
    updated = (
        await gql.ok(
            "UpdateFlow", {"id": flow["id"], "input": new, "expectedVersion": 1}, token=member
        )
    )["updateFlow"]
    assert updated["version"] == 2 and updated["name"] == "renamed"
    stale = await gql.op(
        "UpdateFlow", {"id": flow["id"], "input": new, "expectedVersion": 1}, token=member
    )
    assert error_code(stale) == "CONFLICT"
    assert stale["errors"][0]["extensions"]["currentVersion"] == 2

    old = (await gql.ok("FlowVersion", {"id": flow["id"], "version": 1}, token=member))[
        "flowVersion"
    ]
    assert old["version"] == 1 and old["name"] == flow["name"]
    assert old["nodes"][1]["config"]["task"] == "Research {{ inputs.topic }}"
    history = (await gql.ok("Flow", {"id": flow["id"]}, token=member))["flow"]["versions"]
    assert [v["version"] for v in history] == [2, 1]
    missing = await gql.op("FlowVersion", {"id": flow["id"], "version": 9}, token=member)
    assert error_code(missing) == "NOT_FOUND"


async def test_invalid_flow_is_refused_with_fields_and_not_stored(gql: GQL, team: Team) -> None:
    w = await b.world(gql, team.token)
    graph = b.graph(w["agent"]["id"], w["crew"]["id"], w["tool"]["id"])
    broken = copy.deepcopy(graph)
    broken["edges"].append({"source": "team", "target": "research"})
    body = await gql.op("CreateFlow", {"input": {"name": "cyclic", **broken}}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT"
    assert "cycle" in body["errors"][0]["message"]
    assert body["errors"][0]["extensions"]["fields"]
    bad_config = copy.deepcopy(graph)
    bad_config["nodes"][2]["config"] = {}
    body = await gql.op("CreateFlow", {"input": {"name": "nocond", **bad_config}}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT"
    assert any("nodes[2].config" in k for k in body["errors"][0]["extensions"]["fields"])
    listed = (await gql.ok("Flows", {"search": "cyclic"}, token=team.token))["flows"]["edges"]
    assert listed == []


async def test_viewer_reads_but_cannot_write(gql: GQL, team: Team) -> None:
    w = await b.world(gql, team.token)
    viewer = await member_token(gql, team, "VIEWER")
    assert (await gql.ok("Flow", {"id": w["flow"]["id"]}, token=viewer))["flow"]["name"] == w[
        "flow"
    ]["name"]
    assert (await gql.ok("Agent", {"id": w["agent"]["id"]}, token=viewer))["agent"]["id"] == w[
        "agent"
    ]["id"]
    assert len((await gql.ok("Tools", token=viewer))["tools"]["edges"]) == 1
    denied = await gql.op(
        "CreateAgent",
        {"input": {"name": "x", "role": "r", "goal": "g", "backstory": "b"}},
        token=viewer,
    )
    assert error_code(denied) == "FORBIDDEN"
    denied = await gql.op("DeleteFlow", {"id": w["flow"]["id"]}, token=viewer)
    assert error_code(denied) == "FORBIDDEN"
    member = await member_token(gql, team, "MEMBER")
    denied = await gql.op(
        "CreateLlmProvider",
        {"input": {"name": "m", "provider": "openai", "model": "x"}},
        token=member,
    )
    assert error_code(denied) == "FORBIDDEN"


async def test_deleting_referenced_resources_is_conflict_naming_referrers(
    gql: GQL, team: Team
) -> None:
    w = await b.world(gql, team.token)
    body = await gql.op("DeleteAgent", {"id": w["agent"]["id"]}, token=team.token)
    assert error_code(body) == "CONFLICT"
    referrers = body["errors"][0]["extensions"]["referrers"]
    assert f"crew {w['crew']['name']!r}" in referrers and f"flow {w['flow']['name']!r}" in referrers
    body = await gql.op("DeleteTool", {"id": w["tool"]["id"]}, token=team.token)
    assert error_code(body) == "CONFLICT"
    assert f"agent {w['agent']['name']!r}" in body["errors"][0]["extensions"]["referrers"]
    body = await gql.op("DeleteLlmProvider", {"id": w["provider"]["id"]}, token=team.token)
    assert error_code(body) == "CONFLICT"
    body = await gql.op("DeleteCrew", {"id": w["crew"]["id"]}, token=team.token)
    assert error_code(body) == "CONFLICT"

    # Remove the referrers top-down; then everything can go and nothing dangles.
    assert (await gql.ok("DeleteFlow", {"id": w["flow"]["id"]}, token=team.token))["deleteFlow"]
    assert (
        error_code(await gql.op("Flow", {"id": w["flow"]["id"]}, token=team.token)) == "NOT_FOUND"
    )
    assert (await gql.ok("DeleteCrew", {"id": w["crew"]["id"]}, token=team.token))["deleteCrew"]
    assert (await gql.ok("DeleteAgent", {"id": w["agent"]["id"]}, token=team.token))["deleteAgent"]
    assert (await gql.ok("DeleteTool", {"id": w["tool"]["id"]}, token=team.token))["deleteTool"]
    assert (await gql.ok("DeleteLlmProvider", {"id": w["provider"]["id"]}, token=team.token))[
        "deleteLlmProvider"
    ]
    # The deleted flow's name is free again.
    again = await b.flow(
        gql,
        team.token,
        w["agent2"]["id"],
        (await b.crew(gql, team.token, [w["agent2"]["id"]]))["id"],
        (await b.tool(gql, team.token))["id"],
        name=w["flow"]["name"],
    )
    assert again["name"] == w["flow"]["name"]


async def test_names_are_unique_per_tenant(gql: GQL, team: Team, other_team: Team) -> None:
    await b.agent(gql, team.token, name="Scout")
    dup = await gql.op(
        "CreateAgent",
        {"input": {"name": "Scout", "role": "r", "goal": "g", "backstory": "b"}},
        token=team.token,
    )
    assert error_code(dup) == "CONFLICT"
    assert dup["errors"][0]["extensions"]["fields"] == {"name": "is already taken"}
    assert (await b.agent(gql, other_team.token, name="Scout"))["name"] == "Scout"


async def test_pagination_search_and_kind_filters(gql: GQL, team: Team) -> None:
    for i in range(5):
        await b.agent(gql, team.token, name=f"alpha-{i}")
    await b.agent(gql, team.token, name="beta")
    page = (await gql.ok("Agents", {"first": 2, "search": "alpha"}, token=team.token))["agents"]
    seen = [e["node"]["name"] for e in page["edges"]]
    await b.agent(gql, team.token, name="alpha-late")
    while page["pageInfo"]["hasNextPage"]:
        page = (
            await gql.ok(
                "Agents",
                {"first": 2, "after": page["pageInfo"]["endCursor"], "search": "alpha"},
                token=team.token,
            )
        )["agents"]
        seen += [e["node"]["name"] for e in page["edges"]]
    assert seen == [f"alpha-{i}" for i in range(5)] + ["alpha-late"]
    literal = (await gql.ok("Agents", {"search": "%"}, token=team.token))["agents"]["edges"]
    assert literal == []

    await b.tool(gql, team.token, kind="BUILTIN", config={"builtin": "json_transform"})
    await b.tool(
        gql,
        team.token,
        kind="DOCKER",
        config={
            "image": "crewgraph/sandbox-python:1",
            "command": ["python3", "-c", "print(1)"],
        },
    )
    await b.tool(gql, team.token)
    kinds = {
        k: [
            e["node"]["kind"]
            for e in (await gql.ok("Tools", {"kind": k}, token=team.token))["tools"]["edges"]
        ]
        for k in ("BUILTIN", "DOCKER", "CUSTOM_PYTHON")
    }
    assert kinds == {
        "BUILTIN": ["BUILTIN"],
        "DOCKER": ["DOCKER"],
        "CUSTOM_PYTHON": ["CUSTOM_PYTHON"],
    }


async def test_every_update_bumps_version_with_optimistic_concurrency(gql: GQL, team: Team) -> None:
    w = await b.world(gql, team.token)

    def update_of(key: str, data: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"id": w[key]["id"], "input": data, **more}

    async def update(kind: str, key: str, data: dict[str, Any], **more: Any) -> Any:
        variables = update_of(key, data, **more)
        return (await gql.ok(f"Update{kind}", variables, token=team.token))[f"update{kind}"]

    agent_input = {
        "name": "renamed-agent",
        "role": "R",
        "goal": "G",
        "backstory": "B",
        "toolIds": [w["tool"]["id"]],
    }
    a = await update("Agent", "agent", agent_input, expectedVersion=1)
    assert a["version"] == 2 and a["llmProvider"] is None
    stale = update_of("agent", agent_input, expectedVersion=1)
    assert error_code(await gql.op("UpdateAgent", stale, token=team.token)) == "CONFLICT"
    tool_input = {
        "name": "t2",
        "description": "d",
        "kind": "BUILTIN",
        "config": {"builtin": "file_read"},
    }
    t = await update("Tool", "tool", tool_input)
    assert t["version"] == 2 and t["kind"] == "BUILTIN"
    crew_input = {
        "name": "c2",
        "process": "hierarchical",
        "agentIds": [w["agent"]["id"]],
        "managerAgentId": w["agent2"]["id"],
        "tasks": [{"description": "d", "expectedOutput": "e", "agentId": w["agent"]["id"]}],
    }
    c = await update("Crew", "crew", crew_input, expectedVersion=1)
    assert (
        c["version"] == 2
        and c["process"] == "hierarchical"
        and c["managerAgent"]["id"] == w["agent2"]["id"]
    )
    p = await update("LlmProvider", "provider", {"name": "p2", "provider": "openai", "model": "o"})
    assert p["version"] == 2 and p["hasApiKey"] is True  # null apiKey keeps the key
    # A new destination needs the key again (or "" to drop it): see test_llm.py.
    ollama = {"name": "p2", "provider": "ollama", "model": "llama3"}
    p = await update("LlmProvider", "provider", {**ollama, "apiKey": ""})
    assert p["hasApiKey"] is False


async def test_api_key_is_never_returned(gql: GQL, team: Team) -> None:
    p = await b.provider(gql, team.token, apiKey="sk-very-secret-value")
    resp = await gql.http.post(
        "/graphql",
        json={
            "query": "{ llmProviders { edges { node { id name provider model baseUrl hasApiKey } } } }"
        },
        headers={"Authorization": f"Bearer {team.token}"},
    )
    assert "sk-very-secret-value" not in resp.text
    assert p["hasApiKey"] is True
    introspect = await gql.raw(
        '{ __type(name: "LlmProvider") { fields { name } } }', token=team.token
    )
    names = {f["name"] for f in introspect["data"]["__type"]["fields"]}
    assert "apiKey" not in names
