"""APPROVAL nodes through the API: waiting runs, resolveApproval, timeouts (real Postgres/Redis)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from persistence.repositories.sql import PoolStatements
from tests.conftest import Team, member_token
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.statements import count_statements

SCHEMA = {
    "type": "object",
    "properties": {"budget": {"type": "integer", "minimum": 0}},
    "required": ["budget"],
}


def approval_flow(**config: Any) -> dict[str, Any]:
    """in -> ask (APPROVAL) -true-> yes / -false-> no, plus in -> note (OUTPUT)."""
    ask = {"prompt": "Publish {{ inputs.title }}?", **config}
    return {
        "name": f"approve-{uuid.uuid4().hex[:8]}",
        "nodes": [
            f.input_node(title="string"),
            {"id": "ask", "kind": "APPROVAL", "config": ask},
            {"id": "yes", "kind": "OUTPUT", "config": {"value": "published {{ inputs.title }}"}},
            {"id": "no", "kind": "OUTPUT", "config": {"value": "held"}},
            {"id": "note", "kind": "OUTPUT", "config": {"value": "noted"}},
        ],
        "edges": [
            {"source": "in", "target": "ask"},
            {"source": "ask", "target": "yes", "branch": "true"},
            {"source": "ask", "target": "no", "branch": "false"},
            {"source": "in", "target": "note"},
        ],
    }


async def waiting_run(gql: GQL, token: str, **config: Any) -> dict[str, Any]:
    flow = await f.create_flow(gql, token, approval_flow(**config))
    run = await f.execute(gql, token, flow["id"], {"title": "Q3 report"})
    return await f.wait_status(gql, token, run["id"], {"WAITING", *f.TERMINAL})


async def resolve(gql: GQL, token: str, execution_id: str, **kw: Any) -> dict[str, Any]:
    variables = {"executionId": execution_id, "nodeId": "ask", "approved": True, **kw}
    return await gql.op("ResolveApproval", variables, token=token)


async def lease_rows(container: Any, team: Team, execution_id: str) -> tuple[Any, Any]:
    """(the execution's status and lease, its row among the active executions)."""
    p = await container.identity.authenticate_bearer(team.token)
    sql = PoolStatements(container.db)
    row = await sql.fetchrow(
        f"SELECT status, lease_owner, lease_expires_at FROM {p.tenant_schema}.executions "
        "WHERE id = $1::uuid",
        execution_id,
    )
    active = await sql.fetchrow(
        "SELECT status, lease_expires_at FROM public.active_executions WHERE execution_id = $1::uuid",
        execution_id,
    )
    return row, active


WAITING_LIST = """
query($flowId: ID, $first: Int) {
  executions(flowId: $flowId, first: $first) {
    edges { node { id status pendingApprovals { nodeId prompt } } }
  }
}
"""


def types(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["nodeId"]) for e in events]


