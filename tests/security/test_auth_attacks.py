"""Attacks on identity: races, leaks, the production profile and brute-force limits.

Each test failed on the code before these holes were closed and keeps them closed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import uvicorn

from tests.conftest import PASSWORD, Team, add_member, register, serving
from tests.support.client import GQL, error_code
from tests.support.services import free_port, wait_for_port

INTROSPECTION = "{ __schema { queryType { name } types { name } } }"


@asynccontextmanager
async def app_with(
    settings: Any, rate_limits: dict[str, str] | None = None, **updates: Any
) -> AsyncIterator[GQL]:
    """A second server on its own container, with `updates` applied to the test settings."""
    from server.app import create_app
    from server.bootstrap import build_container

    prefix = f"{settings.redis_prefix}sec{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"redis_prefix": prefix, **updates})
    app = create_app(build_container(own, rate_limits=rate_limits or {}))
    async with serving(app) as url, aclosing(GQL(url)) as client:
        yield client


async def _active_admins(container: Any, tenant_id: str) -> int:
    async with container.uow() as uow:
        return int(await uow.users.count_admins(tenant_id))


# -- races --------------------------------------------------------------------------------


async def test_two_admins_deactivating_each_other_leave_one_admin(gql: GQL, container: Any) -> None:
    for _ in range(8):
        team = await register(gql)
        other = await add_member(gql, team, "ADMIN")
        results = await asyncio.gather(
            gql.op("DeactivateUser", {"id": other.id}, token=team.token),
            gql.op("DeactivateUser", {"id": team.user_id}, token=other.token),
        )
        assert await _active_admins(container, team.tenant_id) == 1, results
        codes = sorted(str(error_code(r)) for r in results if r.get("errors"))
        assert codes in (["CONFLICT"], ["UNAUTHENTICATED"]), results


async def test_demote_and_deactivate_races_keep_an_admin(gql: GQL, container: Any) -> None:
    for _ in range(5):
        team = await register(gql)
        other = await add_member(gql, team, "ADMIN")
        await asyncio.gather(
            gql.op("UpdateUserRole", {"id": other.id, "role": "MEMBER"}, token=team.token),
            gql.op("UpdateUserRole", {"id": team.user_id, "role": "MEMBER"}, token=other.token),
        )
        assert await _active_admins(container, team.tenant_id) == 1


async def test_two_tabs_refreshing_at_once_both_stay_logged_in(settings: Any) -> None:
    async with app_with(settings, refresh_reuse_seconds=1.0) as client:
        team = await register(client)
        first, second = await asyncio.gather(
            client.op("RefreshToken", {"refreshToken": team.refresh}),
            client.op("RefreshToken", {"refreshToken": team.refresh}),
        )
        assert not first.get("errors") and not second.get("errors"), (first, second)
        pairs = [first["data"]["refreshToken"], second["data"]["refreshToken"]]
        assert pairs[0]["refreshToken"] != pairs[1]["refreshToken"]
        for pair in pairs:
            assert (await client.ok("Me", token=pair["accessToken"]))["me"]["id"] == team.user_id
        # Each tab rotates its own token on; the family lives on.
        later = await client.ok("RefreshToken", {"refreshToken": pairs[1]["refreshToken"]})
        assert later["refreshToken"]["refreshToken"]

        # After the window the old token coming back is theft: the whole family dies.
        await asyncio.sleep(1.3)
        reuse = await client.op("RefreshToken", {"refreshToken": team.refresh})
        assert error_code(reuse) == "UNAUTHENTICATED"
        assert "already used" in reuse["errors"][0]["message"]
        for token in (pairs[0]["refreshToken"], later["refreshToken"]["refreshToken"]):
            dead = await client.op("RefreshToken", {"refreshToken": token})
            assert error_code(dead) == "UNAUTHENTICATED"


async def test_reuse_window_does_not_revive_a_logged_out_family(settings: Any) -> None:
    async with app_with(settings, refresh_reuse_seconds=30.0) as client:
        team = await register(client)
        await client.ok("RefreshToken", {"refreshToken": team.refresh})
        await client.ok("Logout", {"refreshToken": team.refresh})
        again = await client.op("RefreshToken", {"refreshToken": team.refresh})
        assert error_code(again) == "UNAUTHENTICATED"


# -- leaks --------------------------------------------------------------------------------


async def test_deactivated_login_answers_like_a_wrong_password(gql: GQL, team: Team) -> None:
    leaver = await add_member(gql, team, "MEMBER")
    await gql.ok("DeactivateUser", {"id": leaver.id}, token=team.token)
    right = await gql.op("Login", {"input": {"email": leaver.email, "password": PASSWORD}})
    wrong = await gql.op("Login", {"input": {"email": leaver.email, "password": "not-it-at-all"}})
    assert error_code(right) == error_code(wrong) == "UNAUTHENTICATED"
    assert right["errors"][0]["message"] == wrong["errors"][0]["message"]
    assert "deactivated" not in right["errors"][0]["message"]


async def test_api_key_and_bearer_together_are_refused(gql: GQL, team: Team) -> None:
    viewer_key = (await gql.ok("CreateApiKey", {"name": "ci", "role": "VIEWER"}, token=team.token))[
        "createApiKey"
    ]["secret"]
    both = await gql.op("Users", token=team.token, api_key=viewer_key)
    assert error_code(both) == "UNAUTHENTICATED"
    assert both["data"] is None
    assert "not both" in both["errors"][0]["message"]
    # Each alone still works.
    await gql.ok("Users", token=team.token)
    await gql.ok("Users", api_key=viewer_key)


async def test_production_profile_hides_the_schema(settings: Any) -> None:
    async with app_with(
        settings, env="production", cors_origins="https://app.example.com"
    ) as client:
        body = await client.raw(INTROSPECTION)
        assert error_code(body) == "BAD_USER_INPUT" and body.get("data") is None
        typed = await client.raw('{ __type(name: "Query") { fields { name } } }')
        assert error_code(typed) == "BAD_USER_INPUT"
        assert (await client.raw("{ __typename }"))["data"] == {"__typename": "Query"}

        hint = await client.raw("{ flowz { edges { cursor } } }")
        assert error_code(hint) == "BAD_USER_INPUT"
        assert "Did you mean" not in hint["errors"][0]["message"]

        page = await client.http.get("/graphql", headers={"Accept": "text/html"})
        assert page.status_code < 500
        assert "graphiql" not in page.text.lower()
        assert not page.headers.get("content-type", "").startswith("text/html")

        resp = await client.http.post("/graphql", json={"query": "{ __typename }"})
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in resp.headers["content-security-policy"]

        allowed = await _preflight(client.http, "https://app.example.com")
        assert allowed.headers.get("access-control-allow-origin") == "https://app.example.com"
        foreign = await _preflight(client.http, "https://evil.example.net")
        assert "access-control-allow-origin" not in foreign.headers


async def _preflight(http: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await http.options(
        "/graphql",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )


async def test_laptop_profile_keeps_graphiql_with_headers_and_no_cors(gql: GQL) -> None:
    page = await gql.http.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    # GraphiQL loads only from this origin (server/graphiql.py), so its policy says so.
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp and "http" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "__schema" in str(await gql.raw(INTROSPECTION))
    foreign = await _preflight(gql.http, "https://evil.example.net")
    assert "access-control-allow-origin" not in foreign.headers


# -- brute force --------------------------------------------------------------------------


def _attempt(email: str) -> dict[str, Any]:
    return {"input": {"email": email, "password": "wrong-password"}}


async def test_one_address_cannot_spray_many_emails(settings: Any) -> None:
    limits = {"login": "3/minute", "login_ip": "5/minute"}
    async with app_with(settings, rate_limits=limits) as client:
        codes = [
            error_code(await client.op("Login", _attempt(f"spray{i}@example.com")))
            for i in range(6)
        ]
        assert codes == ["UNAUTHENTICATED"] * 5 + ["RATE_LIMITED"]


@asynccontextmanager
async def serve_like_cli(settings: Any, limits: dict[str, str]) -> AsyncIterator[GQL]:
    """The app under the uvicorn options `crewgraph serve` uses."""
    from server.app import create_app
    from server.bootstrap import build_container
    from server.cli import uvicorn_options

    prefix = f"{settings.redis_prefix}xff{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"redis_prefix": prefix})
    app = create_app(build_container(own, rate_limits=limits))
    port = free_port()
    options = {**uvicorn_options(own), "host": "127.0.0.1", "port": port}
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", **options))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for_port(port)
        async with aclosing(GQL(f"http://127.0.0.1:{port}")) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def _login_from(client: GQL, email: str, forwarded_for: str) -> str | None:
    resp = await client.http.post(
        "/graphql",
        json={
            "query": "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
            "variables": _attempt(email),
        },
        headers={"X-Forwarded-For": forwarded_for},
    )
    return error_code(resp.json())


async def test_x_forwarded_for_does_not_dodge_the_address_limit(settings: Any) -> None:
    async with serve_like_cli(settings, {"login_ip": "3/minute"}) as client:
        codes = [
            await _login_from(client, f"xff{i}@example.com", f"203.0.113.{i}") for i in range(4)
        ]
        assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]


async def test_x_forwarded_for_is_believed_from_a_configured_proxy(settings: Any) -> None:
    proxied = settings.model_copy(update={"trusted_proxies": "127.0.0.1"})
    async with serve_like_cli(proxied, {"login_ip": "3/minute"}) as client:
        codes = [
            await _login_from(client, f"px{i}@example.com", f"203.0.113.{i}") for i in range(4)
        ]
        assert codes == ["UNAUTHENTICATED"] * 4
