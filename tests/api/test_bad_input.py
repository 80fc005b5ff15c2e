"""Bad input gets a clear error code, never a 500 or a traceback, and writes nothing."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PASSWORD, Team
from tests.support.client import GQL, error_code


def _no_trace(body: dict) -> None:
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text


@pytest.mark.parametrize(
    ("input", "field"),
    [
        ({"tenantName": "T", "email": "not-an-email", "password": PASSWORD}, "email"),
        ({"tenantName": "T", "email": "a@example.com", "password": "short"}, "password"),
        ({"tenantName": "   ", "email": "a@example.com", "password": PASSWORD}, "tenantName"),
        ({"tenantName": "T" * 101, "email": "a@example.com", "password": PASSWORD}, "tenantName"),
        ({"tenantName": "T", "email": "a" * 300 + "@example.com", "password": PASSWORD}, "email"),
        ({"tenantName": "T", "email": "a@example.com", "password": "p" * 10_000}, "password"),
    ],
)
async def test_register_validation_names_the_field(gql: GQL, input: dict, field: str) -> None:
    body = await gql.op("Register", {"input": input})
    assert error_code(body) == "BAD_USER_INPUT"
    assert field in body["errors"][0]["extensions"]["fields"]
    _no_trace(body)
    # Nothing was written: the email can still register.
    if field != "email":
        fixed = {**input, field: {"tenantName": "Fixed", "password": PASSWORD}[field]}
        ok = await gql.op(
            "Register",
            {"input": {**fixed, "email": f"fixed-{field}-{len(str(input))}@example.com"}},
        )
        assert not ok.get("errors"), ok


async def test_duplicate_email_in_a_tenant_is_conflict(gql: GQL, team: Team) -> None:
    body = await gql.op(
        "CreateUser",
        {"input": {"email": team.email, "password": PASSWORD, "role": "VIEWER"}},
        token=team.token,
    )
    assert error_code(body) == "CONFLICT"
    assert body["errors"][0]["extensions"]["fields"] == {"email": "is already taken"}
    users = (await gql.ok("Users", token=team.token))["users"]["edges"]
    assert len(users) == 1


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        (
            "mutation { register(input: {tenantName: 1, email: 2, password: 3}) { accessToken } }",
            None,
        ),
        (
            'mutation { register(input: {tenantName: "a", email: "b@c.de", password: "xxxxxxxxxx", extra: 1}) { accessToken } }',
            None,
        ),
        ("query { me { id nope } }", None),
        ("query { me { ", None),
        (
            "mutation R($i: RegisterInput!) { register(input: $i) { accessToken } }",
            {"i": {"tenantName": ["x"]}},
        ),
        (
            "mutation R($i: RegisterInput!) { register(input: $i) { accessToken } }",
            {"i": "garbage"},
        ),
        ('query { users(first: "ten") { pageInfo { hasNextPage } } }', None),
    ],
)
async def test_malformed_documents_are_bad_user_input(
    gql: GQL, query: str, variables: dict | None
) -> None:
    resp = await gql.http.post("/graphql", json={"query": query, "variables": variables})
    assert resp.status_code < 500
    body = resp.json()
    assert error_code(body) == "BAD_USER_INPUT", body
    _no_trace(body)


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[]", b'{"query": 5}', b"", b'{"variables": {}}'],
)
async def test_garbage_http_bodies(gql: GQL, raw: bytes) -> None:
    resp = await gql.http.post(
        "/graphql", content=raw, headers={"content-type": "application/json"}
    )
    assert 400 <= resp.status_code < 500
    body = resp.json()
    assert error_code(body) == "BAD_USER_INPUT", body


async def test_huge_body_is_limit_exceeded(gql: GQL) -> None:
    big = "x" * 2_000_000
    resp = await gql.http.post("/graphql", json={"query": "{ me { id } }", "variables": {"x": big}})
    assert resp.status_code == 413
    assert error_code(resp.json()) == "LIMIT_EXCEEDED"


async def test_depth_and_alias_limits(gql: GQL, team: Team) -> None:
    deep = "{ me { tenant { id } } }"
    assert not (await gql.raw(deep, token=team.token)).get("errors")
    aliases = "{ " + " ".join(f"a{i}: me {{ id }}" for i in range(40)) + " }"
    body = await gql.raw(aliases, token=team.token)
    assert error_code(body) == "LIMIT_EXCEEDED", body


async def test_first_out_of_range_and_bad_cursor(gql: GQL, team: Team) -> None:
    too_many = await gql.op("Users", {"first": 1000}, token=team.token)
    assert error_code(too_many) == "BAD_USER_INPUT"
    assert "first" in too_many["errors"][0]["extensions"]["fields"]
    bad_cursor = await gql.op("Users", {"after": "%%%not-a-cursor"}, token=team.token)
    assert error_code(bad_cursor) == "BAD_USER_INPUT"


async def test_unauthenticated_access(gql: GQL) -> None:
    for name in ("Me", "Users", "CurrentTenant", "ApiKeys"):
        body = await gql.op(name)
        assert error_code(body) == "UNAUTHENTICATED", (name, body)
