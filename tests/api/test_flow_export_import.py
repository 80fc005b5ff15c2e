"""exportFlow / importFlow through the API, against the real database."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import httpx

from tests.conftest import Team, member_token, register
from tests.support import builders as b
from tests.support.client import GQL, error_code, op

NAMES = """query {
  tools(first: 100) { edges { node { id name } } }
  agents(first: 100) { edges { node { id name } } }
  crews(first: 100) { edges { node { id name } } }
  flows(first: 100) { edges { node { id name } } }
}"""


async def _names(gql: GQL, team: Team) -> dict[str, set[str]]:
    data = await gql.ok(NAMES, token=team.token)
    return {k: {e["node"]["name"] for e in v["edges"]} for k, v in data.items()}


async def _export(gql: GQL, token: str, flow_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = (await gql.ok("ExportFlow", {"id": flow_id}, token=token))["exportFlow"]
    return doc


async def _import(gql: GQL, token: str, document: Any, **kw: Any) -> dict[str, Any]:
    return await gql.op("ImportFlow", {"document": document, **kw}, token=token)


def _payload(body: dict[str, Any]) -> dict[str, Any]:
    assert not body.get("errors"), json.dumps(body["errors"], indent=1)
    result: dict[str, Any] = body["data"]["importFlow"]
    return result


async def _twin_provider(gql: GQL, team: Team, doc: dict[str, Any]) -> str:
    """A provider in `team` with the name and model of the document's provider."""
    p = doc["providers"][0]
    data = {"name": p["name"], "provider": "openai", "model": p["model"], "apiKey": "sk-other"}
    created = await gql.ok("CreateLlmProvider", {"input": data}, token=team.token)
    return str(created["createLlmProvider"]["id"])


async def test_round_trip_to_another_team_gives_the_same_document(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])

    assert doc["format"] == "crewgraph.flow/v1"
    assert doc["flow"]["name"] == world["flow"]["name"]
    assert {a["name"] for a in doc["agents"]} == {world["agent"]["name"], world["agent2"]["name"]}
    assert [t["name"] for t in doc["tools"]] == [world["tool"]["name"]]
    assert [c["name"] for c in doc["crews"]] == [world["crew"]["name"]]
    assert doc["providers"] == [
        {"id": "provider-1", "name": world["provider"]["name"], "model": "gpt-4o-mini"}
    ]
    text = json.dumps(doc)
    for thing in (*world.values(),):
        assert thing["id"] not in text
    for secret in ("sk-test-secret-123", team.tenant_id, team.slug, "apiKey", "baseUrl"):
        assert secret not in text

    other = await register(gql)
    await _twin_provider(gql, other, doc)
    result = _payload(await _import(gql, other.token, doc))
    assert result["renamed"] == [] and result["reused"] == []
    assert sorted(result["created"]) == sorted(
        [
            f"tool:{world['tool']['name']}",
            f"agent:{world['agent']['name']}",
            f"agent:{world['agent2']['name']}",
            f"crew:{world['crew']['name']}",
            f"flow:{world['flow']['name']}",
        ]
    )
    new_flow = result["flow"]
    assert new_flow["id"] != world["flow"]["id"] and new_flow["version"] == 1
    again = await _export(gql, other.token, new_flow["id"])
    assert again == doc
    # The imported flow is a real flow of the other team: it validates and references
    # only that team's rows.
    refs = await gql.ok("FlowsWithReferences", {"first": 10}, token=other.token)
    (edge,) = refs["flows"]["edges"]
    assert edge["node"]["validation"]["valid"] is True
    assert [a["name"] for a in edge["node"]["agents"]] == [world["agent"]["name"]]
    assert len(edge["node"]["crews"][0]["agents"]) == 2
    # Importing does not touch the source team.
    assert (await _names(gql, team))["flows"] == {world["flow"]["name"]}