async def test_a_run_waits_holding_nothing_then_takes_the_approved_branch(
    gql: GQL, team: Team, container: Any
) -> None:
    member = await member_token(gql, team, "MEMBER")
    waiting = await waiting_run(gql, member, inputSchema=SCHEMA)
    assert waiting["status"] == "WAITING", waiting
    ident = waiting["id"]
    runs = {r["nodeId"]: r["status"] for r in waiting["nodeRuns"]}
    assert runs["ask"] == "WAITING" and runs["note"] == "COMPLETED"  # the other branch ran

    pending = (await gql.ok("PendingApprovals", {"id": ident}, token=member))["execution"]
    [approval] = pending["pendingApprovals"]
    assert approval["nodeId"] == "ask" and approval["prompt"] == "Publish Q3 report?"
    assert approval["inputSchema"] == SCHEMA
    assert approval["requestedAt"] and approval["expiresAt"] is None

    # No worker slot and no lease while waiting; it does not count as active.
    row, active = await lease_rows(container, team, ident)
    assert row["status"] == "WAITING" and row["lease_owner"] is None
    assert row["lease_expires_at"] is None
    assert active["status"] == "WAITING" and active["lease_expires_at"] is None
    assert ident not in container.runtime.runner.active
    # Sweeps (every 0.5 s here) neither redispatch nor requeue it.
    before = (await gql.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=member))[
        "execution"
    ]["events"]
    await asyncio.sleep(1.2)
    after = (await gql.ok("ExecutionEventLog", {"id": ident, "first": 1000}, token=member))[
        "execution"
    ]
    assert after["status"] == "WAITING" and after["events"] == before

    body = await resolve(gql, member, ident, input={"budget": 5}, comment="go ahead")
    assert not body.get("errors"), body
    resolved = body["data"]["resolveApproval"]
    assert resolved["status"] in {"PENDING", "RUNNING", "COMPLETED"}
    assert resolved["pendingApprovals"] == []

    done = await f.wait_status(gql, member, ident)
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"yes": "published Q3 report", "note": "noted"}
    assert done["attempts"] == 1  # the resume is not a new attempt
    runs = {r["nodeId"]: r for r in done["nodeRuns"]}
    assert runs["no"]["status"] == "SKIPPED"
    output = runs["ask"]["output"]
    assert output["approved"] is True and output["input"] == {"budget": 5}
    assert output["comment"] == "go ahead" and output["by"].endswith("@example.com")
    assert output["at"]

    events = await f.collect_events(gql, member, ident)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    seen = types(events)
    assert seen.count(("EXECUTION_STARTED", None)) == 1
    assert seen.count(("NODE_STARTED", "ask")) == 1
    waited = seen.index(("EXECUTION_WAITING", None))
    assert seen.index(("NODE_WAITING", "ask")) < waited
    assert seen[waited + 1] == ("EXECUTION_RESUMED", None)
    assert seen[waited + 2] == ("NODE_COMPLETED", "ask")
    assert seen[-1] == ("EXECUTION_COMPLETED", None)
    resumed = events[waited + 1]["data"]
    assert resumed["nodeIds"] == ["ask"] and resumed["reason"] == "answered"
    assert events[waited]["data"] == {"waitingNodes": ["ask"]}
    node_waiting = events[seen.index(("NODE_WAITING", "ask"))]["data"]
    assert node_waiting["prompt"] == "Publish Q3 report?" and node_waiting["inputSchema"] == SCHEMA

    row, active = await lease_rows(container, team, ident)
    assert row["status"] == "COMPLETED" and active is None


async def test_a_rejection_takes_the_false_branch(gql: GQL, team: Team) -> None:
    waiting = await waiting_run(gql, team.token)
    body = await resolve(gql, team.token, waiting["id"], approved=False, comment="not yet")
    assert not body.get("errors"), body
    done = await f.wait_status(gql, team.token, waiting["id"])
    assert done["status"] == "COMPLETED" and done["outputs"] == {"no": "held", "note": "noted"}
    runs = {r["nodeId"]: r for r in done["nodeRuns"]}
    assert runs["yes"]["status"] == "SKIPPED"
    assert runs["ask"]["output"]["approved"] is False


async def test_the_answer_input_is_validated_against_the_input_schema(gql: GQL, team: Team) -> None:
    waiting = await waiting_run(gql, team.token, inputSchema=SCHEMA)
    ident = waiting["id"]
    for bad, field in (({"budget": -1}, "input.budget"), ({"budget": "x"}, "input.budget")):
        body = await resolve(gql, team.token, ident, input=bad)
        assert error_code(body) == "BAD_USER_INPUT", body
        assert field in body["errors"][0]["extensions"]["fields"]
    body = await resolve(gql, team.token, ident)  # no input at all
    assert error_code(body) == "BAD_USER_INPUT"
    body = await resolve(gql, team.token, ident, input={"budget": 1}, comment="x" * 20_000)
    assert error_code(body) == "BAD_USER_INPUT"
    body = await resolve(gql, team.token, ident, input={"budget": 1, "blob": "x" * 300_000})
    assert error_code(body) == "LIMIT_EXCEEDED"
    still = await f.wait_status(gql, team.token, ident, {"WAITING"})  # nothing was written
    assert len((await gql.ok("PendingApprovals", {"id": ident}, token=team.token))[
        "execution"]["pendingApprovals"]) == 1  # fmt: skip
    assert still["status"] == "WAITING"
    body = await resolve(gql, team.token, ident, input={"budget": 1})
    assert not body.get("errors"), body
    assert (await f.wait_status(gql, team.token, ident))["status"] == "COMPLETED"


