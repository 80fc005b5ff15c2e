"""The principal cache (server/principal_cache.py) over real HTTP: credentials are checked
once per few seconds, yet a revocation refuses them on the very next request.

Each test first shows the cache really answers (a change made behind the API's back is
not seen yet), so "refused at once" below is not just the credentials being re-checked."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import sqlalchemy as sa

from domain.ports import Revocation
from persistence.revocations import RedisRevocations
from tests.conftest import Member, Team, add_member
from tests.support.client import GQL, error_code


async def _silently(container: Any, sql: str, **params: Any) -> None:
    """A change straight in the database: no revocation is announced."""
    async with container.db.engine.begin() as conn:
        await conn.execute(sa.text(sql), params)


async def _cached(container: Any, gql: GQL, **creds: str) -> None:
    """The credentials work, and the second use is answered from the cache."""
    assert container.principals.enabled
    await container.principals.start()
    assert error_code(await gql.op("Me", **creds)) in (None, "FORBIDDEN")
    hits = container.principals.hits
    assert error_code(await gql.op("Me", **creds)) in (None, "FORBIDDEN")
    assert container.principals.hits > hits


async def _deactivated_unnoticed(container: Any, gql: GQL, member: Member) -> None:
    """The member is deactivated behind the API's back: the cache still answers (for
    seconds at most)."""
    await _silently(
        container, "UPDATE public.users SET active = false WHERE id = :id", id=member.id
    )
    assert error_code(await gql.op("Me", token=member.token)) is None


async def _announce_elsewhere(container: Any, revocation: Revocation) -> None:
    """As another API process would: on Redis only, not through this process's port."""
    s = container.settings
    other = RedisRevocations(container.redis, container.bus, s.redis_prefix)
    await other.announce(revocation)


async def _refused_soon(gql: GQL, **creds: str) -> None:
    for _ in range(50):  # the signal crosses Redis: milliseconds
        if error_code(await gql.op("Me", **creds)) == "UNAUTHENTICATED":
            return
        await asyncio.sleep(0.05)
    pytest.fail("still accepted after the revocation signal")


async def test_revoked_api_key_is_refused_on_the_next_request(
    gql: GQL, team: Team, container: Any
) -> None:
    key = (await gql.ok("CreateApiKey", {"name": "ci", "role": "VIEWER"}, token=team.token))[
        "createApiKey"
    ]
    await _cached(container, gql, api_key=key["secret"])
    await gql.ok("RevokeApiKey", {"id": key["id"]}, token=team.token)
    assert error_code(await gql.op("Users", api_key=key["secret"])) == "UNAUTHENTICATED"


async def test_logout_refuses_the_sessions_access_token_on_the_next_request(
    gql: GQL, team: Team, container: Any
) -> None:
    member = await add_member(gql, team, "MEMBER")
    await _cached(container, gql, token=member.token)
    assert (await gql.ok("Logout", {"refreshToken": member.refresh}))["logout"] is True
    assert error_code(await gql.op("Me", token=member.token)) == "UNAUTHENTICATED"


async def test_role_change_applies_on_the_next_request(
    gql: GQL, team: Team, container: Any
) -> None:
    member = await add_member(gql, team, "MEMBER")
    await _cached(container, gql, token=member.token)
    await gql.ok("UpdateUserRole", {"id": member.id, "role": "VIEWER"}, token=team.token)
    assert (await gql.ok("Me", token=member.token))["me"]["role"] == "VIEWER"


async def test_cache_answers_until_another_process_announces_a_revocation(
    gql: GQL, team: Team, container: Any
) -> None:
    member = await add_member(gql, team, "MEMBER")
    await _cached(container, gql, token=member.token)
    await _deactivated_unnoticed(container, gql, member)
    await _announce_elsewhere(
        container, Revocation(team.tenant_id, user_id=member.id, reason="user deactivated")
    )
    await _refused_soon(gql, token=member.token)


async def test_tenant_wide_revocation_drops_every_principal_of_the_tenant(
    gql: GQL, team: Team, other_team: Team, container: Any
) -> None:
    if "tenant_wide" not in {f.name for f in dataclasses.fields(Revocation)}:
        pytest.skip("Revocation has no tenant-wide scope yet")
    member = await add_member(gql, team, "MEMBER")
    for token in (team.token, member.token, other_team.token):
        await _cached(container, gql, token=token)
    await _silently(
        container, "UPDATE public.users SET active = false WHERE tenant_id = :t", t=team.tenant_id
    )
    revocation = Revocation(team.tenant_id, reason="tenant suspended", tenant_wide=True)  # type: ignore[call-arg]
    await _announce_elsewhere(container, revocation)
    await _refused_soon(gql, token=member.token)
    await _refused_soon(gql, token=team.token)
    hits = container.principals.hits
    assert error_code(await gql.op("Me", token=other_team.token)) is None
    assert container.principals.hits > hits  # the other tenant's entry stayed


async def test_lost_revocation_signals_empty_the_cache(
    gql: GQL, team: Team, container: Any
) -> None:
    member = await add_member(gql, team, "MEMBER")
    await _cached(container, gql, token=member.token)
    await _deactivated_unnoticed(container, gql, member)
    # The signal connection breaks (as when Redis restarts): announcements may be lost.
    channel = f"{container.settings.redis_prefix}:revocations"
    for subscriber in list(container.bus._subscribers.get(channel, ())):
        subscriber.interrupt("test: connection lost")
    assert error_code(await gql.op("Me", token=member.token)) == "UNAUTHENTICATED"
