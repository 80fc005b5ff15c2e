"""register → login → me → refresh → logout, over real HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, Team, add_member, register
from tests.support.client import GQL, error_code


async def test_register_login_me_refresh_logout(gql: GQL) -> None:
    team = await register(gql, "Acme Research")
    assert team.slug.startswith("acme-research")

    me = await gql.ok("Me", token=team.token)
    assert me["me"]["email"] == team.email
    assert me["me"]["role"] == "ADMIN"
    assert me["me"]["tenant"]["name"] == "Acme Research"

    login = await gql.ok("Login", {"input": {"email": team.email.upper(), "password": PASSWORD}})
    session = login["login"]
    assert session["expiresIn"] == 900
    assert session["user"]["id"] == team.user_id

    refreshed = (await gql.ok("RefreshToken", {"refreshToken": session["refreshToken"]}))[
        "refreshToken"
    ]
    assert refreshed["refreshToken"] != session["refreshToken"]
    assert (await gql.ok("Me", token=refreshed["accessToken"]))["me"]["id"] == team.user_id

    assert (await gql.ok("Logout", {"refreshToken": refreshed["refreshToken"]}))["logout"] is True
    after = await gql.op("RefreshToken", {"refreshToken": refreshed["refreshToken"]})
    assert error_code(after) == "UNAUTHENTICATED"


async def test_reusing_a_rotated_refresh_token_revokes_the_family(gql: GQL, team: Team) -> None:
    first = (await gql.ok("RefreshToken", {"refreshToken": team.refresh}))["refreshToken"]
    # The original token comes back: treat as stolen, revoke everything descended from it.
    reuse = await gql.op("RefreshToken", {"refreshToken": team.refresh})
    assert error_code(reuse) == "UNAUTHENTICATED"
    assert "already used" in reuse["errors"][0]["message"]
    later = await gql.op("RefreshToken", {"refreshToken": first["refreshToken"]})
    assert error_code(later) == "UNAUTHENTICATED"


async def test_wrong_password_and_unknown_email_look_the_same(gql: GQL, team: Team) -> None:
    wrong = await gql.op("Login", {"input": {"email": team.email, "password": "nope-nope-nope"}})
    unknown = await gql.op("Login", {"input": {"email": "ghost@example.com", "password": PASSWORD}})
    assert error_code(wrong) == error_code(unknown) == "UNAUTHENTICATED"
    assert wrong["errors"][0]["message"] == unknown["errors"][0]["message"]
    assert wrong["data"] is None


async def test_same_email_in_two_tenants_needs_tenant_slug(
    gql: GQL, team: Team, other_team: Team
) -> None:
    await gql.ok(
        "CreateUser",
        {"input": {"email": team.email, "password": PASSWORD, "role": "VIEWER"}},
        token=other_team.token,
    )
    ambiguous = await gql.op("Login", {"input": {"email": team.email, "password": PASSWORD}})
    assert error_code(ambiguous) == "BAD_USER_INPUT"
    assert "tenantSlug" in ambiguous["errors"][0]["extensions"]["fields"]
    chosen = await gql.ok(
        "Login",
        {"input": {"email": team.email, "password": PASSWORD, "tenantSlug": other_team.slug}},
    )
    assert chosen["login"]["user"]["role"] == "VIEWER"
    assert chosen["login"]["user"]["tenant"]["id"] == other_team.tenant_id


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-jwt", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "Basic Zm9vOmJhcg=="],
)
async def test_bad_tokens_are_unauthenticated(gql: GQL, header: str) -> None:
    resp = await gql.http.post(
        "/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": header}
    )
    body = resp.json()
    assert error_code(body) == "UNAUTHENTICATED"


async def test_alg_none_and_foreign_signature_rejected(gql: GQL, team: Team) -> None:
    import jwt

    claims = jwt.decode(team.token, options={"verify_signature": False})
    forged = jwt.encode(claims, "x" * 40, algorithm="HS256")
    none_alg = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    for token in (forged, none_alg):
        assert error_code(await gql.op("Me", token=token)) == "UNAUTHENTICATED"


async def test_deactivated_user_tokens_stop_at_once(gql: GQL, team: Team) -> None:
    leaver = await add_member(gql, team, "MEMBER", "leaver@example.com")
    assert (await gql.ok("Me", token=leaver.token))["me"]["email"] == "leaver@example.com"
    await gql.ok("DeactivateUser", {"id": leaver.id}, token=team.token)
    assert error_code(await gql.op("Me", token=leaver.token)) == "UNAUTHENTICATED"
    assert (
        error_code(await gql.op("RefreshToken", {"refreshToken": leaver.refresh}))
        == "UNAUTHENTICATED"
    )
    relogin = await gql.op(
        "Login",
        {"input": {"email": "leaver@example.com", "password": PASSWORD, "tenantSlug": team.slug}},
    )
    assert error_code(relogin) == "UNAUTHENTICATED"


async def test_last_admin_cannot_be_demoted_or_deactivated(gql: GQL, team: Team) -> None:
    demote = await gql.op(
        "UpdateUserRole", {"id": team.user_id, "role": "MEMBER"}, token=team.token
    )
    assert error_code(demote) == "CONFLICT"
    deactivate = await gql.op("DeactivateUser", {"id": team.user_id}, token=team.token)
    assert error_code(deactivate) == "CONFLICT"
    assert (await gql.ok("Me", token=team.token))["me"]["role"] == "ADMIN"


async def test_api_key_authenticates_with_its_role_until_revoked(gql: GQL, team: Team) -> None:
    key = (await gql.ok("CreateApiKey", {"name": "ci", "role": "VIEWER"}, token=team.token))[
        "createApiKey"
    ]
    assert key["secret"].startswith("cgk_")
    users = await gql.ok("Users", api_key=key["secret"])
    assert len(users["users"]["edges"]) == 1
    denied = await gql.op("CreateApiKey", {"name": "x", "role": "ADMIN"}, api_key=key["secret"])
    assert error_code(denied) == "FORBIDDEN"
    listed = (await gql.ok("ApiKeys", token=team.token))["apiKeys"]
    assert [k["name"] for k in listed] == ["ci"] and "secret" not in listed[0]
    assert (await gql.ok("RevokeApiKey", {"id": key["id"]}, token=team.token))[
        "revokeApiKey"
    ] is True
    assert error_code(await gql.op("Users", api_key=key["secret"])) == "UNAUTHENTICATED"


async def test_users_pagination_is_stable(gql: GQL, team: Team) -> None:
    for i in range(4):
        await gql.ok(
            "CreateUser",
            {"input": {"email": f"u{i}@example.com", "password": PASSWORD, "role": "VIEWER"}},
            token=team.token,
        )
    page1 = (await gql.ok("Users", {"first": 2}, token=team.token))["users"]
    assert page1["pageInfo"]["hasNextPage"] is True
    # A row inserted between pages does not shift or repeat the next page.
    await gql.ok(
        "CreateUser",
        {"input": {"email": "late@example.com", "password": PASSWORD, "role": "VIEWER"}},
        token=team.token,
    )
    page2 = (
        await gql.ok(
            "Users", {"first": 2, "after": page1["pageInfo"]["endCursor"]}, token=team.token
        )
    )["users"]
    page3 = (
        await gql.ok(
            "Users", {"first": 10, "after": page2["pageInfo"]["endCursor"]}, token=team.token
        )
    )["users"]
    emails = [e["node"]["email"] for p in (page1, page2, page3) for e in p["edges"]]
    assert len(emails) == len(set(emails)) == 6
    assert emails[-1] == "late@example.com"
    assert page3["pageInfo"]["hasNextPage"] is False