async def test_a_second_answer_and_a_concurrent_one_are_conflicts(gql: GQL, team: Team) -> None:
    waiting = await waiting_run(gql, team.token)
    ident = waiting["id"]
    answers = await asyncio.gather(
        *(resolve(gql, team.token, ident, approved=i % 2 == 0, comment=str(i)) for i in range(4))
    )
    codes = sorted(error_code(a) or "OK" for a in answers)
    assert codes == ["CONFLICT", "CONFLICT", "CONFLICT", "OK"], answers
    later = await resolve(gql, team.token, ident, approved=True)
    assert error_code(later) == "CONFLICT"
    done = await f.wait_status(gql, team.token, ident)
    assert done["status"] == "COMPLETED"
    events = await f.collect_events(gql, team.token, ident)
    assert types(events).count(("EXECUTION_RESUMED", None)) == 1
    assert types(events).count(("NODE_COMPLETED", "ask")) == 1
    winner = next(a for a in answers if not a.get("errors"))
    won = winner["data"]["resolveApproval"]
    ask = {r["nodeId"]: r for r in done["nodeRuns"]}["ask"]["output"]
    approved = done["outputs"].get("yes") is not None
    assert ask["approved"] is approved and ask["comment"] is not None
    assert won["id"] == ident
    # After the run ended: still CONFLICT, never a second resume.
    assert error_code(await resolve(gql, team.token, ident)) == "CONFLICT"


async def test_cancel_while_waiting_ends_the_run(gql: GQL, team: Team, container: Any) -> None:
    waiting = await waiting_run(gql, team.token)
    ident = waiting["id"]
    cancelled = (await gql.ok("CancelExecution", {"id": ident}, token=team.token))[
        "cancelExecution"
    ]
    assert cancelled["status"] == "CANCELLED"
    runs = {r["nodeId"]: r["status"] for r in cancelled["nodeRuns"]}
    assert runs["ask"] == "CANCELLED"
    events = await f.collect_events(gql, team.token, ident)
    assert events[-1]["type"] == "EXECUTION_CANCELLED"
    assert events[-1]["data"] == {"cancelledNodes": ["ask"]}
    assert error_code(await resolve(gql, team.token, ident)) == "CONFLICT"
    pending = (await gql.ok("PendingApprovals", {"id": ident}, token=team.token))["execution"]
    assert pending["pendingApprovals"] == []
    _, active = await lease_rows(container, team, ident)
    assert active is None


async def test_a_timeout_rejects_as_the_system(gql: GQL, team: Team) -> None:
    waiting = await waiting_run(gql, team.token, timeoutSeconds=0.5)
    assert waiting["status"] == "WAITING"
    [approval] = (await gql.ok("PendingApprovals", {"id": waiting["id"]}, token=team.token))[
        "execution"
    ]["pendingApprovals"]
    assert approval["expiresAt"] > approval["requestedAt"]
    done = await f.wait_status(gql, team.token, waiting["id"])
    assert done["status"] == "COMPLETED" and done["outputs"] == {"no": "held", "note": "noted"}
    output = {r["nodeId"]: r for r in done["nodeRuns"]}["ask"]["output"]
    assert output["approved"] is False and output["by"] == "system"
    events = await f.collect_events(gql, team.token, waiting["id"])
    resumed = [e for e in events if e["type"] == "EXECUTION_RESUMED"]
    assert [e["data"]["reason"] for e in resumed] == ["timeout"]
    assert error_code(await resolve(gql, team.token, waiting["id"])) == "CONFLICT"


async def test_a_timeout_fails_the_run_when_asked_to(gql: GQL, team: Team) -> None:
    waiting = await waiting_run(gql, team.token, timeoutSeconds=0.5, onTimeout="fail")
    done = await f.wait_status(gql, team.token, waiting["id"])
    assert done["status"] == "FAILED", done
    assert "ask" in done["error"] and "timed out" in done["error"]
    runs = {r["nodeId"]: r["status"] for r in done["nodeRuns"]}
    assert runs["ask"] == "FAILED" and runs["yes"] == "CANCELLED"


