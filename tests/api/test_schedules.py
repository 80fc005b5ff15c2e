"""Schedules through the API: validation, RBAC, isolation, flow deletion, and firing
(the session server's scheduler loop; due times are moved into the past in the database
instead of waiting for the clock)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.schedules import next_run
from tests.conftest import Team, member_token
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.schedules import (
    CREATE,
    GET,
    SCHEDULE,
    at,
    create_schedule,
    make_due,
    wait_fired,
    wait_moved_on,
)

UPDATE = (
    "mutation($id: ID!, $input: ScheduleInput!) "
    "{ updateSchedule(id: $id, input: $input) { ...ScheduleFields } }" + SCHEDULE
)
LIST = (
    "query($flowId: ID, $first: Int, $after: String) { schedules(flowId: $flowId, "
    "first: $first, after: $after) { edges { cursor node { ...ScheduleFields } } "
    "pageInfo { hasNextPage endCursor } } }" + SCHEDULE
)
DELETE = "mutation($id: ID!) { deleteSchedule(id: $id) }"
DELETE_FLOW = "mutation($id: ID!) { deleteFlow(id: $id) }"


async def _fields(gql: GQL, token: str, query: str, variables: dict[str, Any]) -> dict[str, str]:
    body = await gql.raw(query, variables, token=token)
    assert error_code(body) == "BAD_USER_INPUT", body
    fields: dict[str, str] = body["errors"][0]["extensions"]["fields"]
    return fields


def test_next_run_follows_the_timezone_across_daylight_saving() -> None:
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    winter = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert next_run("0 9 * * *", "Europe/Berlin", summer) == datetime(2026, 7, 2, 7, 0, tzinfo=UTC)
    assert next_run("0 9 * * *", "Europe/Berlin", winter) == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    # Strictly after: a time exactly on the schedule moves to the next one.
    on_time = datetime(2026, 7, 1, 12, 5, tzinfo=UTC)
    assert next_run("*/5 * * * *", "UTC", on_time) == on_time + timedelta(minutes=5)


async def test_create_read_update_delete(gql: GQL, team: Team) -> None:
    member = await member_token(gql, team, "MEMBER")
    flow = await f.create_flow(gql, member, f.branching())
    before = datetime.now(UTC)
    created = await create_schedule(
        gql,
        member,
        flowId=flow["id"],
        cron="30 9 * * 1-5",
        timezone="Europe/Berlin",
        inputs={"score": 7},
    )
    assert created["flow"]["id"] == flow["id"]
    assert (created["cron"], created["timezone"], created["inputs"]) == (
        "30 9 * * 1-5",
        "Europe/Berlin",
        {"score": 7},
    )
    assert created["enabled"] is True and created["lastExecution"] is None
    assert at(created["nextRunAt"]) == next_run("30 9 * * 1-5", "Europe/Berlin", before)

    got = (await gql.ok(GET, {"id": created["id"]}, token=team.token))["schedule"]
    assert got == created

    # Null optional fields keep the stored values; a new cron moves nextRunAt.
    updated = (
        await gql.ok(
            UPDATE,
            {"id": created["id"], "input": {"flowId": flow["id"], "cron": "0 * * * *"}},
            token=member,
        )
    )["updateSchedule"]
    assert updated["timezone"] == "Europe/Berlin" and updated["inputs"] == {"score": 7}
    assert updated["enabled"] is True
    assert at(updated["nextRunAt"]).minute == 0
    disabled = (
        await gql.ok(
            UPDATE,
            {
                "id": created["id"],
                "input": {"flowId": flow["id"], "cron": "0 * * * *", "enabled": False},
            },
            token=member,
        )
    )["updateSchedule"]
    assert disabled["enabled"] is False and disabled["nextRunAt"] is None

    other = await create_schedule(
        gql, member, flowId=flow["id"], cron="* * * * *", inputs={"score": 1}
    )
    assert other["timezone"] == "UTC"
    listed = (await gql.ok(LIST, {"flowId": flow["id"], "first": 1}, token=team.token))["schedules"]
    assert [e["node"]["id"] for e in listed["edges"]] == [created["id"]]
    assert listed["pageInfo"]["hasNextPage"] is True
    rest = (
        await gql.ok(
            LIST,
            {"flowId": flow["id"], "after": listed["pageInfo"]["endCursor"]},
            token=team.token,
        )
    )["schedules"]
    assert [e["node"]["id"] for e in rest["edges"]] == [other["id"]]

    assert (await gql.ok(DELETE, {"id": created["id"]}, token=member))["deleteSchedule"]
    body = await gql.raw(GET, {"id": created["id"]}, token=member)
    assert error_code(body) == "NOT_FOUND"


async def test_bad_schedules_name_the_field(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    base = {"flowId": flow["id"], "cron": "* * * * *", "inputs": {"score": 1}}
    cases = [
        ({"cron": "* * * *"}, "input.cron"),
        ({"cron": "0 0 * * * *"}, "input.cron"),  # six fields (seconds) are not cron here
        ({"cron": "61 * * * *"}, "input.cron"),
        ({"cron": "@hourly"}, "input.cron"),
        ({"cron": "x" * 500}, "input.cron"),
        ({"timezone": "Mars/Olympus"}, "input.timezone"),
        ({"timezone": "../../etc/passwd"}, "input.timezone"),
        ({"inputs": {"score": "high"}}, "input.inputs.score"),
        ({"inputs": {}}, "input.inputs"),
        ({"inputs": [1, 2]}, "input.inputs"),
    ]
    for override, field in cases:
        fields = await _fields(gql, team.token, CREATE, {"input": {**base, **override}})
        assert any(k.startswith(field) for k in fields), (override, fields)
    body = await gql.raw(
        CREATE,
        {"input": {**base, "flowId": "00000000-0000-4000-8000-000000000000"}},
        token=team.token,
    )
    assert error_code(body) == "NOT_FOUND"
    listed = (await gql.ok(LIST, {"flowId": flow["id"]}, token=team.token))["schedules"]
    assert listed["edges"] == []  # nothing was stored

    created = await create_schedule(gql, team.token, **base)
    fields = await _fields(
        gql,
        team.token,
        UPDATE,
        {"id": created["id"], "input": {**base, "cron": "0 25 * * *"}},
    )
    assert "input.cron" in fields
    got = (await gql.ok(GET, {"id": created["id"]}, token=team.token))["schedule"]
    assert got["cron"] == "* * * * *"


async def test_viewers_read_members_write_other_teams_see_nothing(
    gql: GQL, team: Team, other_team: Team
) -> None:
    viewer = await member_token(gql, team, "VIEWER")
    flow = await f.create_flow(gql, team.token, f.branching())
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="0 0 * * *", inputs={"score": 1}
    )
    assert (await gql.ok(GET, {"id": created["id"]}, token=viewer))["schedule"]["id"]
    body = await gql.raw(
        CREATE, {"input": {"flowId": flow["id"], "cron": "0 0 * * *"}}, token=viewer
    )
    assert error_code(body) == "FORBIDDEN"
    body = await gql.raw(DELETE, {"id": created["id"]}, token=viewer)
    assert error_code(body) == "FORBIDDEN"

    for query, variables in (
        (GET, {"id": created["id"]}),
        (DELETE, {"id": created["id"]}),
        (UPDATE, {"id": created["id"], "input": {"flowId": flow["id"], "cron": "0 0 * * *"}}),
        (CREATE, {"input": {"flowId": flow["id"], "cron": "0 0 * * *"}}),
    ):
        body = await gql.raw(query, variables, token=other_team.token)
        assert error_code(body) == "NOT_FOUND", (query, body)
    theirs = (await gql.ok(LIST, {}, token=other_team.token))["schedules"]
    assert theirs["edges"] == []


async def test_deleting_a_scheduled_flow_is_a_conflict_naming_the_schedules(
    gql: GQL, team: Team
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="15 3 * * *", inputs={"score": 1}
    )
    body = await gql.raw(DELETE_FLOW, {"id": flow["id"]}, token=team.token)
    assert error_code(body) == "CONFLICT"
    assert created["id"] in body["errors"][0]["message"]
    assert any(created["id"] in r for r in body["errors"][0]["extensions"]["referrers"])
    await gql.ok(DELETE, {"id": created["id"]}, token=team.token)
    assert (await gql.ok(DELETE_FLOW, {"id": flow["id"]}, token=team.token))["deleteFlow"]


async def test_a_due_schedule_fires_once_even_after_missing_many_times(
    gql: GQL, team: Team, container: Any
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="* * * * *", inputs={"score": 9}
    )
    # Down for ten minutes: ten due times were missed; one run follows.
    await make_due(container, created["id"], timedelta(minutes=10))
    fired = await wait_fired(gql, team.token, created["id"], None)
    run = fired["lastExecution"]
    assert run["inputs"] == {"score": 9}
    next_at = at(fired["nextRunAt"])
    assert next_at > datetime.now(UTC) - timedelta(seconds=1)
    assert next_at.second == 0 and next_at - datetime.now(UTC) <= timedelta(seconds=61)
    done = await f.wait_status(gql, team.token, run["id"])
    assert done["status"] == "COMPLETED" and done["outputs"] == {"high": "high: 9"}
    await asyncio.sleep(1.0)  # several scheduler ticks
    listed = (await gql.ok("Executions", {"flowId": flow["id"]}, token=team.token))["executions"]
    # Only the next minute's own run may follow (when the test straddles a minute).
    missed = [e["node"]["id"] for e in listed["edges"] if at(e["node"]["createdAt"]) < next_at]
    assert missed == [run["id"]], listed


async def test_a_disabled_schedule_leaves_the_due_index(
    gql: GQL, team: Team, container: Any
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="0 0 1 1 *", inputs={"score": 1}
    )
    pool = await container.db.raw()
    query = "SELECT count(*) FROM public.schedule_due WHERE schedule_id = $1::uuid"
    assert await pool.fetchval(query, created["id"]) == 1
    await gql.ok(
        UPDATE,
        {
            "id": created["id"],
            "input": {"flowId": flow["id"], "cron": "0 0 1 1 *", "enabled": False},
        },
        token=team.token,
    )
    assert await pool.fetchval(query, created["id"]) == 0


async def test_a_run_that_cannot_start_is_skipped_and_the_schedule_moves_on(
    gql: GQL, team: Team, container: Any
) -> None:
    data = f.branching()
    flow = await f.create_flow(gql, team.token, data)
    created = await create_schedule(
        gql, team.token, flowId=flow["id"], cron="* * * * *", inputs={"score": 9}
    )
    # The flow now wants a string: the stored inputs no longer match.
    changed = {**data, "nodes": [f.input_node(score="string"), *data["nodes"][1:]]}
    await gql.ok("UpdateFlow", {"id": flow["id"], "input": changed}, token=team.token)
    await make_due(container, created["id"], timedelta(minutes=3))
    got = await wait_moved_on(gql, team.token, created["id"])
    assert got["lastExecution"] is None
    listed = (await gql.ok("Executions", {"flowId": flow["id"]}, token=team.token))["executions"]
    assert listed["edges"] == []
