"""Query cost budget and response-size cap (a 339-byte query once produced a 384 MB
response), and the error contract for a too-deep JSON body and a non-JSON
`json_transform` result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from domain.errors import BadUserInput
from graphql import get_introspection_query, parse
from sandbox.builtins import HostBuiltins
from schema.cost import operation_cost
from server.graphql_schema import build_schema
from server.responses import encode_capped
from server.settings import Settings
from tests.api.test_query_counts import count_statements
from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support import ws as w
from tests.support.client import GQL, _documents, error_code

BUDGET = Settings.model_fields["max_query_cost"].default

EXECUTION_PAGE = (
    "executions(first: 100) { edges { node { id status inputs outputs "
    "nodeRuns { nodeId output } } } }"
)
# The reported attack: four aliases of a full page of executions with their node outputs.
ATTACK = "{ " + " ".join(f"a{i}: {EXECUTION_PAGE}" for i in range(4)) + " }"


# --- cost analysis --------------------------------------------------------------------


async def test_the_reported_attack_is_refused_before_any_sql(
    gql: GQL, team: Team, container: Any
) -> None:
    viewer = await member_token(gql, team, "VIEWER")
    with count_statements(container) as seen:
        body = await gql.raw(ATTACK, token=viewer)
    assert body["data"] is None
    assert error_code(body) == "LIMIT_EXCEEDED", body
    ext = body["errors"][0]["extensions"]
    assert ext["budget"] == BUDGET and ext["cost"] > BUDGET, ext
    assert not [s for s in seen if "execution" in s.lower()], seen  # nothing was read


async def test_one_full_page_of_executions_is_within_budget(gql: GQL, team: Team) -> None:
    data = await gql.ok("{ " + EXECUTION_PAGE + " }", token=team.token)
    assert data["executions"]["edges"] == []


def test_every_client_operation_of_the_suite_is_within_budget_at_full_pages() -> None:
    schema = build_schema()._schema
    for name, text in _documents().items():
        cost = operation_cost(schema, parse(text), None, {"first": 100}, default_page=20)
        assert cost <= BUDGET, (name, cost)


async def test_variables_fragments_and_defaults_count() -> None:
    schema = build_schema(max_cost=1000)
    query = """
        query Page($n: Int) { executions(first: $n) { ...E } }
        fragment E on ExecutionConnection { edges { node { ... on Execution { outputs } } } }
    """
    small = await schema.execute(query, variable_values={"n": 1})
    # Over budget before resolving: a resolver would have needed a request context.
    big = await schema.execute(query, variable_values={"n": 100})
    assert big.errors and big.errors[0].extensions == {
        "code": "LIMIT_EXCEEDED",
        "cost": 100 * (1 + 1 + 1 + 10),
        "budget": 1000,
    }
    assert small.errors and (small.errors[0].extensions or {})["code"] != "LIMIT_EXCEEDED"
    doc = parse(query)
    # No `first`: the default page size (20).
    assert operation_cost(schema._schema, doc, None, {}, default_page=20) == 20 * 13


async def test_introspection_stays_available() -> None:
    result = await build_schema().execute(get_introspection_query())
    assert not result.errors and result.data and result.data["__schema"]


async def test_subscriptions_are_costed_per_event() -> None:
    schema = build_schema(max_cost=500)
    query = (
        "subscription { executionUpdates { flow { versions { agents { tools "
        "{ id name inputSchema config } } } } } }"
    )
    stream: Any = await schema.subscribe(query)
    first = await stream.__anext__()  # refused before the resolver asks for a principal
    assert first.errors and first.errors[0].extensions is not None
    assert first.errors[0].extensions["code"] == "LIMIT_EXCEEDED"
    assert first.errors[0].extensions["cost"] > 500


# --- response-size cap ----------------------------------------------------------------


async def test_a_response_over_the_cap_is_refused_whole(
    gql: GQL, team: Team, container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(container.settings, "max_response_bytes", 20_000)
    resp = await gql.http.post(
        "/graphql",
        json={"query": get_introspection_query()},
        headers={"Authorization": f"Bearer {team.token}"},
    )
    assert resp.status_code == 200
    assert len(resp.content) < 20_000
    body = resp.json()
    assert body["data"] is None and error_code(body) == "LIMIT_EXCEEDED", body
    assert body["errors"][0]["extensions"]["limit"] == 20_000


async def test_a_websocket_frame_over_the_cap_is_an_error_on_that_operation(
    gql: GQL, team: Team, container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(container.settings, "max_response_bytes", 20_000)
    async with gql.connect_ws() as ws:
        assert (await w.init(ws, await w.bearer_payload(team.token)))["type"] == "connection_ack"
        await w.subscribe(ws, "big", get_introspection_query())
        msg = await w.recv(ws)
        assert msg["id"] == "big" and msg["type"] == "next", msg
        assert msg["payload"]["data"] is None
        assert msg["payload"]["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"
        await w.subscribe(ws, "small", "{ __typename }")  # the connection goes on
        while (msg := await w.recv(ws))["id"] != "small":
            pass
        assert msg["payload"] == {"data": {"__typename": "Query"}}


def test_multiplexed_frames_and_unserialisable_results_are_capped() -> None:
    frame = {"id": "1", "type": "next", "payload": {"data": {"x": "a" * 5000}}}
    capped = json.loads(encode_capped(frame, 1000))
    assert capped["id"] == "1" and capped["type"] == "next"
    assert capped["payload"]["errors"][0]["extensions"]["code"] == "LIMIT_EXCEEDED"
    broken = json.loads(encode_capped({"data": {"x": {1, 2}}}, 1000))
    assert broken["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"


# --- errors outside the contract ------------------------------------------------------


@pytest.mark.parametrize("where", ["body", "variables"])
async def test_a_too_deep_json_body_is_bad_user_input(server_url: str, where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    content = deep if where == "body" else '{"query": "{ __typename }", "variables": ' + deep + "}"
    async with httpx.AsyncClient(base_url=server_url, timeout=30) as http:
        resp = await http.post(
            "/graphql", content=content, headers={"content-type": "application/json"}
        )
    assert resp.status_code == 400, resp.text
    assert error_code(resp.json()) == "BAD_USER_INPUT"
    assert resp.headers.get("x-request-id")


async def test_json_transform_returning_a_set_is_a_clean_tool_failure(gql: GQL, team: Team) -> None:
    tool = await b.tool(
        gql, team.token, kind="BUILTIN", config={"builtin": "json_transform"}, inputSchema=None
    )
    sample = {"data": [1, 2], "expression": "{1, 2}"}
    data = await gql.ok("ValidateTool", {"id": tool["id"], "sampleInput": sample}, token=team.token)
    result = data["validateTool"]
    assert result["valid"] is False and result["output"] is None, result
    assert any("not JSON (got set)" in e for e in result["errors"]), result


def test_json_transform_result_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(BadUserInput, match="not JSON"):
        HostBuiltins._json_transform({"data": [1], "expression": "{1, 2}"})
    assert HostBuiltins(tmp_path)._json_transform({"data": [1], "expression": "data"}) == [1]
