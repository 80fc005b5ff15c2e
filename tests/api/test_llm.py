"""LLM nodes, providers' failover, testLlmProvider and usage, through the whole API path:
GraphQL → engine → LlmService → LiteLLM → real HTTP → the server's scripted model."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, Team, register
from tests.support.client import GQL, error_code
from tests.support.flows import collect_events, create_flow, execute, wait_node, wait_status

LOCAL = "crewgraph:local"
WRONG_KEY = "sk-wrong-Secret-Value-42"
# First LLM call of a test session imports LiteLLM (seconds, on a busy machine).
FIRST_CALL_TIMEOUT = 90.0


def _n(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _local_provider(gql: GQL, team: Team) -> dict[str, Any]:
    data = await gql.ok("LlmProvidersRuntime", {"first": 100}, token=team.token)
    found = [e["node"] for e in data["llmProviders"]["edges"]]
    local = [p for p in found if p["name"] == "Local (scripted)"]
    assert len(local) == 1, found
    provider: dict[str, Any] = local[0]
    return provider


async def _provider(gql: GQL, team: Team, **over: Any) -> dict[str, Any]:
    data = {"name": _n("llm"), "provider": "openai", "model": "scripted", "baseUrl": LOCAL}
    data.update(over)
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=team.token)
    provider: dict[str, Any] = body["createLlmProvider"]
    return provider


def _llm_flow(provider_id: str, prompt: str, **config: Any) -> dict[str, Any]:
    return {
        "name": _n("llm-flow"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {
                "id": "ask",
                "kind": "LLM",
                "config": {"providerId": provider_id, "prompt": prompt, **config},
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "ask"}, {"source": "ask", "target": "out"}],
    }


async def _run(
    gql: GQL, team: Team, flow: dict[str, Any], inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    created = await create_flow(gql, team.token, flow)
    run = await execute(gql, team.token, created["id"], inputs or {})
    await wait_status(gql, team.token, run["id"], timeout=FIRST_CALL_TIMEOUT)
    body = await gql.ok("ExecutionUsage", {"id": run["id"]}, token=team.token)
    execution: dict[str, Any] = body["execution"]
    return execution


async def _requests(server_url: str, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{server_url}/local-llm/v1/_requests", params={"tag": run_id})
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["requests"]
    return found


async def test_new_team_runs_an_llm_flow_on_the_local_model_with_tokens_and_usage(
    gql: GQL, server_url: str
) -> None:
    team = await register(gql)
    local = await _local_provider(gql, team)
    assert local["baseUrl"] == LOCAL and local["model"] == "scripted"
    assert not local["hasApiKey"] and local["fallbacks"] == []

    flow = _llm_flow(local["id"], "SAY: The answer about {{ inputs.topic }} is 42")
    done = await _run(gql, team, flow, {"topic": "tea"})
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"out": "The answer about tea is 42"}
    runs = {r["nodeId"]: r for r in done["nodeRuns"]}
    node_usage = runs["ask"]["usage"]
    assert node_usage["llmCalls"] == 1
    assert node_usage["completionTokens"] == 6  # one token per word of the scripted reply
    assert node_usage["promptTokens"] > 0
    assert node_usage["totalTokens"] == node_usage["promptTokens"] + 6
    assert node_usage["costUsd"] is None  # no price for the scripted model
    assert runs["in"]["usage"] is None  # no LLM call there
    assert done["usage"] == node_usage

    events = await collect_events(gql, team.token, done["id"])
    tokens = [e for e in events if e["type"] == "TOKEN"]
    assert tokens and all(e["nodeId"] == "ask" for e in tokens)
    assert "".join(e["data"]["delta"] for e in tokens) == "The answer about tea is 42"
    completed = next(
        i for i, e in enumerate(events) if e["type"] == "NODE_COMPLETED" and e["nodeId"] == "ask"
    )
    assert max(i for i, e in enumerate(events) if e["type"] == "TOKEN") < completed

    logged = await _requests(server_url, done["id"])
    assert [(r["model"], r["node"], r["status"]) for r in logged] == [
        ("scripted", "ask", "completed")
    ]

    days = (await gql.ok("Usage", {"days": 3}, token=team.token))["usage"]
    assert len(days) == 3 and days[0]["date"] > days[1]["date"] > days[2]["date"]
    assert days[0]["executions"] == 1
    assert days[0]["usage"]["llmCalls"] == 1
    assert days[0]["usage"]["completionTokens"] == 6
    assert days[1]["usage"]["llmCalls"] == 0 and days[1]["executions"] == 0


async def test_json_response_format_parses_or_fails_the_node_clearly(gql: GQL, team: Team) -> None:
    local = await _local_provider(gql, team)
    ok = await _run(
        gql, team, _llm_flow(local["id"], 'SAY: {"n": 3, "ok": true}', responseFormat="json")
    )
    assert ok["status"] == "COMPLETED", ok
    assert ok["outputs"] == {"out": {"n": 3, "ok": True}}

    default = await _run(gql, team, _llm_flow(local["id"], "hello there", responseFormat="json"))
    assert default["outputs"]["out"] == {"reply": "Scripted reply: hello there", "words": 2}

    bad = await _run(gql, team, _llm_flow(local["id"], "SAY: not json", responseFormat="json"))
    assert bad["status"] == "FAILED"
    ask = next(r for r in bad["nodeRuns"] if r["nodeId"] == "ask")
    assert ask["status"] == "FAILED"
    assert "not valid JSON" in ask["error"] and "not json" in ask["error"]
    assert bad["usage"]["llmCalls"] == 1  # the call happened and is counted


async def test_bad_llm_node_config_is_refused_at_write_time(gql: GQL, team: Team) -> None:
    local = await _local_provider(gql, team)
    flow = _llm_flow(local["id"], "{{ nodes.nowhere.output }}", responseFormat="xml")
    body = await gql.raw(
        "mutation($input: FlowInput!) { createFlow(input: $input) { id } }",
        {"input": flow},
        token=team.token,
    )
    assert error_code(body) == "BAD_USER_INPUT"
    fields = body["errors"][0]["extensions"]["fields"]
    assert any("responseFormat" in k for k in fields), fields
    assert any("prompt" in k for k in fields), fields

    other = await register(gql)
    foreign = _llm_flow(local["id"], "hi")
    body = await gql.raw(
        "mutation($input: FlowInput!) { createFlow(input: $input) { id } }",
        {"input": foreign},
        token=other.token,
    )
    assert error_code(body) == "NOT_FOUND"


async def test_failing_provider_falls_over_to_its_fallback_with_a_log_event(
    gql: GQL, team: Team, server_url: str
) -> None:
    backup = await _provider(gql, team, name=_n("backup"))
    broken = await _provider(
        gql,
        team,
        name=_n("broken"),
        model="scripted-error-500",
        maxRetries=0,
        fallbackProviderIds=[backup["id"]],
    )
    assert [f["id"] for f in broken["fallbacks"]] == [backup["id"]]
    done = await _run(gql, team, _llm_flow(broken["id"], "SAY: rescued"))
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"out": "rescued"}
    ask = next(r for r in done["nodeRuns"] if r["nodeId"] == "ask")
    assert ask["usage"]["llmCalls"] == 2  # the failed request and the fallback's

    events = await collect_events(gql, team.token, done["id"])
    logs = [e for e in events if e["type"] == "LOG" and e["nodeId"] == "ask"]
    assert len(logs) == 1, logs
    message = logs[0]["data"]["message"]
    assert broken["name"] in message and backup["name"] in message
    assert logs[0]["data"]["reason"] == "server"
    assert logs[0]["data"]["toProvider"]["id"] == backup["id"]

    logged = await _requests(server_url, done["id"])
    assert [(r["model"], r["http_status"]) for r in logged] == [
        ("scripted-error-500", 500),
        ("scripted", 200),
    ]


async def test_unreachable_and_rate_limited_providers_fall_over_too(gql: GQL, team: Team) -> None:
    backup = await _provider(gql, team, name=_n("backup"))
    dead = await _provider(
        gql,
        team,
        name=_n("dead"),
        baseUrl="http://127.0.0.1:9/v1",
        maxRetries=0,
        fallbackProviderIds=[backup["id"]],
    )
    done = await _run(gql, team, _llm_flow(dead["id"], "SAY: still here"))
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"out": "still here"}

    limited = await _provider(
        gql, team, name=_n("limited"), model="scripted-error-429", maxRetries=0
    )
    failed = await _run(gql, team, _llm_flow(limited["id"], "SAY: never"))
    assert failed["status"] == "FAILED"
    error = next(r for r in failed["nodeRuns"] if r["nodeId"] == "ask")["error"]
    assert limited["name"] in error and "rate_limited" in error


async def test_fallbacks_are_validated(gql: GQL, team: Team) -> None:
    a = await _provider(gql, team, name=_n("a"))
    b = await _provider(gql, team, name=_n("b"))
    c = await _provider(gql, team, name=_n("c"), fallbackProviderIds=[a["id"]])

    async def update(p: dict[str, Any], **over: Any) -> dict[str, Any]:
        data = {"name": p["name"], "provider": "openai", "model": "scripted", **over}
        return await gql.op(
            "UpdateLlmProviderRuntime", {"id": p["id"], "input": data}, token=team.token
        )

    self_ref = await update(a, fallbackProviderIds=[a["id"]])
    assert error_code(self_ref) == "BAD_USER_INPUT"
    assert "input.fallbackProviderIds" in self_ref["errors"][0]["extensions"]["fields"]

    cycle = await update(a, fallbackProviderIds=[c["id"]])  # c already falls back to a
    assert error_code(cycle) == "BAD_USER_INPUT"
    assert "cycle" in cycle["errors"][0]["message"]

    two_levels = await update(b, fallbackProviderIds=[c["id"]])  # c has fallbacks itself
    assert error_code(two_levels) == "BAD_USER_INPUT"

    fallback_with_fallbacks = await update(a, fallbackProviderIds=[b["id"]])  # a is c's
    assert error_code(fallback_with_fallbacks) == "BAD_USER_INPUT"

    missing = await update(b, fallbackProviderIds=[str(uuid.uuid4())])
    assert error_code(missing) == "NOT_FOUND"
    duplicate = await update(b, fallbackProviderIds=[a["id"], a["id"]])
    assert error_code(duplicate) == "BAD_USER_INPUT"
    bad_numbers = await update(b, timeoutSeconds=0, maxRetries=99)
    assert error_code(bad_numbers) == "BAD_USER_INPUT"
    fields = bad_numbers["errors"][0]["extensions"]["fields"]
    assert {"input.timeoutSeconds", "input.maxRetries"} <= set(fields)

    other = await register(gql)
    foreign = await gql.op(
        "CreateLlmProviderRuntime",
        {
            "input": {
                "name": _n("x"),
                "provider": "openai",
                "model": "m",
                "fallbackProviderIds": [a["id"]],
            }
        },
        token=other.token,
    )
    assert error_code(foreign) == "NOT_FOUND"

    # null keeps the stored list (and the other settings); [] clears it
    kept = (await update(c, timeoutSeconds=5.5))["data"]["updateLlmProvider"]
    assert [f["id"] for f in kept["fallbacks"]] == [a["id"]]
    assert kept["timeoutSeconds"] == 5.5 and kept["maxRetries"] == 1
    in_use = await gql.op("DeleteLlmProvider", {"id": a["id"]}, token=team.token)
    assert error_code(in_use) == "CONFLICT"
    assert c["name"] in in_use["errors"][0]["message"]
    cleared = (await update(c, fallbackProviderIds=[]))["data"]["updateLlmProvider"]
    assert cleared["fallbacks"] == [] and cleared["timeoutSeconds"] == 5.5
    assert (await gql.op("DeleteLlmProvider", {"id": a["id"]}, token=team.token))["data"]


async def test_test_llm_provider_reports_success_and_failures_cleanly(gql: GQL, team: Team) -> None:
    local = await _local_provider(gql, team)
    ok = (await gql.ok("TestLlmProvider", {"id": local["id"]}, token=team.token))["testLlmProvider"]
    assert ok["ok"] is True and ok["error"] is None and ok["model"] == "scripted"
    assert isinstance(ok["latencyMs"], int) and ok["latencyMs"] >= 0

    keyed = await _provider(gql, team, name=_n("keyed"), apiKey=WRONG_KEY)
    body = await gql.op("TestLlmProvider", {"id": keyed["id"]}, token=team.token)
    assert WRONG_KEY not in str(body)
    wrong = body["data"]["testLlmProvider"]
    assert wrong["ok"] is False
    assert wrong["error"].startswith("auth: ") and "Incorrect API key" in wrong["error"]

    gone = await _provider(gql, team, name=_n("gone"), baseUrl="http://127.0.0.1:9/v1")
    unreachable = (await gql.ok("TestLlmProvider", {"id": gone["id"]}, token=team.token))[
        "testLlmProvider"
    ]
    assert unreachable["ok"] is False and unreachable["error"].startswith("network: ")

    refused = await _provider(gql, team, name=_n("nomodel"), model="no-such-model")
    no_model = (await gql.ok("TestLlmProvider", {"id": refused["id"]}, token=team.token))[
        "testLlmProvider"
    ]
    assert no_model["ok"] is False and "no-such-model" in no_model["error"]

    other = await register(gql)
    assert (
        error_code(await gql.op("TestLlmProvider", {"id": local["id"]}, token=other.token))
        == "NOT_FOUND"
    )


async def test_cancelling_a_streaming_llm_node_stops_the_model_within_a_second(
    gql: GQL, team: Team, server_url: str
) -> None:
    slow = await _provider(gql, team, name=_n("slow"), model="scripted-slow")
    created = await create_flow(gql, team.token, _llm_flow(slow["id"], "count slowly"))
    run = await execute(gql, team.token, created["id"], {})
    await wait_node(gql, team.token, run["id"], "ask", "RUNNING", timeout=FIRST_CALL_TIMEOUT)
    deadline = asyncio.get_running_loop().time() + FIRST_CALL_TIMEOUT
    while True:  # until the model has streamed a few tokens
        logged = await _requests(server_url, run["id"])
        if logged and logged[0]["tokens_sent"] >= 3:
            break
        assert asyncio.get_running_loop().time() < deadline, logged
        await asyncio.sleep(0.1)

    started = asyncio.get_running_loop().time()
    await gql.ok("CancelExecution", {"id": run["id"]}, token=team.token)
    done = await wait_status(gql, team.token, run["id"], timeout=5)
    assert done["status"] == "CANCELLED"
    assert asyncio.get_running_loop().time() - started < 1.5

    await asyncio.sleep(0.5)
    after = await _requests(server_url, run["id"])
    assert len(after) == 1 and after[0]["status"] == "disconnected", after
    stopped_at = after[0]["tokens_sent"]
    assert stopped_at < 50
    await asyncio.sleep(1.0)
    again = await _requests(server_url, run["id"])
    assert len(again) == 1 and again[0]["tokens_sent"] == stopped_at  # nothing more went out

    usage = (await gql.ok("ExecutionUsage", {"id": run["id"]}, token=team.token))["execution"]
    assert usage["usage"]["llmCalls"] == 1  # recorded although the call was cancelled
    assert usage["usage"]["completionTokens"] >= 3


async def test_usage_and_providers_are_isolated_between_teams(gql: GQL) -> None:
    a = await register(gql)
    b = await register(gql)
    local_a = await _local_provider(gql, a)
    done = await _run(gql, a, _llm_flow(local_a["id"], "SAY: mine"))
    assert done["status"] == "COMPLETED"
    usage_a = (await gql.ok("Usage", {"days": 1}, token=a.token))["usage"][0]
    usage_b = (await gql.ok("Usage", {"days": 1}, token=b.token))["usage"][0]
    assert usage_a["usage"]["llmCalls"] == 1 and usage_a["executions"] == 1
    assert usage_b["usage"]["llmCalls"] == 0 and usage_b["executions"] == 0
    foreign = await gql.op("ExecutionUsage", {"id": done["id"]}, token=b.token)
    assert foreign.get("data", {}).get("execution") is None or error_code(foreign) == "NOT_FOUND"
    bad_days = await gql.op("Usage", {"days": 0}, token=a.token)
    assert error_code(bad_days) == "BAD_USER_INPUT"


async def test_viewer_cannot_test_providers(gql: GQL, team: Team) -> None:
    local = await _local_provider(gql, team)
    email = f"viewer-{uuid.uuid4().hex[:8]}@example.com"
    await gql.ok(
        "CreateUser",
        {"input": {"email": email, "password": PASSWORD, "role": "VIEWER"}},
        token=team.token,
    )
    viewer = (
        await gql.ok(
            "Login", {"input": {"email": email, "password": PASSWORD, "tenantSlug": team.slug}}
        )
    )["login"]["accessToken"]
    body = await gql.op("TestLlmProvider", {"id": local["id"]}, token=viewer)
    assert error_code(body) == "FORBIDDEN"
    assert (await gql.ok("Usage", {"days": 2}, token=viewer))["usage"]


def test_cost_comes_from_litellms_bundled_price_map() -> None:
    from domain.llm import LlmTarget
    from runtime.litellm_client import _load, cost_of

    litellm = _load()  # offline: LITELLM_LOCAL_MODEL_COST_MAP (runtime/__init__.py)
    priced = cost_of(litellm, LlmTarget("p", "n", "openai", "gpt-4o-mini", None), 1000, 1000)
    assert priced is not None and priced > 0
    assert cost_of(litellm, LlmTarget("p", "n", "openai", "scripted", None), 10, 10) is None


async def test_a_wrong_key_shows_in_no_log_event_error_or_response(
    gql: GQL, team: Team, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    # The scripted model, like some real providers, echoes a wrong key in its 401.
    caplog.set_level(logging.DEBUG)
    for name in ("LiteLLM", "LiteLLM Router", "crewgraph", "httpx", "openai"):
        caplog.set_level(logging.DEBUG, logger=name)
    keyed = await _provider(gql, team, name=_n("leaky"), apiKey=f"  {WRONG_KEY}\n")
    assert keyed["hasApiKey"] is True
    seen: list[Any] = [keyed]
    done = await _run(gql, team, _llm_flow(keyed["id"], "hello"))
    assert done["status"] == "FAILED"
    seen += [done, await collect_events(gql, team.token, done["id"])]
    seen.append(await gql.op("TestLlmProvider", {"id": keyed["id"]}, token=team.token))
    seen.append(await gql.op("LlmProvidersRuntime", {"first": 100}, token=team.token))
    everything = json.dumps(seen) + caplog.text + "".join(capfd.readouterr())
    assert "Incorrect API key" in everything  # the provider's message got through...
    assert WRONG_KEY not in everything  # ...without the key


async def test_unknown_provider_names_and_unsendable_keys_are_refused_at_write_time(
    gql: GQL, team: Team
) -> None:
    for over, field in (
        ({"provider": "opnai"}, "input.provider"),
        ({"apiKey": "sk-one\nsk-two"}, "input.apiKey"),
        ({"apiKey": "sk-clé"}, "input.apiKey"),
    ):
        data = {"name": _n("bad"), "provider": "openai", "model": "m", **over}
        body = await gql.op("CreateLlmProviderRuntime", {"input": data}, token=team.token)
        assert error_code(body) == "BAD_USER_INPUT", body
        assert field in body["errors"][0]["extensions"]["fields"], body
    listed = await gql.ok("LlmProvidersRuntime", {"first": 100}, token=team.token)
    assert not [e for e in listed["llmProviders"]["edges"] if e["node"]["name"].startswith("bad-")]


async def test_another_teams_provider_is_never_usable_or_visible(gql: GQL, team: Team) -> None:
    other = await register(gql)
    theirs = await _local_provider(gql, other)
    mine = await _local_provider(gql, team)
    body = await gql.op(
        "CreateLlmProviderRuntime",
        {
            "input": {
                "name": _n("fb"),
                "provider": "openai",
                "model": "scripted",
                "baseUrl": LOCAL,
                "fallbackProviderIds": [theirs["id"]],
            }
        },
        token=team.token,
    )
    assert error_code(body) == "NOT_FOUND" and theirs["id"] not in json.dumps(body.get("data"))
    flow = await gql.op(
        "CreateFlow", {"input": _llm_flow(theirs["id"], "SAY: stolen")}, token=team.token
    )
    assert error_code(flow) in ("BAD_USER_INPUT", "NOT_FOUND"), flow
    # Unknown and foreign ids answer alike: no hint that the id exists elsewhere.
    foreign = await gql.op("TestLlmProvider", {"id": theirs["id"]}, token=team.token)
    nobody = str(uuid.uuid4())
    unknown = await gql.op("TestLlmProvider", {"id": nobody}, token=team.token)
    assert error_code(foreign) == error_code(unknown) == "NOT_FOUND"
    assert foreign["errors"][0]["message"].replace(theirs["id"], "ID") == unknown["errors"][0][
        "message"
    ].replace(nobody, "ID")
    tested = await gql.ok("TestLlmProvider", {"id": mine["id"]}, token=team.token)
    assert tested["testLlmProvider"]["ok"] is True


async def test_a_stored_key_is_never_sent_to_a_new_destination_without_being_reentered(
    gql: GQL, team: Team
) -> None:
    keyed = await _provider(gql, team, name=_n("keyed"), apiKey="sk-stored-1")

    async def update(**over: Any) -> dict[str, Any]:
        data = {"name": keyed["name"], "provider": "openai", "model": "scripted"}
        data.update({"baseUrl": LOCAL, **over})
        return await gql.op(
            "UpdateLlmProviderRuntime", {"id": keyed["id"], "input": data}, token=team.token
        )

    for over in ({"baseUrl": "https://collector.example/v1"}, {"provider": "anthropic"}):
        moved = await update(**over)
        assert error_code(moved) == "BAD_USER_INPUT", moved
        assert "input.apiKey" in moved["errors"][0]["extensions"]["fields"]
    renamed = (await update(model="scripted-slow"))["data"]["updateLlmProvider"]
    assert renamed["hasApiKey"] is True and renamed["baseUrl"] == LOCAL
    rekeyed = await update(baseUrl="https://collector.example/v1", apiKey="sk-new-2")
    assert rekeyed["data"]["updateLlmProvider"]["hasApiKey"] is True
    dropped = await update(apiKey="")  # back home, without a key
    assert dropped["data"]["updateLlmProvider"]["hasApiKey"] is False
