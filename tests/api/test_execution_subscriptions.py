"""executionEvents / executionUpdates over graphql-transport-ws (real server, Postgres, Redis)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from tests.conftest import Team
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL, op
from tests.support.ws import init, recv, start, subscribe


async def _log(gql: GQL, token: str, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        data = await gql.ok(
            "ExecutionEventLog",
            {"id": execution_id, "afterSequence": len(events), "first": 1000},
            token=token,
        )
        page = data["execution"]["events"]
        events += page
        if len(page) < 1000:
            return events


def _busy_flow(tool_id: str, logs: int = 40, seconds: float = 0.15) -> dict[str, Any]:
    """A chain of TOOL nodes, each emitting a burst of LOG events, then sleeping."""
    data = f.slow_chain(tool_id, [seconds] * 4)
    for node in data["nodes"]:
        if node["kind"] == "TOOL":
            node["config"]["testLogEvents"] = logs
    return data


async def test_late_subscriber_from_zero_gets_every_event_once_in_order(
    gql: GQL, team: Team
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, _busy_flow(tool["id"]))
    run = await f.execute(gql, team.token, flow["id"])
    # The run is well under way (events stored and published) before we subscribe.
    await f.wait_node(gql, team.token, run["id"], "s1", "RUNNING")
    events = await f.collect_events(gql, team.token, run["id"], after=0)
    sequences = [e["sequence"] for e in events]
    assert sequences == list(range(1, len(events) + 1)), sequences
    assert events[0]["type"] == "EXECUTION_STARTED"
    assert events[-1]["type"] == "EXECUTION_COMPLETED"
    assert len(events) > 4 * 40
    assert events == await _log(gql, team.token, run["id"])


async def test_many_subscribers_joining_during_bursts_each_get_an_exact_stream(
    gql: GQL, team: Team, container: Any
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, _busy_flow(tool["id"], logs=60, seconds=0.2))
    run = await f.execute(gql, team.token, flow["id"])
    mux = container.extras["multiplexer"]
    encoded_before = mux.encoded
    rng = random.Random(4)
    subscribers: list[tuple[int, list[dict[str, Any]]]] = []

    async def connection(index: int, count: int) -> None:
        await asyncio.sleep(rng.uniform(0, 0.8))  # join while events are being published
        streams: dict[str, list[dict[str, Any]]] = {}
        async with gql.connect_ws() as ws:
            await init(ws, {"authorization": f"Bearer {team.token}"})
            for k in range(count):
                after = rng.choice([0, 0, 5, 37, 120])
                sub_id = f"{index}-{k}"
                streams[sub_id] = []
                subscribers.append((after, streams[sub_id]))
                await subscribe(
                    ws,
                    sub_id,
                    op("ExecutionEvents"),
                    {"executionId": run["id"], "afterSequence": after},
                )
            open_ids = set(streams)
            while open_ids:
                msg = await recv(ws, 20)
                if msg["type"] == "complete":
                    open_ids.discard(msg["id"])
                    continue
                assert msg["type"] == "next" and not msg["payload"].get("errors"), msg
                streams[msg["id"]].append(msg["payload"]["data"]["executionEvents"])

    await asyncio.gather(*(connection(i, 5) for i in range(6)))
    log = await _log(gql, team.token, run["id"])
    assert log[-1]["type"] == "EXECUTION_COMPLETED"
    for after, got in subscribers:
        assert got == log[after:], (after, [e["sequence"] for e in got][:20])
    # Identical subscriptions shared one upstream: events were encoded about once per
    # group (one group per afterSequence-independent key), not once per subscriber.
    assert mux.encoded - encoded_before <= 2 * len(log), (mux.encoded - encoded_before, len(log))


async def test_subscribing_to_a_finished_run_replays_then_completes(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 1})
    await f.wait_status(gql, team.token, run["id"])
    log = await _log(gql, team.token, run["id"])
    assert await f.collect_events(gql, team.token, run["id"], after=len(log) - 2) == log[-2:]
    assert await f.collect_events(gql, team.token, run["id"], after=len(log)) == []
    assert await f.collect_events(gql, team.token, run["id"], after=10_000) == []


async def test_negative_after_sequence_is_bad_input(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 1})
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {team.token}"})
        await subscribe(
            ws, "1", op("ExecutionEvents"), {"executionId": run["id"], "afterSequence": -1}
        )
        msg = await recv(ws)
        errors = msg["payload"]["errors"] if msg["type"] == "next" else msg["payload"]
        assert errors[0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_other_tenants_execution_is_not_found_on_the_socket(
    gql: GQL, team: Team, other_team: Team
) -> None:
    flow = await f.create_flow(gql, other_team.token, f.branching())
    theirs = await f.execute(gql, other_team.token, flow["id"], {"score": 1})
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {team.token}"})
        await subscribe(ws, "1", op("ExecutionEvents"), {"executionId": theirs["id"]})
        msg = await recv(ws)
        assert msg["id"] == "1"
        errors = msg["payload"]["errors"] if msg["type"] == "next" else msg["payload"]
        assert errors[0]["extensions"]["code"] == "NOT_FOUND", msg
        assert msg["type"] in ("next", "error")
        if msg["type"] == "next":
            assert msg["payload"]["data"] is None
            assert (await recv(ws))["type"] == "complete"


async def test_execution_updates_push_every_status_change_of_the_tenant_only(
    gql: GQL, team: Team, other_team: Team
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    async with gql.connect_ws() as mine, gql.connect_ws() as theirs:
        await init(mine, {"authorization": f"Bearer {team.token}"})
        await init(theirs, {"authorization": f"Bearer {other_team.token}"})
        # Several identical subscriptions on one socket share one upstream.
        for sub_id in ("u1", "u2"):
            await subscribe(mine, sub_id, op("ExecutionUpdates"))
        await subscribe(theirs, "x", op("ExecutionUpdates"))
        await asyncio.sleep(0.3)  # the subscriptions are live once the group is ready
        run = await f.execute(gql, team.token, flow["id"], {"score": 7})
        seen: dict[str, list[str]] = {"u1": [], "u2": []}
        while any(not s or s[-1] != "COMPLETED" for s in seen.values()):
            msg = await recv(mine, 10)
            assert msg["type"] == "next", msg
            update = msg["payload"]["data"]["executionUpdates"]
            if update["id"] == run["id"]:
                seen[msg["id"]].append(update["status"])
        assert seen["u1"] == seen["u2"] == ["PENDING", "RUNNING", "COMPLETED"]
        with_timeout = asyncio.wait_for(theirs.recv(), 0.5)
        try:
            leaked = json.loads(await with_timeout)
        except TimeoutError:
            leaked = None
        assert leaked is None or leaked.get("type") in ("ping", "pong"), leaked


async def test_legacy_graphql_ws_protocol_streams_events_too(gql: GQL, team: Team) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    run = await f.execute(gql, team.token, flow["id"], {"score": 6})
    await f.wait_status(gql, team.token, run["id"])
    log = await _log(gql, team.token, run["id"])
    async with gql.connect_ws("graphql-ws") as ws:
        assert (await init(ws, {"authorization": f"Bearer {team.token}"}))["type"] == (
            "connection_ack"
        )
        await start(ws, "1", op("ExecutionEvents"), {"executionId": run["id"]})
        got = []
        while True:
            msg = await recv(ws)
            if msg["type"] == "complete":
                break
            got.append(msg["payload"]["data"]["executionEvents"])
        assert got == log


async def test_updates_resolve_nested_fields_fresh_for_every_change(gql: GQL, team: Team) -> None:
    query = "subscription { executionUpdates { id status inputs nodeRuns { nodeId status } } }"
    flow = await f.create_flow(gql, team.token, f.branching())
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {team.token}"})
        await subscribe(ws, "1", query)
        await asyncio.sleep(0.3)
        run = await f.execute(gql, team.token, flow["id"], {"score": 8})
        last: dict[str, Any] = {}
        while last.get("status") != "COMPLETED":
            msg = await recv(ws, 10)
            update = msg["payload"]["data"]["executionUpdates"]
            if update["id"] == run["id"]:
                last = update
        assert last["inputs"] == {"score": 8}
        assert {r["nodeId"]: r["status"] for r in last["nodeRuns"]} == {
            "in": "COMPLETED",
            "check": "COMPLETED",
            "high": "COMPLETED",
            "low": "SKIPPED",
        }
