"""Prometheus metrics at `/metrics`: a real server, a real run (INPUT -> TOOL in the
sandbox -> LLM on the scripted model -> OUTPUT), a chat reply streaming on a WebSocket,
then a scrape parsed with prometheus_client's parser, family by family."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route

from tests.conftest import Team, register, serving
from tests.support import builders as b
from tests.support.client import GQL, error_code, op
from tests.support.flows import create_flow, execute, wait_node, wait_status
from tests.support.ws import init, subscribe

TOKEN = "metrics-" + "x" * 24
FIRST_CALL_TIMEOUT = 150.0  # the first LLM call of a session imports LiteLLM

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[set[str], Samples]:
    families: set[str] = set()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


@asynccontextmanager
async def metered_server(settings: Any) -> AsyncIterator[tuple[str, Any]]:
    from server.app import create_app
    from server.bootstrap import build_container
    from tests.support.slow_executors import wrap

    s = settings.model_copy(update={"metrics_token": TOKEN, "metrics_cache_seconds": 0.0})
    container = build_container(s, rate_limits={}, wrap_executors=wrap)
    async with serving(create_app(container)) as url:
        s.self_url = url  # the scripted provider resolves to this server
        yield url, container


async def scrape(url: str) -> tuple[set[str], Samples]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return parse(resp.text)


async def local_provider(gql: GQL, team: Team, model: str = "scripted") -> str:
    body = await gql.ok(
        "CreateLlmProviderRuntime",
        {
            "input": {
                "name": f"llm-{uuid.uuid4().hex[:8]}",
                "provider": "openai",
                "model": model,
                "baseUrl": "crewgraph:local",
            }
        },
        token=team.token,
    )
    return str(body["createLlmProvider"]["id"])


def tool_llm_flow(tool_id: str, provider_id: str) -> dict[str, Any]:
    return {
        "name": f"metrics-{uuid.uuid4().hex[:8]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "tool", "kind": "TOOL", "config": {"toolId": tool_id}},
            {
                "id": "ask",
                "kind": "LLM",
                "config": {"providerId": provider_id, "prompt": "SAY: forty two"},
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "ask"},
            {"source": "ask", "target": "tool"},
            {"source": "tool", "target": "out"},
        ],
    }


def slow_flow(tool_id: str) -> dict[str, Any]:
    return {
        "name": f"slow-{uuid.uuid4().hex[:8]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "s", "kind": "TOOL", "config": {"toolId": tool_id, "testSleepSeconds": 2.0}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "s"}, {"source": "s", "target": "out"}],
    }


async def test_a_scrape_after_a_run_shows_every_family_with_sane_values(settings: Any) -> None:
    async with metered_server(settings) as (url, _), aclosing(GQL(url)) as gql:
        team = await register(gql)
        tool = await b.tool(gql, team.token)
        provider = await local_provider(gql, team)
        flow = await create_flow(gql, team.token, tool_llm_flow(tool["id"], provider))
        run = await execute(gql, team.token, flow["id"])
        done = await wait_status(gql, team.token, run["id"], timeout=FIRST_CALL_TIMEOUT)
        # Without a sandbox backend on this machine the TOOL node fails (NOT_CONFIGURED),
        # after the LLM node ran: the run and its sandbox outcome say so.
        sandboxed = done["status"] == "COMPLETED"
        if not sandboxed:
            assert "no tool sandbox backend" in (done["error"] or ""), json.dumps(done)[:3000]
        missing = await gql.op(
            "ExecuteFlow", {"id": str(uuid.uuid4()), "inputs": {}}, token=team.token
        )
        assert error_code(missing) == "NOT_FOUND", missing

        # A run held RUNNING by a slow node, and a chat reply streaming to a subscriber.
        slow = await create_flow(gql, team.token, slow_flow(tool["id"]))
        held = await execute(gql, team.token, slow["id"])
        await wait_node(gql, team.token, held["id"], "s", "RUNNING")
        slow_provider = await local_provider(gql, team, "scripted-slow")
        session = (
            await gql.ok(
                "CreateChatSession", {"input": {"llmProviderId": slow_provider}}, token=team.token
            )
        )["createChatSession"]
        async with gql.connect_ws() as ws:
            ack = await init(ws, {"authorization": f"Bearer {team.token}"})
            assert ack["type"] == "connection_ack", ack
            await subscribe(ws, "t", op("ChatTokens"), {"sessionId": session["id"]})
            await gql.ok(
                "SendChatMessage",
                {"sessionId": session["id"], "content": "hello"},
                token=team.token,
            )
            frame = await asyncio.wait_for(ws.recv(), FIRST_CALL_TIMEOUT)  # first token
            assert '"next"' in str(frame), frame
            families, live = await scrape(url)
            await gql.ok("CancelChatReply", {"sessionId": session["id"]}, token=team.token)

        # Gauges while all that was under way.
        assert value(live, "crewgraph_websockets_active") >= 1
        assert value(live, "crewgraph_subscriptions_active") >= 1
        assert value(live, "crewgraph_chat_replies_streaming") == 1
        assert value(live, "crewgraph_executions", status="RUNNING") >= 1
        for status in ("PENDING", "RUNNING", "WAITING"):
            assert ("crewgraph_executions", (("status", status),)) in live
        depth = value(live, "crewgraph_execution_queue_depth")
        oldest = value(live, "crewgraph_execution_oldest_pending_age_seconds")
        assert depth >= 0 and oldest >= 0 and (depth > 0 or oldest == 0)

        await wait_status(gql, team.token, held["id"])
        for _ in range(200):  # the cancelled reply's call is counted once it has ended
            families, after = await scrape(url)
            if value(after, "crewgraph_chat_replies_streaming") == 0:
                break
            await asyncio.sleep(0.05)

    expected = {
        "crewgraph_http_request_duration_seconds",
        "crewgraph_graphql_errors",
        "crewgraph_websockets_active",
        "crewgraph_subscriptions_active",
        "crewgraph_execution_transitions",
        "crewgraph_executions",
        "crewgraph_execution_queue_depth",
        "crewgraph_execution_oldest_pending_age_seconds",
        "crewgraph_sandbox_runs",
        "crewgraph_sandbox_run_duration_seconds",
        "crewgraph_llm_calls",
        "crewgraph_llm_call_duration_seconds",
        "crewgraph_llm_tokens",
        "crewgraph_chat_replies_streaming",
    }
    assert expected <= families, expected - families

    # Requests by operation name and status; errors by code.
    count = "crewgraph_http_request_duration_seconds_count"
    assert value(after, count, operation="ExecuteFlow", status="200") == 3
    assert value(after, count, operation="Register", status="200") == 1
    assert value(after, "crewgraph_http_request_duration_seconds_sum", operation="Register") > 0
    assert value(after, "crewgraph_graphql_errors_total", code="NOT_FOUND") == 1
    # Both runs went PENDING -> RUNNING -> an end (other servers' runs are not counted here).
    transitions = "crewgraph_execution_transitions_total"
    assert value(after, transitions, status="PENDING") == 2
    assert value(after, transitions, status="RUNNING") == 2
    assert value(after, transitions, status="COMPLETED") == (2 if sandboxed else 1)
    assert value(after, transitions, status="FAILED") == (0 if sandboxed else 1)
    # One sandbox run of the echo tool (the slow node sleeps in the test executor).
    outcome = "ok" if sandboxed else "not_configured"
    assert value(after, "crewgraph_sandbox_runs_total") == 1
    assert value(after, "crewgraph_sandbox_runs_total", outcome=outcome) == 1
    assert value(after, "crewgraph_sandbox_run_duration_seconds_count", outcome=outcome) == 1
    assert value(after, "crewgraph_sandbox_run_duration_seconds_sum", outcome=outcome) > 0
    # LLM calls and tokens of this tenant: the node's call and the cancelled chat reply.
    mine = {"tenant": team.tenant_id}
    assert value(after, "crewgraph_chat_replies_streaming") == 0
    assert value(after, "crewgraph_llm_calls_total", outcome="ok", **mine) == 1
    assert value(after, "crewgraph_llm_calls_total", outcome="cancelled", **mine) == 1
    assert value(after, "crewgraph_llm_calls_total", tenant=str(uuid.uuid4())) == 0
    assert value(after, "crewgraph_llm_call_duration_seconds_count", provider="openai") == 2
    assert value(after, "crewgraph_llm_tokens_total", kind="prompt", **mine) > 0
    assert value(after, "crewgraph_llm_tokens_total", kind="completion", **mine) > 0
    # The WebSocket is closed and the reply ended (it was cancelled or finished).
    assert value(after, "crewgraph_websockets_active") == 0
    assert value(after, "crewgraph_subscriptions_active") == 0


async def test_the_endpoint_needs_the_token_when_one_is_set(settings: Any) -> None:
    async with metered_server(settings) as (url, _), httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/metrics")).status_code == 401
        wrong = await http.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        basic = await http.get(f"{url}/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        ok = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "crewgraph_executions" in ok.text


@pytest.mark.parametrize(
    ("env", "client", "status"),
    [
        ("laptop", "127.0.0.1", 200),
        ("laptop", "::1", 200),
        ("laptop", "10.1.2.3", 404),
        ("production", "127.0.0.1", 404),
    ],
)
async def test_without_a_token_only_loopback_in_the_laptop_profile(
    container: Any, env: str, client: str, status: int
) -> None:
    from server.metrics import Metrics, metrics_endpoint

    s = container.settings.model_copy(update={"env": env, "metrics_token": None})
    app = Starlette(routes=[Route("/metrics", metrics_endpoint(s, Metrics(), container.db))])
    transport = httpx.ASGITransport(app=app, client=(client, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        resp = await http.get("/metrics")
    assert resp.status_code == status, resp.text
    if status == 200:
        _, samples = parse(resp.text)
        assert ("crewgraph_execution_queue_depth", ()) in samples


def test_operation_names_are_bounded() -> None:
    from server.metrics import Metrics

    metrics = Metrics(max_operations=2)
    assert metrics.operation_label(["A"]) == "A"
    assert metrics.operation_label(["B"]) == "B"
    assert metrics.operation_label(["C"]) == "_other"  # a client cannot grow the registry
    assert metrics.operation_label(["A"]) == "A"
    assert metrics.operation_label([None]) == "_anonymous"
    assert metrics.operation_label(["A", "B"]) == "_batch"
    assert metrics.operation_label([]) == "_none"


async def test_a_worker_serves_its_registry_on_its_own_port(settings: Any) -> None:
    from server.metrics import Metrics, serve_worker_metrics
    from tests.support.services import free_port

    metrics = Metrics()
    assert serve_worker_metrics(settings, metrics) is None  # no port: nothing listens
    metrics.status_changed("RUNNING")
    port = free_port()
    server = serve_worker_metrics(settings.model_copy(update={"metrics_port": port}), metrics)
    try:
        async with httpx.AsyncClient() as http:
            resp = await http.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert resp.status_code == 200
    _, samples = parse(resp.text)
    assert value(samples, "crewgraph_execution_transitions_total", status="RUNNING") == 1
