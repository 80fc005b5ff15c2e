"""Executions through the API: run, read, list, cancel, events (real Postgres and Redis)."""

from __future__ import annotations

import asyncio

from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.services import free_port


def _types(events: list[dict]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["nodeId"]) for e in events]


async def test_input_condition_two_branches_output_runs(gql: GQL, team: Team) -> None:
    member = await member_token(gql, team, "MEMBER")
    flow = await f.create_flow(gql, member, f.branching())
    started = await f.execute(gql, member, flow["id"], {"score": 9})
    assert started["status"] == "PENDING"
    assert started["flowVersion"] == 1 and started["flow"]["id"] == flow["id"]
    assert started["inputs"] == {"score": 9}

    done = await f.wait_status(gql, member, started["id"])
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"high": "high: 9"}
    assert done["error"] is None
    assert done["startedAt"] and done["finishedAt"]
    runs = {r["nodeId"]: r for r in done["nodeRuns"]}
    assert {k: v["status"] for k, v in runs.items()} == {
        "in": "COMPLETED",
        "check": "COMPLETED",
        "high": "COMPLETED",
        "low": "SKIPPED",
    }
    assert runs["check"]["output"] is True
    assert runs["in"]["output"] == {"score": 9}

    events = await f.collect_events(gql, member, started["id"])
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    types = _types(events)
    assert types[0] == ("EXECUTION_STARTED", None)
    assert types[-1] == ("EXECUTION_COMPLETED", None)
    assert ("NODE_SKIPPED", "low") in types
    assert events[-1]["data"] == {"outputs": {"high": "high: 9"}}

    # The other branch.
    other = await f.execute(gql, member, flow["id"], {"score": 2})
    other = await f.wait_status(gql, member, other["id"])
    assert other["outputs"] == {"low": "low: 2"}


async def test_branches_merge_into_one_output(gql: GQL, team: Team) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.merge(tool["id"]))
    for go, ran, skipped in ((True, "yes", "no"), (False, "no", "yes")):
        run = await f.execute(gql, team.token, flow["id"], {"go": go})
        done = await f.wait_status(gql, team.token, run["id"])
        assert done["status"] == "COMPLETED", done
        assert done["outputs"]["out"]["node"] == ran
        statuses = {r["nodeId"]: r["status"] for r in done["nodeRuns"]}
        assert statuses[skipped] == "SKIPPED" and statuses[ran] == "COMPLETED"