async def test_fail_names_every_clash_and_writes_nothing(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    before = await _names(gql, team)
    body = await _import(gql, team.token, doc)  # onConflict defaults to FAIL
    assert error_code(body) == "CONFLICT"
    clashes = body["errors"][0]["extensions"]["clashes"]
    assert sorted(clashes) == sorted(
        [
            f"tool:{world['tool']['name']}",
            f"agent:{world['agent']['name']}",
            f"agent:{world['agent2']['name']}",
            f"crew:{world['crew']['name']}",
            f"flow:{world['flow']['name']}",
        ]
    )
    for clash in clashes:
        assert clash in body["errors"][0]["message"]
    assert await _names(gql, team) == before


async def test_rename_suffixes_every_clash(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    first = _payload(await _import(gql, team.token, doc, onConflict="RENAME"))
    agent = world["agent"]["name"]
    assert f"agent:{agent} -> {agent} (2)" in first["renamed"]
    assert f"flow:{world['flow']['name']} -> {world['flow']['name']} (2)" in first["renamed"]
    assert len(first["renamed"]) == 5 and first["reused"] == []
    assert f"agent:{agent} (2)" in first["created"]
    assert first["flow"]["name"] == f"{world['flow']['name']} (2)"

    second = _payload(await _import(gql, team.token, doc, onConflict="RENAME"))
    assert f"agent:{agent} -> {agent} (3)" in second["renamed"]
    names = await _names(gql, team)
    assert {agent, f"{agent} (2)", f"{agent} (3)"} <= names["agents"]
    assert len(names["flows"]) == 3

    # The renamed copy uses its own new rows, not the originals.
    exported = await _export(gql, team.token, first["flow"]["id"])
    assert {a["name"] for a in exported["agents"]} == {
        f"{agent} (2)",
        f"{world['agent2']['name']} (2)",
    }


async def test_reuse_binds_to_existing_resources(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    before = await _names(gql, team)
    result = _payload(await _import(gql, team.token, doc, onConflict="REUSE"))
    assert sorted(result["reused"]) == sorted(
        [
            f"tool:{world['tool']['name']}",
            f"agent:{world['agent']['name']}",
            f"crew:{world['crew']['name']}",
        ]
    ), "agent2 is used only through the reused crew, so it is not needed"
    assert result["created"] == [f"flow:{world['flow']['name']} (2)"]
    after = await _names(gql, team)
    assert after["agents"] == before["agents"] and after["tools"] == before["tools"]
    assert after["crews"] == before["crews"]
    nodes = {n["id"]: n["config"] for n in result["flow"]["nodes"]}
    assert nodes["research"]["agentId"] == world["agent"]["id"]
    assert nodes["team"]["crewId"] == world["crew"]["id"]
    assert nodes["echo"]["toolId"] == world["tool"]["id"]


async def test_reuse_creates_what_does_not_exist(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    other = await register(gql)
    await _twin_provider(gql, other, doc)
    result = _payload(await _import(gql, other.token, doc, onConflict="REUSE"))
    assert result["reused"] == [] and result["renamed"] == []
    assert len(result["created"]) == 5


async def test_providers_bind_by_map_else_by_name(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    provider_name = world["provider"]["name"]
    other = await register(gql)
    before = await _names(gql, other)

    body = await _import(gql, other.token, doc)
    assert error_code(body) == "BAD_USER_INPUT"
    assert provider_name in body["errors"][0]["message"]
    assert provider_name in body["errors"][0]["extensions"]["fields"]["providerMap"]

    # A provider id of another team is not found, like any other of its ids.
    mapping = [{"name": provider_name, "providerId": world["provider"]["id"]}]
    body = await _import(gql, other.token, doc, providerMap=mapping)
    assert error_code(body) == "NOT_FOUND"
    body = await _import(
        gql, other.token, doc, providerMap=[{"name": "nope", "providerId": str(uuid.uuid4())}]
    )
    assert error_code(body) == "BAD_USER_INPUT"
    assert await _names(gql, other) == before

    providers = await gql.ok("LlmProvidersRuntime", {"first": 10}, token=other.token)
    local = next(
        e["node"]["id"]
        for e in providers["llmProviders"]["edges"]
        if e["node"]["name"] == "Local (scripted)"
    )
    mapping = [{"name": provider_name, "providerId": local}]
    result = _payload(await _import(gql, other.token, doc, providerMap=mapping))
    again = await _export(gql, other.token, result["flow"]["id"])
    assert again["providers"] == [
        {"id": "provider-1", "name": "Local (scripted)", "model": "scripted"}
    ]
    expected = copy.deepcopy(doc)
    expected["providers"] = again["providers"]
    assert again == expected


async def test_hostile_documents_write_nothing(gql: GQL, team: Team, server_url: str) -> None:
    world = await b.world(gql, team.token)
    doc = await _export(gql, team.token, world["flow"]["id"])
    other = await register(gql)
    await _twin_provider(gql, other, doc)
    before = await _names(gql, other)

    def variant(change: Any) -> dict[str, Any]:
        d = copy.deepcopy(doc)
        change(d)
        return d

    nodes = doc["flow"]["nodes"]
    research = next(i for i, n in enumerate(nodes) if n["id"] == "research")
    cases: list[tuple[Any, str, str | None]] = [
        ({"format": "crewgraph.flow/v9"}, "BAD_USER_INPUT", "document.format"),
        (
            variant(lambda d: d.__setitem__("format", "other/v1")),
            "BAD_USER_INPUT",
            "document.format",
        ),
        ([1, 2, 3], "BAD_USER_INPUT", "document"),
        (
            variant(lambda d: d["flow"]["edges"].append({"source": "out", "target": "in"})),
            "BAD_USER_INPUT",
            None,
        ),
        (
            variant(
                lambda d: d["flow"]["edges"].append(
                    {"source": "team", "target": "research", "branch": None}
                )
            ),
            "BAD_USER_INPUT",
            None,
        ),
        (
            # Another team's real ids are not references of the document.
            variant(
                lambda d: d["flow"]["nodes"][research]["config"].update(
                    agentId=world["agent"]["id"]
                )
            ),
            "BAD_USER_INPUT",
            f"document.flow.nodes[{research}].config.agentId",
        ),
        (
            variant(lambda d: d["agents"][0].update(toolIds=[world["tool"]["id"]])),
            "BAD_USER_INPUT",
            "document.agents[0].toolIds[0]",
        ),
        (
            variant(lambda d: d["tools"][0].update(config={"code": "def run(:\n"})),
            "BAD_USER_INPUT",
            "document.tools[0].config.code",
        ),
        (
            variant(lambda d: d["agents"][1].update(name=d["agents"][0]["name"])),
            "BAD_USER_INPUT",
            "document.agents[1].name",
        ),
        (
            variant(lambda d: d["agents"][0].update(goal=42)),
            "BAD_USER_INPUT",
            "document.agents[0].goal",
        ),
        (
            variant(
                lambda d: d["flow"]["nodes"].extend(
                    {"id": f"extra{i}", "kind": "OUTPUT"} for i in range(2001)
                )
            ),
            "LIMIT_EXCEEDED",
            None,
        ),
    ]
    for document, code, field in cases:
        body = await _import(gql, other.token, document, onConflict="RENAME")
        assert error_code(body) == code, (field, body)
        if field is not None:
            assert field in body["errors"][0]["extensions"]["fields"], body
    assert await _names(gql, other) == before

    # 10 MB never reaches the resolver: the body limit refuses it first.
    huge = variant(lambda d: d["flow"].update(description="x" * 10_000_000))
    async with httpx.AsyncClient(base_url=server_url, timeout=60) as http:
        resp = await http.post(
            "/graphql",
            json={"query": op("ImportFlow"), "variables": {"document": huge}},
            headers={"Authorization": f"Bearer {other.token}"},
        )
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"
    assert await _names(gql, other) == before


async def test_export_is_tenant_isolated_and_import_needs_a_member(gql: GQL, team: Team) -> None:
    world = await b.world(gql, team.token)
    other = await register(gql)
    body = await gql.op("ExportFlow", {"id": world["flow"]["id"]}, token=other.token)
    assert error_code(body) == "NOT_FOUND"
    body = await gql.op("ExportFlow", {"id": "not-an-id"}, token=team.token)
    assert error_code(body) == "NOT_FOUND"

    doc = await _export(gql, team.token, world["flow"]["id"])
    viewer = await member_token(gql, team, "VIEWER")
    assert await _export(gql, viewer, world["flow"]["id"]) == doc
    body = await _import(gql, viewer, doc, onConflict="RENAME")
    assert error_code(body) == "FORBIDDEN"
    member = await member_token(gql, team, "MEMBER")
    assert _payload(await _import(gql, member, doc, onConflict="RENAME"))["flow"]["id"]
