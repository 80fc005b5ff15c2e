"""Executions of another tenant are NOT_FOUND everywhere, never FORBIDDEN or visible."""

from __future__ import annotations

from tests.conftest import Team
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, error_code


async def test_execution_resolvers_are_isolated(gql: GQL, team: Team, other_team: Team) -> None:
    their_flow = await f.create_flow(gql, other_team.token, f.branching())
    their_agent = await b.agent(gql, other_team.token)
    their_crew = await b.crew(gql, other_team.token, [their_agent["id"]])
    tool = await b.tool(gql, other_team.token)
    slow = await f.create_flow(gql, other_team.token, f.slow_chain(tool["id"], [2.0]))
    theirs = await f.execute(gql, other_team.token, their_flow["id"], {"score": 1})
    running = await f.execute(gql, other_team.token, slow["id"])
    await f.wait_status(gql, other_team.token, theirs["id"])
    await f.wait_status(gql, other_team.token, running["id"], {"RUNNING"})

    mine = await f.create_flow(gql, team.token, f.branching())
    my_run = await f.execute(gql, team.token, mine["id"], {"score": 1})

    for name, variables in [
        ("Execution", {"id": theirs["id"]}),
        ("ExecutionEventLog", {"id": theirs["id"]}),
        ("CancelExecution", {"id": running["id"]}),
        ("ExecuteFlow", {"id": their_flow["id"], "inputs": {"score": 1}}),
        ("TestCrew", {"id": their_crew["id"], "inputs": {}}),
        ("Execution", {"id": "not-a-uuid"}),
        ("CancelExecution", {"id": "not-a-uuid"}),
    ]:
        body = await gql.op(name, variables, token=team.token)
        assert error_code(body) == "NOT_FOUND", (name, body)

    listed = (await gql.ok("Executions", {"first": 50}, token=team.token))["executions"]
    ids = {e["node"]["id"] for e in listed["edges"]}
    assert my_run["id"] in ids and not ids & {theirs["id"], running["id"]}
    filtered = await gql.ok("Executions", {"flowId": their_flow["id"]}, token=team.token)
    assert filtered["executions"]["edges"] == []
    odd = (await gql.ok("Executions", {"flowId": "nope"}, token=team.token))["executions"]
    assert odd["edges"] == []

    # A cursor from the other tenant reveals nothing of theirs.
    their_page = (await gql.ok("Executions", {"first": 1}, token=other_team.token))["executions"]
    after = (
        await gql.ok(
            "Executions",
            {"first": 50, "after": their_page["pageInfo"]["endCursor"]},
            token=team.token,
        )
    )["executions"]
    assert not {e["node"]["id"] for e in after["edges"]} & {theirs["id"], running["id"]}

    # Their run was not cancelled by our attempt.
    still = (await gql.ok("Execution", {"id": running["id"]}, token=other_team.token))["execution"]
    assert still["cancelRequested"] is False
    await gql.ok("CancelExecution", {"id": running["id"]}, token=other_team.token)
    await f.wait_status(gql, other_team.token, running["id"])