async def test_other_tenants_and_viewers_cannot_answer(
    gql: GQL, team: Team, other_team: Team
) -> None:
    waiting = await waiting_run(gql, team.token)
    ident = waiting["id"]
    assert error_code(await resolve(gql, other_team.token, ident)) == "NOT_FOUND"
    body = await gql.op("PendingApprovals", {"id": ident}, token=other_team.token)
    assert body["data"]["execution"] is None or error_code(body) == "NOT_FOUND"
    viewer = await member_token(gql, team, "VIEWER")
    assert error_code(await resolve(gql, viewer, ident)) == "FORBIDDEN"
    seen = (await gql.ok("PendingApprovals", {"id": ident}, token=viewer))["execution"]
    assert [a["nodeId"] for a in seen["pendingApprovals"]] == ["ask"]  # viewers read
    assert error_code(await resolve(gql, team.token, ident, nodeId="yes")) == "NOT_FOUND"
    assert error_code(await resolve(gql, team.token, ident, nodeId="x" * 500)) == "BAD_USER_INPUT"
    missing = str(uuid.uuid4())
    assert error_code(await resolve(gql, team.token, missing)) == "NOT_FOUND"
    assert error_code(await resolve(gql, team.token, "not-an-id")) == "NOT_FOUND"
    assert (await f.wait_status(gql, team.token, ident, {"WAITING"}))["status"] == "WAITING"


async def test_approval_config_is_checked_when_the_flow_is_written(gql: GQL, team: Team) -> None:
    flow = approval_flow(
        prompt="{{ secrets.key }}",
        inputSchema={"$ref": "https://evil.example/schema.json"},
        timeoutSeconds=0,
        onTimeout="ignore",
    )
    flow["edges"][1]["branch"] = "maybe"
    body = await gql.op("CreateFlow", {"input": flow}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT", body
    fields = body["errors"][0]["extensions"]["fields"]
    for key in ("prompt", "inputSchema", "timeoutSeconds", "onTimeout"):
        assert f"input.nodes[1].config.{key}" in fields, fields
    assert "input.edges[1].branch" in fields


async def test_an_answer_is_in_the_audit_log(gql: GQL, team: Team, container: Any) -> None:
    from tests.api.test_audit import audit_log

    waiting = await waiting_run(gql, team.token)
    body = await resolve(gql, team.token, waiting["id"], approved=False, comment="not yet")
    assert not body.get("errors"), body
    entries = await audit_log(gql, container, team.token, action="approval.answered")
    assert [(e["target"], e["data"]) for e in entries] == [
        (f"{waiting['id']}/ask", {"approved": False})
    ], entries
    assert entries[0]["actor"] == team.email


async def test_listing_runs_with_their_pending_approvals_is_bounded(
    gql: GQL, team: Team, container: Any
) -> None:
    flow = await f.create_flow(gql, team.token, approval_flow())
    runs = [await f.execute(gql, team.token, flow["id"], {"title": "Q3"}) for _ in range(5)]
    await asyncio.gather(*(f.wait_status(gql, team.token, r["id"], {"WAITING"}) for r in runs))

    async def listing(first: int) -> list[str]:
        with count_statements(container) as seen:
            data = await gql.ok(
                WAITING_LIST, {"flowId": flow["id"], "first": first}, token=team.token
            )
        edges = data["executions"]["edges"]
        assert len(edges) == first
        for edge in edges:
            assert edge["node"]["status"] == "WAITING"
            assert edge["node"]["pendingApprovals"] == [{"nodeId": "ask", "prompt": "Publish Q3?"}]
        # Authentication reads public tables unless the principal cache holds the caller.
        return [s for s in seen if "FROM public." not in s]

    one, five = await listing(1), await listing(5)
    # The executions, then every listed run's approvals in one statement (not one each).
    assert len(five) == len(one), f"1 run: {one}; 5 runs: {five}"
    assert len([s for s in five if "approvals" in s]) == 1, five
