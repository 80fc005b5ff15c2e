"""Attacks on the audit log: operator-shaped filters and cursors, two tenants' entries
interleaved at the same instants (nx-27017 returned other tenants' documents for a
top-level `$or` beside the tenant filter), and entries MongoDB cannot encode."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from domain import audit
from tests.conftest import Team
from tests.support.client import GQL, error_code


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def _all(gql: GQL, token: str, first: int, action: str | None = None) -> list[str]:
    ids: list[str] = []
    after = None
    for _ in range(200):
        page = (
            await gql.ok(
                "AuditLog", {"first": first, "after": after, "action": action}, token=token
            )
        )["auditLog"]
        ids += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        after = page["pageInfo"]["endCursor"]
    raise AssertionError("paging never ended")


async def test_interleaved_tenants_page_apart_at_every_cursor(
    gql: GQL, team: Team, other_team: Team, container: Any
) -> None:
    service = container.audit
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    instants = [base + timedelta(seconds=s) for s in range(4)]
    clock = iter([at for at in instants for _ in range(6)])
    original = service.clock
    service.clock = lambda: next(clock)
    try:
        for at in instants:
            for i in range(3):  # the two tenants alternate within each instant
                for t in (team, other_team):
                    service.record(t.tenant_id, "probe.interleaved", actor="x", target=f"{at}-{i}")
    finally:
        service.clock = original
    assert await container.audit_log.flush(10)
    for first in (1, 2, 5):
        mine = await _all(gql, team.token, first, "probe.interleaved")
        theirs = await _all(gql, other_team.token, first, "probe.interleaved")
        assert len(mine) == len(set(mine)) == 12, first
        assert len(theirs) == 12 and not set(mine) & set(theirs), first


async def test_operator_shaped_filters_and_forged_cursors(
    gql: GQL, team: Team, container: Any
) -> None:
    container.audit.record(team.tenant_id, "probe.filter", actor="x")
    assert await container.audit_log.flush(10)
    for action in (".*", "^probe", '{"$regex": ".*"}', '{"$ne": null}', "$where", "probe.*"):
        body = await gql.ok("AuditLog", {"action": action}, token=team.token)
        assert body["auditLog"]["edges"] == [], action
    for forged in (
        _cursor([{"$gt": ""}, {"$gt": ""}]),
        _cursor([5, "x"]),
        _cursor({"$where": "1"}),
        _cursor(["not a date", "x"]),
        "A" * 100_000,
    ):
        body = await gql.op("AuditLog", {"after": forged}, token=team.token)
        assert error_code(body) == "BAD_USER_INPUT", (forged[:40], body)
    # An id shaped like an operator is just a string that sorts somewhere.
    body = await gql.ok(
        "AuditLog",
        {"after": _cursor(["2999-01-01T00:00:00+00:00", {"$gt": ""}])},
        token=team.token,
    )
    assert all(e["node"]["action"] for e in body["auditLog"]["edges"])


async def test_an_entry_mongodb_cannot_encode_does_not_block_the_log(
    gql: GQL, team: Team, container: Any
) -> None:
    # Before: a number past 64 bits failed the whole batch before it reached MongoDB,
    # was retried for ever, and every later entry of the process waited behind it.
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["d"] = {}
        node = node["d"]
    container.audit.record(
        team.tenant_id, "probe.poison", actor="x", data={"n": 2**70, "deep": deep, "m": -(2**64)}
    )
    container.audit.record(team.tenant_id, "probe.after", actor="x")
    assert await container.audit_log.flush(5), "the log is stuck behind one entry"
    entries = (await gql.ok("AuditLog", {"first": 5}, token=team.token))["auditLog"]["edges"]
    by_action = {e["node"]["action"]: e["node"] for e in entries}
    assert "probe.after" in by_action
    data = by_action["probe.poison"]["data"]
    assert data["n"] == str(2**70) and data["m"] == str(-(2**64))
    assert isinstance(data["deep"], str) and len(data["deep"]) <= audit.MAX_TEXT_LENGTH


async def test_the_writer_drops_an_unencodable_entry_rather_than_retry_it(
    gql: GQL, team: Team, container: Any
) -> None:
    """Whatever reaches the writer past the domain's checks: one bad entry is dropped,
    the rest of its batch is written."""
    at = datetime.now(UTC).replace(microsecond=0)
    bad = audit.AuditEntry(
        id=audit.entry_id(at),
        tenant_id=team.tenant_id,
        at=at,
        action="probe.bad",
        actor="x",
        target=None,
        ip=None,
        request_id=None,
        data={"n": 2**70},
    )
    container.audit_log.put(bad)
    container.audit.record(team.tenant_id, "probe.good", actor="x")
    assert await container.audit_log.flush(5), "the log is stuck behind one entry"
    entries = (await gql.ok("AuditLog", {"first": 5}, token=team.token))["auditLog"]["edges"]
    assert [e["node"]["action"] for e in entries] == ["probe.good", "tenant.registered"]
