"""The audit log through the API: what is recorded, who may read it, and that MongoDB
being down never fails the request being audited."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.conftest import PASSWORD, Team, add_member, register
from tests.support import builders
from tests.support.client import GQL, error_code, op

KEY = "sk-audit-secret-0123456789"
TINY_FLOW = {
    "nodes": [{"id": "in", "kind": "INPUT"}, {"id": "out", "kind": "OUTPUT"}],
    "edges": [{"source": "in", "target": "out"}],
}


async def audit_log(
    gql: GQL, container: Any, token: str, action: str | None = None, **more: Any
) -> list[dict[str, Any]]:
    """Every entry the caller's admin sees (after the buffer is written), newest first."""
    assert await container.audit_log.flush(10)
    entries: list[dict[str, Any]] = []
    after = None
    while True:
        data = await gql.ok(
            "AuditLog", {"first": 100, "after": after, "action": action, **more}, token=token
        )
        page = data["auditLog"]
        entries += [e["node"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return entries
        after = page["pageInfo"]["endCursor"]


def by_action(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        out.setdefault(e["action"], []).append(e)
    return out


async def login(gql: GQL, email: str, password: str, slug: str | None = None) -> dict[str, Any]:
    variables = {"input": {"email": email, "password": password, "tenantSlug": slug}}
    return await gql.op("Login", variables)


async def test_every_audited_action_is_recorded(gql: GQL, team: Team, container: Any) -> None:
    admin = team.token
    # Sign-ins: a success, failures with and without the team's slug, and a token reuse.
    session = (await gql.ok("Login", {"input": {"email": team.email, "password": PASSWORD}}))[
        "login"
    ]
    assert error_code(await login(gql, team.email, "wrong password!!", team.slug))
    assert error_code(await login(gql, team.email, "wrong password!!"))
    await gql.ok("RefreshToken", {"refreshToken": session["refreshToken"]})
    reused = await gql.op("RefreshToken", {"refreshToken": session["refreshToken"]})
    assert error_code(reused) == "UNAUTHENTICATED"

    # Users and API keys.
    member = await add_member(gql, team, "MEMBER")
    await gql.ok("UpdateUserRole", {"id": member.id, "role": "VIEWER"}, token=admin)
    await gql.ok("DeactivateUser", {"id": member.id}, token=admin)
    key = (await gql.ok("CreateApiKey", {"name": "ci-bot", "role": "ADMIN"}, token=admin))[
        "createApiKey"
    ]

    # Providers (with a key that must never reach the log), tools, a flow.
    provider = await builders.provider(gql, admin, apiKey=KEY)
    await gql.ok(
        "UpdateLlmProvider",
        {
            "id": provider["id"],
            "input": {"name": provider["name"], "provider": "openai", "model": "gpt-4o"},
        },
        token=admin,
    )
    await gql.ok("DeleteLlmProvider", {"id": provider["id"]}, token=admin)
    tool = await builders.tool(gql, admin)
    tool_input = {
        "name": tool["name"] + "-2",
        "description": "echo, renamed",
        "kind": "CUSTOM_PYTHON",
        "config": {"code": builders.PY_CODE},
    }
    await gql.ok("UpdateTool", {"id": tool["id"], "input": tool_input}, token=admin)
    # Deleted with the API key: the key's name is the actor.
    await gql.ok("DeleteTool", {"id": tool["id"]}, api_key=key["secret"])
    flow = (
        await gql.ok(
            "CreateFlow", {"input": {"name": f"f-{uuid.uuid4().hex[:6]}", **TINY_FLOW}}, token=admin
        )
    )["createFlow"]
    await gql.ok("DeleteFlow", {"id": flow["id"]}, token=admin)
    await gql.ok("RevokeApiKey", {"id": key["id"]}, token=admin)

    entries = await audit_log(gql, container, admin)
    seen = by_action(entries)
    expected = {
        "auth.login": team.email,
        "auth.login_failed": team.email,
        "auth.refresh_token_reused": team.email,
        "user.created": team.email,
        "user.role_changed": team.email,
        "user.deactivated": team.email,
        "apikey.created": team.email,
        "apikey.revoked": team.email,
        "provider.created": team.email,
        "provider.updated": team.email,
        "provider.deleted": team.email,
        "tool.created": team.email,
        "tool.updated": team.email,
        "tool.deleted": "ci-bot",
        "flow.deleted": team.email,
    }
    for action, actor in expected.items():
        assert action in seen, f"no {action} entry in {sorted(seen)}"
        assert any(e["actor"] == actor for e in seen[action]), (action, seen[action])
    # The member's own login (add_member logs in) is there too.
    assert any(e["actor"] == member.email for e in seen["auth.login"])

    assert len(seen["auth.login_failed"]) == 2
    assert {e["data"]["reason"] for e in seen["auth.login_failed"]} == {"wrong password"}
    assert seen["user.role_changed"][0]["target"] == member.id
    assert seen["user.role_changed"][0]["data"] == {
        "email": member.email,
        "from": "MEMBER",
        "to": "VIEWER",
    }
    assert seen["apikey.created"][0]["data"] == {"name": "ci-bot", "role": "ADMIN"}
    assert seen["provider.created"][0]["target"] == provider["id"]
    assert seen["provider.updated"][0]["data"]["keyChanged"] is False
    assert seen["provider.created"][0]["data"]["keySet"] is True
    assert seen["flow.deleted"][0]["target"] == flow["id"]
    assert KEY not in json.dumps(entries)  # never the provider's key

    for e in entries:  # every request-caused entry says where it came from
        assert e["ip"] == "127.0.0.1" and e["requestId"], e
    stamps = [e["at"] for e in entries]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert [e["action"] for e in entries[:2]] == ["apikey.revoked", "flow.deleted"]


async def test_request_id_is_the_callers(gql: GQL, team: Team, container: Any) -> None:
    rid = f"audit-{uuid.uuid4().hex}"
    resp = await gql.http.post(
        "/graphql",
        json={
            "query": op("CreateApiKey"),
            "variables": {"name": "traced", "role": "VIEWER"},
        },
        headers={"Authorization": f"Bearer {team.token}", "X-Request-Id": rid},
    )
    assert resp.status_code == 200 and not resp.json().get("errors")
    [entry] = await audit_log(gql, container, team.token, "apikey.created")
    assert entry["requestId"] == rid and entry["data"]["name"] == "traced"


async def test_pages_and_action_filter(gql: GQL, team: Team, container: Any) -> None:
    tools = [await builders.tool(gql, team.token) for _ in range(5)]
    assert await container.audit_log.flush(10)
    seen: list[str] = []
    after = None
    for _ in range(3):
        data = await gql.ok(
            "AuditLog", {"first": 2, "after": after, "action": "tool.created"}, token=team.token
        )
        page = data["auditLog"]
        assert all(e["node"]["action"] == "tool.created" for e in page["edges"])
        seen += [e["node"]["target"] for e in page["edges"]]
        after = page["pageInfo"]["endCursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
    assert seen == [t["id"] for t in reversed(tools)]  # newest first, none twice

    bad = await gql.op("AuditLog", {"after": "not-a-cursor"}, token=team.token)
    assert error_code(bad) == "BAD_USER_INPUT"
    none = await gql.op("AuditLog", {"first": 0}, token=team.token)
    assert error_code(none) == "BAD_USER_INPUT"
    too_many = await gql.op("AuditLog", {"first": 100_000}, token=team.token)
    assert error_code(too_many) == "LIMIT_EXCEEDED"  # the page-size cost rule


async def test_admins_only_and_tenants_isolated(
    gql: GQL, team: Team, other_team: Team, container: Any
) -> None:
    await builders.tool(gql, team.token)
    await builders.provider(gql, other_team.token)
    mine = await audit_log(gql, container, team.token)
    theirs = await audit_log(gql, container, other_team.token)
    assert [e["action"] for e in mine] == ["tool.created", "tenant.registered"]
    assert [e["action"] for e in theirs] == ["provider.created", "tenant.registered"]
    assert theirs[0]["actor"] == other_team.email

    # Another team's cursor finds nothing of this team past it.
    cursor_of_mine = (await gql.ok("AuditLog", {"first": 1}, token=team.token))["auditLog"][
        "edges"
    ][0]["cursor"]
    later = await gql.ok("AuditLog", {"after": cursor_of_mine}, token=other_team.token)
    ids = {e["node"]["id"] for e in later["auditLog"]["edges"]}
    assert not ids & {e["id"] for e in mine}

    for role in ("MEMBER", "VIEWER"):
        member = await add_member(gql, team, role)
        denied = await gql.op("AuditLog", {}, token=member.token)
        assert error_code(denied) == "FORBIDDEN" and denied["data"] is None
    key = (await gql.ok("CreateApiKey", {"name": "m", "role": "MEMBER"}, token=team.token))[
        "createApiKey"
    ]
    assert error_code(await gql.op("AuditLog", {}, api_key=key["secret"])) == "FORBIDDEN"
    assert error_code(await gql.op("AuditLog", {})) == "UNAUTHENTICATED"


async def test_mongodb_outage_never_fails_a_login(
    gql: GQL, container: Any, mongo_server: Any
) -> None:
    team = await register(gql)
    mongo_server.stop()
    try:
        data = await gql.ok("Login", {"input": {"email": team.email, "password": PASSWORD}})
        assert data["login"]["accessToken"]
        assert error_code(await login(gql, team.email, "wrong password!!")) == "UNAUTHENTICATED"
        started = time.monotonic()
        await builders.tool(gql, team.token)
        # Waiting for MongoDB would take its whole selection timeout (1 s here).
        assert time.monotonic() - started < 0.9
        assert not await container.audit_log.flush(0.5)  # still buffered
        down = await gql.op("AuditLog", {}, token=team.token)
        assert error_code(down) == "SERVICE_UNAVAILABLE"
    finally:
        mongo_server.start()
    seen = by_action(await audit_log(gql, container, team.token))
    assert {"auth.login", "auth.login_failed", "tool.created"} <= set(seen)
    assert len(seen["auth.login"]) == 1  # written once, after the retries