async def test_inputs_are_validated_against_the_input_schema(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    body = await gql.op(
        "ExecuteFlow", {"id": flow["id"], "inputs": {"score": "high"}}, token=team.token
    )
    assert error_code(body) == "BAD_USER_INPUT"
    assert "inputs.score" in body["errors"][0]["extensions"]["fields"]
    body = await gql.op("ExecuteFlow", {"id": flow["id"], "inputs": {}}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT"
    body = await gql.op("ExecuteFlow", {"id": flow["id"], "inputs": [1, 2]}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT"
    assert body["errors"][0]["extensions"]["fields"] == {"inputs": "must be a JSON object"}
    listed = (await gql.ok("Executions", {"flowId": flow["id"]}, token=team.token))["executions"]
    assert listed["edges"] == []  # nothing stored


async def test_oversized_inputs_name_the_limit(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    body = await gql.op(
        "ExecuteFlow",
        {"id": flow["id"], "inputs": {"score": 1, "blob": "x" * 300_000}},
        token=team.token,
    )
    assert error_code(body) == "LIMIT_EXCEEDED"
    assert "maxExecutionInputBytes" in body["errors"][0]["message"]


async def test_an_unreachable_provider_fails_its_node_clearly(gql: GQL, team: Team) -> None:
    # A provider at a closed local port: refused at once, whatever network the machine has;
    # the run says which node and provider failed, and never shows the key.
    world = await b.world(gql, team.token, baseUrl=f"http://127.0.0.1:{free_port()}/v1")
    run = await f.execute(gql, team.token, world["flow"]["id"], {"topic": "deep"})
    done = await f.wait_status(gql, team.token, run["id"])
    assert done["status"] == "FAILED"
    assert "research" in done["error"] and "LLM provider" in done["error"], done["error"]
    assert "sk-test-secret-123" not in done["error"]
    statuses = {r["nodeId"]: r["status"] for r in done["nodeRuns"]}
    assert statuses["research"] == "FAILED"
    assert statuses["team"] == "CANCELLED" and statuses["out"] == "CANCELLED"


async def test_test_crew_runs_a_one_node_flow(gql: GQL, team: Team) -> None:
    local = await b.provider(
        gql, team.token, baseUrl="crewgraph:local", model="scripted", apiKey=None
    )
    a = await b.agent(gql, team.token, llmProviderId=local["id"])
    crew = await b.crew(gql, team.token, [a["id"]])
    run = (
        await gql.ok("TestCrew", {"id": crew["id"], "inputs": {"topic": "x"}}, token=team.token)
    )["testCrew"]
    assert run["crew"]["id"] == crew["id"] and run["flow"] is None and run["flowVersion"] is None
    done = await f.wait_status(gql, team.token, run["id"])
    assert done["status"] == "COMPLETED", done["error"]
    assert done["outputs"]["output"], done["outputs"]
    assert {r["nodeId"] for r in done["nodeRuns"]} == {"input", "crew", "output"}
    body = await gql.op("TestCrew", {"id": crew["id"], "inputs": {"not ok": 1}}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT"


async def test_list_is_newest_first_with_filters_and_pages(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    other = await f.create_flow(gql, team.token, f.branching())
    ids = [(await f.execute(gql, team.token, flow["id"], {"score": i}))["id"] for i in range(3)]
    theirs = (await f.execute(gql, team.token, other["id"], {"score": 1}))["id"]
    for ident in [*ids, theirs]:
        await f.wait_status(gql, team.token, ident)

    page = (await gql.ok("Executions", {"first": 2, "flowId": flow["id"]}, token=team.token))[
        "executions"
    ]
    assert [e["node"]["id"] for e in page["edges"]] == [ids[2], ids[1]]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = (
        await gql.ok(
            "Executions",
            {"first": 2, "flowId": flow["id"], "after": page["pageInfo"]["endCursor"]},
            token=team.token,
        )
    )["executions"]
    assert [e["node"]["id"] for e in rest["edges"]] == [ids[0]]
    assert rest["pageInfo"]["hasNextPage"] is False

    everything = (await gql.ok("Executions", {"first": 10}, token=team.token))["executions"]
    assert [e["node"]["id"] for e in everything["edges"]][:4] == [theirs, ids[2], ids[1], ids[0]]
    done = (await gql.ok("Executions", {"status": "COMPLETED"}, token=team.token))["executions"]
    assert {e["node"]["id"] for e in done["edges"]} >= {theirs, *ids}
    failed = (await gql.ok("Executions", {"status": "FAILED"}, token=team.token))["executions"]
    assert not {e["node"]["id"] for e in failed["edges"]} & {theirs, *ids}

    nested = await gql.ok("FlowExecutions", {"id": flow["id"], "first": 5}, token=team.token)
    assert [e["node"]["id"] for e in nested["flow"]["executions"]["edges"]] == ids[::-1]


async def test_execution_pins_the_flow_version(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    first = await f.execute(gql, team.token, flow["id"], {"score": 9})
    changed = f.branching(flow["name"])
    changed["nodes"][2]["config"]["value"] = "HIGH {{ inputs.score }}"
    await gql.ok("UpdateFlow", {"id": flow["id"], "input": changed}, token=team.token)
    second = await f.execute(gql, team.token, flow["id"], {"score": 9})
    a = await f.wait_status(gql, team.token, first["id"])
    c = await f.wait_status(gql, team.token, second["id"])
    assert (a["flowVersion"], a["flow"]["version"]) == (1, 1)
    assert (c["flowVersion"], c["flow"]["version"]) == (2, 2)
    assert c["outputs"] == {"high": "HIGH 9"}
    # Runs of a deleted flow stay readable, with the version they ran.
    await gql.ok("DeleteFlow", {"id": flow["id"]}, token=team.token)
    again = (await gql.ok("Execution", {"id": first["id"]}, token=team.token))["execution"]
    assert again["flow"]["id"] == flow["id"] and again["status"] == "COMPLETED"


async def test_cancel_mid_run_stops_within_a_second(gql: GQL, team: Team) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.05, 30, 0.05]))
    run = await f.execute(gql, team.token, flow["id"])
    await f.wait_node(gql, team.token, run["id"], "s1", "RUNNING")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cancelled = (await gql.ok("CancelExecution", {"id": run["id"]}, token=team.token))[
        "cancelExecution"
    ]
    assert cancelled["cancelRequested"] is True
    done = await f.wait_status(gql, team.token, run["id"], timeout=5)
    assert loop.time() - t0 < 1.5
    assert done["status"] == "CANCELLED"
    statuses = {r["nodeId"]: r["status"] for r in done["nodeRuns"]}
    assert statuses == {
        "in": "COMPLETED",
        "s0": "COMPLETED",
        "s1": "CANCELLED",
        "s2": "CANCELLED",
        "out": "CANCELLED",
    }
    events = await f.collect_events(gql, team.token, run["id"])
    assert events[-1]["type"] == "EXECUTION_CANCELLED"
    assert events[-1]["data"] == {"cancelledNodes": ["s1"]}
    # Cancelling again is harmless and changes nothing.
    again = (await gql.ok("CancelExecution", {"id": run["id"]}, token=team.token))[
        "cancelExecution"
    ]
    assert again["status"] == "CANCELLED"
