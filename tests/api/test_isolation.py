"""Two tenants: each resolver sees only its own tenant; other ids are NOT_FOUND."""

from __future__ import annotations

from tests.conftest import PASSWORD, Team
from tests.support.client import GQL, error_code


async def test_identity_resolvers_are_isolated(gql: GQL, team: Team, other_team: Team) -> None:
    theirs = (
        await gql.ok(
            "CreateUser",
            {"input": {"email": "theirs@example.com", "password": PASSWORD, "role": "MEMBER"}},
            token=other_team.token,
        )
    )["createUser"]
    their_key = (
        await gql.ok("CreateApiKey", {"name": "theirs", "role": "ADMIN"}, token=other_team.token)
    )["createApiKey"]

    me = (await gql.ok("Me", token=team.token))["me"]
    assert me["tenant"]["id"] == team.tenant_id
    assert (await gql.ok("CurrentTenant", token=team.token))["tenant"]["id"] == team.tenant_id
    emails = [
        e["node"]["email"] for e in (await gql.ok("Users", token=team.token))["users"]["edges"]
    ]
    assert emails == [team.email]
    assert (await gql.ok("ApiKeys", token=team.token))["apiKeys"] == []

    for name, variables in [
        ("UpdateUserRole", {"id": theirs["id"], "role": "VIEWER"}),
        ("DeactivateUser", {"id": theirs["id"]}),
        ("UpdateUserRole", {"id": other_team.user_id, "role": "VIEWER"}),
        ("RevokeApiKey", {"id": their_key["id"]}),
        ("DeactivateUser", {"id": "not-a-uuid"}),
    ]:
        body = await gql.op(name, variables, token=team.token)
        assert error_code(body) == "NOT_FOUND", (name, body)

    # Nothing changed on the other side.
    their_users = {
        e["node"]["email"]: e["node"]
        for e in (await gql.ok("Users", token=other_team.token))["users"]["edges"]
    }
    assert their_users["theirs@example.com"]["active"] is True
    assert their_users["theirs@example.com"]["role"] == "MEMBER"
    assert (await gql.ok("Users", api_key=their_key["secret"]))["users"]["edges"]


async def test_cursor_from_another_tenant_reveals_nothing(
    gql: GQL, team: Team, other_team: Team
) -> None:
    theirs = (await gql.ok("Users", {"first": 1}, token=other_team.token))["users"]
    mine = (
        await gql.ok(
            "Users", {"first": 5, "after": theirs["pageInfo"]["endCursor"]}, token=team.token
        )
    )["users"]
    assert all(e["node"]["tenant"]["id"] == team.tenant_id for e in mine["edges"])


async def test_login_with_other_tenant_slug_fails(gql: GQL, team: Team, other_team: Team) -> None:
    body = await gql.op(
        "Login",
        {"input": {"email": team.email, "password": PASSWORD, "tenantSlug": other_team.slug}},
    )
    assert error_code(body) == "UNAUTHENTICATED"
