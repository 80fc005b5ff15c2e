"""Persisted queries: Apollo's APQ protocol over HTTP POST, GET and WebSockets with a
bounded Redis store, and the trusted-documents mode that runs registered operations only."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from server.settings import Settings
from tests.conftest import Team, register, serving
from tests.support import ws as w
from tests.support.client import GQL, op


def sha(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def unique_query() -> str:
    """A document no other test (or earlier run) registered."""
    return f"query Unique{uuid.uuid4().hex} {{ tenant {{ id }} }}"


def persisted(digest: str, version: object = 1) -> dict[str, Any]:
    return {"persistedQuery": {"version": version, "sha256Hash": digest}}


async def post(
    client: GQL,
    team: Team | None,
    *,
    query: str | None = None,
    digest: str | None = None,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {**extra}
    if query is not None:
        body["query"] = query
    if digest is not None:
        body["extensions"] = persisted(digest)
    headers = {"Authorization": f"Bearer {team.token}"} if team else {}
    return await client.http.post("/graphql", json=body, headers=headers)


def first_error(resp: httpx.Response) -> dict[str, Any]:
    errors = resp.json()["errors"]
    assert errors, resp.text
    error: dict[str, Any] = errors[0]
    assert error["extensions"]["requestId"] == resp.headers["x-request-id"], resp.text
    return error


def assert_not_found(resp: httpx.Response) -> None:
    assert resp.status_code == 200, resp.text
    error = first_error(resp)
    # What Apollo clients look for before they send the document with the hash.
    assert error["message"] == "PersistedQueryNotFound", error
    assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", error


@asynccontextmanager
async def app_with(settings: Any, prefix: str | None = None, **updates: Any) -> AsyncIterator[GQL]:
    from server.app import create_app
    from server.bootstrap import build_container

    prefix = prefix or f"{settings.redis_prefix}pq{uuid.uuid4().hex[:6]}"
    own = settings.model_copy(update={"redis_prefix": prefix, **updates})
    async with (
        serving(create_app(build_container(own, rate_limits={}))) as url,
        aclosing(GQL(url)) as client,
    ):
        yield client


# --- APQ ---------------------------------------------------------------------------------


async def test_apq_round_trip_over_post(gql: GQL, team: Team) -> None:
    query = unique_query()
    assert_not_found(await post(gql, team, digest=sha(query)))
    registered = await post(gql, team, query=query, digest=sha(query))
    assert registered.json() == {"data": {"tenant": {"id": team.tenant_id}}}
    by_hash = await post(gql, team, digest=sha(query))
    assert by_hash.json() == {"data": {"tenant": {"id": team.tenant_id}}}
    # Upper-case hex names the same document.
    again = await post(gql, team, digest=sha(query).upper())
    assert again.json()["data"] == {"tenant": {"id": team.tenant_id}}


async def test_apq_over_get(gql: GQL, team: Team) -> None:
    query = unique_query()
    headers = {"Authorization": f"Bearer {team.token}"}
    params = {"extensions": json.dumps(persisted(sha(query)))}
    assert_not_found(await gql.http.get("/graphql", params=params, headers=headers))
    resp = await gql.http.get("/graphql", params={**params, "query": query}, headers=headers)
    assert resp.json()["data"] == {"tenant": {"id": team.tenant_id}}, resp.text
    resp = await gql.http.get("/graphql", params=params, headers=headers)
    assert resp.json()["data"] == {"tenant": {"id": team.tenant_id}}, resp.text


async def test_a_hash_that_does_not_match_its_document_runs_nothing(gql: GQL, team: Team) -> None:
    mutation = 'mutation { createApiKey(name: "sneaky", role: ADMIN) { id } }'
    resp = await post(gql, team, query=mutation, digest=sha(unique_query()))
    assert resp.status_code == 400
    error = first_error(resp)
    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert "does not match" in error["message"]
    keys = (await gql.ok("ApiKeys", token=team.token))["apiKeys"]
    assert "sneaky" not in [k["name"] for k in keys]
    # Nor was the wrong pair stored: the hash is still unknown.
    resp = await post(gql, team, digest=sha(mutation))
    assert_not_found(resp)


@pytest.mark.parametrize(
    "extensions",
    [
        {"persistedQuery": {"version": 2, "sha256Hash": "a" * 64}},
        {"persistedQuery": {"version": 1, "sha256Hash": "not-a-hash"}},
        {"persistedQuery": {"version": 1}},
        {"persistedQuery": "abc"},
    ],
)
async def test_malformed_persisted_query_extensions_are_refused(
    gql: GQL, team: Team, extensions: dict[str, Any]
) -> None:
    resp = await gql.http.post(
        "/graphql",
        json={"extensions": extensions},
        headers={"Authorization": f"Bearer {team.token}"},
    )
    assert resp.status_code == 400, resp.text
    assert first_error(resp)["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_apq_in_websocket_payloads(gql: GQL, team: Team, protocol: str) -> None:
    beat = f"subscription Beat{uuid.uuid4().hex} {{ heartbeat(intervalSeconds: 0.05) }}"
    kind = "subscribe" if protocol == "graphql-transport-ws" else "start"

    async def send(sub: str, payload: dict[str, Any]) -> dict[str, Any]:
        await ws.send(json.dumps({"id": sub, "type": kind, "payload": payload}))
        msg = await w.recv(ws)
        while msg.get("id") != sub:  # frames of the earlier subscription
            msg = await w.recv(ws)
        return msg

    async with gql.connect_ws(protocol) as ws:
        header = ws.response.headers["x-request-id"]
        assert (await w.init(ws, await w.bearer_payload(team.token)))["type"] == "connection_ack"
        msg = await send("1", {"extensions": persisted(sha(beat))})
        assert msg["type"] == "error", msg
        error = msg["payload"][0] if isinstance(msg["payload"], list) else msg["payload"]
        assert error["message"] == "PersistedQueryNotFound", msg
        assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND", msg
        assert error["extensions"]["requestId"] == header, msg
        msg = await send("2", {"query": beat, "extensions": persisted(sha(beat))})
        assert msg["type"] in ("next", "data") and msg["payload"]["data"]["heartbeat"], msg
        msg = await send("3", {"extensions": persisted(sha(beat))})
        assert msg["type"] in ("next", "data") and msg["payload"]["data"]["heartbeat"], msg


async def test_the_store_is_bounded_in_entries_size_and_age(settings: Any) -> None:
    prefix = f"{settings.redis_prefix}pq{uuid.uuid4().hex[:6]}"
    async with app_with(
        settings,
        prefix,
        persisted_query_max_entries=10,
        persisted_query_max_bytes=1_000,
        persisted_query_ttl_seconds=600,
    ) as client:
        team = await register(client)
        queries = [unique_query() for _ in range(14)]
        for query in queries:
            resp = await post(client, team, query=query, digest=sha(query))
            assert resp.json()["data"], resp.text
        for query in queries[:4]:  # the oldest made room
            assert_not_found(await post(client, team, digest=sha(query)))
        for query in queries[4:]:
            assert (await post(client, team, digest=sha(query))).json()["data"]
        # A document over the size bound runs, but is not kept.
        big = unique_query() + "#" + "x" * 1_000
        assert (await post(client, team, query=big, digest=sha(big))).json()["data"]
        assert_not_found(await post(client, team, digest=sha(big)))
        async with aclosing(aioredis.Redis.from_url(settings.redis_url)) as r:
            keys = [k async for k in r.scan_iter(f"{prefix}:apq:*")]
            documents = [k for k in keys if not k.endswith(b":index")]
            assert len(documents) == 10, keys
            ttls = [await r.ttl(k) for k in documents]
            assert all(0 < t <= 600 for t in ttls), ttls


async def test_apq_switched_off_says_so(settings: Any) -> None:
    async with app_with(settings, persisted_queries=False) as client:
        team = await register(client)
        query = unique_query()
        for body in (
            {"extensions": persisted(sha(query))},
            {"query": query, "extensions": persisted(sha(query))},
        ):
            resp = await client.http.post(
                "/graphql", json=body, headers={"Authorization": f"Bearer {team.token}"}
            )
            error = first_error(resp)
            assert error["message"] == "PersistedQueryNotSupported", error
            assert error["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED", error
        assert (await post(client, team, query=query)).json()["data"]  # plain documents run


# --- trusted documents -------------------------------------------------------------------

TENANT = "query CurrentTenantId { tenant { id } }"
HEARTBEAT = "subscription Beat { heartbeat(intervalSeconds: 0.05) }"


def manifest(path: Path, *documents: str) -> Path:
    operations = [{"id": sha(d), "name": "op", "type": "query", "body": d} for d in documents]
    path.write_text(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    return path


def assert_untrusted(resp: httpx.Response) -> None:
    assert resp.status_code == 200, resp.text
    error = first_error(resp)
    assert error["extensions"]["code"] == "FORBIDDEN", error
    assert error["extensions"]["reason"] == "UNTRUSTED_DOCUMENT", error
    assert resp.json()["data"] is None


async def test_trusted_documents_only_run_registered_operations(
    settings: Any, tmp_path: Path
) -> None:
    path = manifest(tmp_path / "manifest.json", op("Register"), TENANT, HEARTBEAT)
    async with app_with(settings, trusted_documents=path) as client:
        team = await register(client)  # Register is in the manifest, by its text
        resp = await post(client, team, digest=sha(TENANT))
        assert resp.json()["data"] == {"tenant": {"id": team.tenant_id}}, resp.text
        assert (await post(client, team, query=TENANT)).json()["data"]
        # Anything else: by text, by an unknown hash, or trying to register it with APQ.
        sneaky = 'mutation { createApiKey(name: "sneaky", role: ADMIN) { id } }'
        assert_untrusted(await post(client, team, query=sneaky))
        assert_untrusted(await post(client, team, digest=sha(sneaky)))
        assert_untrusted(await post(client, team, query=sneaky, digest=sha(sneaky)))
        assert_untrusted(await post(client, team, digest=sha(sneaky)))  # still not stored
        assert_untrusted(await post(client, team, query=TENANT + " "))  # not byte-identical
        params = {"query": "{ tenant { id } }"}
        resp = await client.http.get(
            "/graphql", params=params, headers={"Authorization": f"Bearer {team.token}"}
        )
        assert_untrusted(resp)
        async with client.connect_ws() as ws:
            assert (await w.init(ws, await w.bearer_payload(team.token)))[
                "type"
            ] == "connection_ack"
            await w.subscribe(ws, "1", "subscription { heartbeat(intervalSeconds: 0.05) }")
            msg = await w.recv(ws)
            assert msg["type"] == "error", msg
            assert msg["payload"][0]["extensions"]["reason"] == "UNTRUSTED_DOCUMENT", msg
            payload = {"extensions": persisted(sha(HEARTBEAT))}
            await ws.send(json.dumps({"id": "2", "type": "subscribe", "payload": payload}))
            msg = await w.recv(ws)
            assert msg["type"] == "next" and msg["payload"]["data"]["heartbeat"], msg


def test_a_bad_manifest_stops_the_process(tmp_path: Path) -> None:
    good = manifest(tmp_path / "good.json", TENANT)
    assert Settings(trusted_documents=good).trusted_document_map == {sha(TENANT): TENANT}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({sha(TENANT): TENANT}))
    assert Settings(trusted_documents=flat).trusted_document_map == {sha(TENANT): TENANT}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({sha(TENANT): TENANT + " "}))
    with pytest.raises(ValueError, match=sha(TENANT)):
        Settings(trusted_documents=wrong)
    for content in ("{", "[]", "{}"):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ValueError, match="trusted"):
            Settings(trusted_documents=bad)
    with pytest.raises(ValueError, match="unreadable"):
        Settings(trusted_documents=tmp_path / "missing.json")
