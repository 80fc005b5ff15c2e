"""Smoke test on a real model: SmolLM2-135M served by llama.cpp (`make local-model`).

A 135M model writes weak text, so these tests assert what the system does — the run
completes through the API, the answer is not empty, tokens stream as TOKEN events of the
right node, usage is recorded on the node, the execution and the tenant — never what the
text says. Timeouts are generous: two cores, shared.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.local_model import MODEL_ALIAS, RunningModel
from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL
from tests.support.flows import create_flow, execute, wait_status

USAGE = "llmCalls promptTokens completionTokens totalTokens costUsd"
RUN = f"""
query SmokeRun($id: ID!) {{
  execution(id: $id) {{
    id status error outputs
    usage {{ {USAGE} }}
    nodeRuns {{ nodeId status output error usage {{ {USAGE} }} }}
  }}
}}
"""
EVENTS = """
query SmokeEvents($id: ID!, $after: Int) {
  execution(id: $id) { events(afterSequence: $after, first: 100) { sequence type nodeId data } }
}
"""
TENANT_USAGE = f"query SmokeUsage {{ usage(days: 1) {{ date executions usage {{ {USAGE} }} }} }}"


async def _provider(gql: GQL, team: Team, model: RunningModel) -> dict[str, Any]:
    """The running llama.cpp server as an OpenAI-compatible provider, through the API."""
    return await b.provider(
        gql,
        team.token,
        name=f"smollm2-{uuid.uuid4().hex[:6]}",
        provider="openai",
        model=MODEL_ALIAS,
        baseUrl=model.base_url,
        apiKey=None,
        timeoutSeconds=120.0,
    )


async def _run(gql: GQL, team: Team, execution_id: str, timeout: float) -> dict[str, Any]:
    await wait_status(gql, team.token, execution_id, timeout=timeout)
    run: dict[str, Any] = (await gql.ok(RUN, {"id": execution_id}, token=team.token))["execution"]
    return run


async def _events(gql: GQL, team: Team, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = (await gql.ok(EVENTS, {"id": execution_id, "after": after}, token=team.token))[
            "execution"
        ]["events"]
        if not page:
            return events
        events += page
        after = page[-1]["sequence"]


def _tokens(events: list[dict[str, Any]], node_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "TOKEN" and e["nodeId"] == node_id]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value or "")


def _assert_usage(usage: dict[str, Any] | None, min_calls: int) -> None:
    assert usage is not None
    assert usage["llmCalls"] >= min_calls, usage
    assert usage["promptTokens"] > 0, usage
    assert usage["completionTokens"] > 0, usage
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert usage["costUsd"] is None  # a local model has no price


async def test_llm_node_answers(gql: GQL, team: Team, local_model: RunningModel) -> None:
    provider = await _provider(gql, team, local_model)
    flow = await create_flow(
        gql,
        team.token,
        {
            "name": b._name("smoke-llm"),
            "nodes": [
                {
                    "id": "in",
                    "kind": "INPUT",
                    "config": {
                        "schema": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                        }
                    },
                },
                {
                    "id": "ask",
                    "kind": "LLM",
                    "config": {
                        "providerId": provider["id"],
                        "system": "You are a friendly assistant. Answer in one sentence.",
                        "prompt": "Say hello to {{ inputs.name }}.",
                        "temperature": 0,
                        "maxTokens": 32,
                    },
                },
                {"id": "out", "kind": "OUTPUT", "config": {"value": "{{ nodes.ask.output }}"}},
            ],
            "edges": [{"source": "in", "target": "ask"}, {"source": "ask", "target": "out"}],
        },
    )
    started = await execute(gql, team.token, flow["id"], {"name": "Ada"})
    run = await _run(gql, team, started["id"], timeout=180)
    assert run["status"] == "COMPLETED", run
    nodes = {n["nodeId"]: n for n in run["nodeRuns"]}
    answer = _text(nodes["ask"]["output"])
    assert answer.strip(), run
    assert run["outputs"] == {"out": nodes["ask"]["output"]}

    tokens = _tokens(await _events(gql, team, started["id"]), "ask")
    assert tokens, "the LLM node streamed no TOKEN events"
    assert [t["data"]["index"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["data"]["delta"] for t in tokens).strip() == answer.strip()

    _assert_usage(nodes["ask"]["usage"], 1)
    assert nodes["ask"]["usage"]["llmCalls"] == 1
    assert nodes["ask"]["usage"]["completionTokens"] <= 32  # maxTokens reached the model
    _assert_usage(run["usage"], 1)


async def test_two_agent_crew_answers(gql: GQL, team: Team, local_model: RunningModel) -> None:
    provider = await _provider(gql, team, local_model)
    agents = [
        await b.agent(
            gql,
            team.token,
            role=role,
            goal=goal,
            backstory="You answer briefly.",
            llmProviderId=provider["id"],
            maxIterations=2,
            temperature=0,
        )
        for role, goal in [
            ("Writer", "Write one short sentence about a topic"),
            ("Editor", "Shorten a sentence"),
        ]
    ]
    crew = await b.crew(
        gql,
        team.token,
        [a["id"] for a in agents],
        tasks=[
            {
                "description": "Write one short sentence about {topic}.",
                "expectedOutput": "One sentence.",
                "agentId": agents[0]["id"],
            },
            {
                "description": "Rewrite the sentence you are given in fewer words.",
                "expectedOutput": "One short sentence.",
                "agentId": agents[1]["id"],
            },
        ],
    )
    started = (
        await gql.ok(
            "TestCrew", {"id": crew["id"], "inputs": {"topic": "the sea"}}, token=team.token
        )
    )["testCrew"]
    run = await _run(gql, team, started["id"], timeout=300)
    assert run["status"] == "COMPLETED", run
    nodes = {n["nodeId"]: n for n in run["nodeRuns"]}
    assert _text(nodes["crew"]["output"]).strip(), run

    events = await _events(gql, team, started["id"])
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert _tokens(events, "crew"), "the crew streamed no TOKEN events"
    # Both agents worked, and their steps are attributed to them.
    roles = {e["data"].get("agent") for e in events if e["type"] == "LOG"} - {None}
    assert roles == {"Writer", "Editor"}, roles
    # One LLM call per agent at least, on the node and the execution.
    _assert_usage(nodes["crew"]["usage"], 2)
    _assert_usage(run["usage"], 2)

    days = (await gql.ok(TENANT_USAGE, token=team.token))["usage"]
    assert days, "no usage recorded for the tenant today"
    assert days[0]["usage"]["llmCalls"] >= run["usage"]["llmCalls"]
    assert days[0]["executions"] >= 1
