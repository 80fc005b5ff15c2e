from __future__ import annotations

from tests.support.client import GQL


async def test_health_and_readiness(gql: GQL) -> None:
    assert (await gql.http.get("/healthz")).json() == {"status": "ok"}
    ready = await gql.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "mongodb": "ok"}


async def test_graphiql_is_served_to_browsers(gql: GQL) -> None:
    resp = await gql.http.get("/graphql", headers={"accept": "text/html"})
    assert resp.status_code == 200
    assert "graphiql" in resp.text.lower()


async def test_request_id_is_echoed(gql: GQL) -> None:
    resp = await gql.http.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"x-request-id": "abc123"}
    )
    assert resp.headers["x-request-id"] == "abc123"
