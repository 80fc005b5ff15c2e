"""AGENT and CREW nodes and testCrew through the whole API path:
GraphQL → engine → CrewAI (in a thread) → our BaseLLM → LlmService → LiteLLM → real HTTP →
the server's scripted model. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx

from tests.conftest import Team, register
from tests.support import builders as b
from tests.support.client import GQL, error_code
from tests.support.flows import collect_events, create_flow, execute, wait_status

LOCAL = "crewgraph:local"
# The first AGENT / CREW node of a test session imports CrewAI (10-30 s on a busy machine).
FIRST_RUN_TIMEOUT = 150.0


def _n(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _provider(gql: GQL, team: Team, model: str = "scripted") -> str:
    data = {"name": _n("llm"), "provider": "openai", "model": model, "baseUrl": LOCAL}
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=team.token)
    return str(body["createLlmProvider"]["id"])


async def _agent(gql: GQL, team: Team, provider_id: str, role: str, **over: Any) -> str:
    agent = await b.agent(
        gql,
        team.token,
        role=role,
        goal=f"Do the work of a {role}",
        backstory="Scripted for tests",
        llmProviderId=provider_id,
        **over,
    )
    return str(agent["id"])


async def _crew(gql: GQL, team: Team, tasks: list[tuple[str, str]], **over: Any) -> str:
    """A sequential crew; `tasks` = [(agent id, description)]."""
    agent_ids = list(dict.fromkeys(a for a, _ in tasks))
    crew = await b.crew(
        gql,
        team.token,
        agent_ids,
        tasks=[
            {"description": d, "expectedOutput": "A short text", "agentId": a} for a, d in tasks
        ],
        **over,
    )
    return str(crew["id"])


async def _usage(gql: GQL, team: Team, execution_id: str) -> dict[str, Any]:
    body = await gql.ok("ExecutionUsage", {"id": execution_id}, token=team.token)
    execution: dict[str, Any] = body["execution"]
    return execution


async def _requests(server_url: str, run_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{server_url}/local-llm/v1/_requests", params={"tag": run_id})
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["requests"]
    return found


async def _test_crew(gql: GQL, team: Team, crew_id: str, inputs: dict[str, Any]) -> str:
    body = await gql.ok("TestCrew", {"id": crew_id, "inputs": inputs}, token=team.token)
    return str(body["testCrew"]["id"])


def _by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


def _completed_at(events: list[dict[str, Any]], node_id: str) -> int:
    return next(
        i for i, e in enumerate(events) if e["type"] == "NODE_COMPLETED" and e["nodeId"] == node_id
    )


def _agent_flow(agent_id: str, task: str) -> dict[str, Any]:
    return {
        "name": _n("agent-flow"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "writer", "kind": "AGENT", "config": {"agentId": agent_id, "task": task}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "writer"}, {"source": "writer", "target": "out"}],
    }


async def test_agent_node_answers_streams_tokens_and_records_usage(
    gql: GQL, team: Team, server_url: str
) -> None:
    provider = await _provider(gql, team)
    agent = await _agent(gql, team, provider, "Honey Expert")
    flow = await create_flow(
        gql, team.token, _agent_flow(agent, "Explain {{ inputs.topic }}. SAY: Bees make honey")
    )
    run = await execute(gql, team.token, flow["id"], {"topic": "bees"})
    done = await wait_status(gql, team.token, run["id"], timeout=FIRST_RUN_TIMEOUT)
    assert done["status"] == "COMPLETED", done
    assert done["outputs"] == {"out": "Bees make honey"}

    events = await collect_events(gql, team.token, run["id"])
    tokens = _by_type(events, "TOKEN")
    assert tokens and {e["nodeId"] for e in tokens} == {"writer"}
    assert "".join(e["data"]["delta"] for e in tokens).strip() == "Bees make honey"
    assert [e["data"]["index"] for e in tokens] == list(range(len(tokens)))
    logs = [e for e in _by_type(events, "LOG") if e["data"].get("source") == "crewai"]
    assert logs and {e["nodeId"] for e in logs} == {"writer"}
    started = next(e for e in logs if e["data"]["event"] == "agent_execution_started")
    assert started["data"]["agent"] == "Honey Expert"
    assert "Explain bees" in started["data"]["task"]
    # Everything of the node is recorded before the node completes.
    done_at = _completed_at(events, "writer")
    assert all(events.index(e) < done_at for e in tokens + logs)

    execution = await _usage(gql, team, run["id"])
    node_usage = {r["nodeId"]: r["usage"] for r in execution["nodeRuns"]}["writer"]
    assert node_usage["llmCalls"] == 1 and node_usage["completionTokens"] == 3
    assert execution["usage"] == node_usage
    logged = await _requests(server_url, run["id"])
    assert [(r["model"], r["node"], r["status"]) for r in logged] == [
        ("scripted", "writer", "completed")
    ]


async def test_test_crew_runs_a_sequential_crew_with_inputs_and_attributed_events(
    gql: GQL, team: Team
) -> None:
    provider = await _provider(gql, team)
    researcher = await _agent(gql, team, provider, "Researcher")
    writer = await _agent(gql, team, provider, "Writer")
    crew = await _crew(
        gql,
        team,
        [(researcher, "Research {topic}. SAY: notes on {topic}"), (writer, "Write about {topic}")],
    )
    run_id = await _test_crew(gql, team, crew, {"topic": "tea"})
    done = await wait_status(gql, team.token, run_id, timeout=FIRST_RUN_TIMEOUT)
    assert done["status"] == "COMPLETED", done
    assert done["crew"]["id"] == crew
    assert done["outputs"] == {"output": "Scripted reply: Write about tea"}

    events = await collect_events(gql, team.token, run_id)
    tokens = _by_type(events, "TOKEN")
    assert {e["nodeId"] for e in tokens} == {"crew"}
    streamed = "".join(e["data"]["delta"] for e in tokens)
    assert "notes on tea" in streamed and "Scripted reply: Write about tea" in streamed
    logs = [e for e in _by_type(events, "LOG") if e["data"].get("source") == "crewai"]
    finished = [
        (e["data"]["agent"], e["data"]["output"])
        for e in logs
        if e["data"]["event"] == "agent_execution_completed"
    ]
    assert finished == [
        ("Researcher", "notes on tea"),
        ("Writer", "Scripted reply: Write about tea"),
    ]
    tasks = [e["data"]["task"] for e in logs if e["data"]["event"] == "task_started"]
    assert tasks == ["Research tea. SAY: notes on tea", "Write about tea"]
    done_at = _completed_at(events, "crew")
    assert all(events.index(e) < done_at for e in tokens + logs)

    usage = (await _usage(gql, team, run_id))["usage"]
    assert usage["llmCalls"] == 2


async def test_two_crews_at_once_keep_their_events_apart(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    other = await register(gql)
    other_provider = await _provider(gql, other)
    crews = []
    for who, pid, word in ((team, provider, "alpha"), (other, other_provider, "omega")):
        first = await _agent(gql, who, pid, f"First {word}")
        second = await _agent(gql, who, pid, f"Second {word}")
        crews.append(
            (
                who,
                word,
                await _crew(
                    gql,
                    who,
                    [(first, f"Start. SAY: {word} one"), (second, f"Go on. SAY: {word} two")],
                ),
            )
        )
    runs = await asyncio.gather(*(_test_crew(gql, who, c, {}) for who, _, c in crews))
    for (who, word, _), run_id in zip(crews, runs, strict=True):
        done = await wait_status(gql, who.token, run_id, timeout=FIRST_RUN_TIMEOUT)
        assert done["status"] == "COMPLETED", done
        assert done["outputs"] == {"output": f"{word} two"}
        events = await collect_events(gql, who.token, run_id)
        streamed = "".join(e["data"]["delta"] for e in _by_type(events, "TOKEN"))
        assert streamed == f"{word} one{word} two", streamed  # two replies, back to back
        roles = {
            e["data"]["agent"]
            for e in _by_type(events, "LOG")
            if e["data"].get("source") == "crewai" and "agent" in e["data"]
        }
        assert roles == {f"First {word}", f"Second {word}"}


async def test_cancel_mid_crew_stops_within_a_second_and_no_request_follows(
    gql: GQL, team: Team, server_url: str
) -> None:
    slow = await _provider(gql, team, model="scripted-slow")
    first = await _agent(gql, team, slow, "Slow thinker")
    second = await _agent(gql, team, slow, "Never reached")
    crew = await _crew(gql, team, [(first, "Think slowly"), (second, "Then write")])
    run_id = await _test_crew(gql, team, crew, {})

    deadline = time.monotonic() + FIRST_RUN_TIMEOUT
    while True:  # wait until the model is streaming its (10 s) reply
        logged = await _requests(server_url, run_id)
        if logged and logged[0]["tokens_sent"] >= 2:
            break
        assert time.monotonic() < deadline, logged
        await asyncio.sleep(0.1)

    asked = time.monotonic()
    await gql.ok("CancelExecution", {"id": run_id}, token=team.token)
    done = await wait_status(gql, team.token, run_id, timeout=5)
    assert done["status"] == "CANCELLED", done
    assert time.monotonic() - asked < 1.0
    assert {r["nodeId"]: r for r in done["nodeRuns"]}["crew"]["status"] == "CANCELLED"

    await asyncio.sleep(2.5)  # time for a next agent step, were any still to be taken
    logged = await _requests(server_url, run_id)
    assert len(logged) == 1, logged
    assert logged[0]["status"] == "disconnected"
    assert logged[0]["tokens_sent"] < 50
    # The cancelled run's usage is still recorded (the request was made).
    assert (await _usage(gql, team, run_id))["usage"]["llmCalls"] == 1


DOUBLE = "def run(input):\n    return {'double': input['n'] * 2}\n"


async def test_agent_uses_a_stored_sandbox_tool(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    tool = await b.tool(
        gql,
        team.token,
        name=_n("doubler"),
        description="Doubles n",
        config={"code": DOUBLE},
        inputSchema={
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"],
        },
    )
    agent = await _agent(gql, team, provider, "Calculator", toolIds=[tool["id"]])
    flow = await create_flow(
        gql,
        team.token,
        _agent_flow(agent, "Double it: use tool " + tool["name"] + ' with {"n": 21}'),
    )
    run = await execute(gql, team.token, flow["id"], {})
    done = await wait_status(gql, team.token, run["id"], timeout=FIRST_RUN_TIMEOUT)
    assert done["status"] == "COMPLETED", done
    assert '"double": 42' in done["outputs"]["out"], done["outputs"]

    events = await collect_events(gql, team.token, run["id"])
    tool_logs = [
        e["data"]
        for e in _by_type(events, "LOG")
        if e["data"].get("event") == "tool_usage_finished"
    ]
    assert len(tool_logs) == 1, tool_logs
    assert tool_logs[0]["agent"] == "Calculator"
    assert json.loads(tool_logs[0]["output"]) == {"double": 42}
    assert "21" in tool_logs[0]["input"]
    usage = (await _usage(gql, team, run["id"]))["usage"]
    assert usage["llmCalls"] == 2  # the tool call, then the answer


async def test_agent_reads_the_execution_workspace(gql: GQL, team: Team, container: Any) -> None:
    provider = await _provider(gql, team)
    writer = await b.tool(
        gql, team.token, kind="BUILTIN", config={"builtin": "file_write"}, inputSchema=None
    )
    reader = await b.tool(
        gql,
        team.token,
        name=_n("reader"),
        kind="BUILTIN",
        config={"builtin": "file_read"},
        inputSchema=None,
    )
    lister = await b.tool(
        gql,
        team.token,
        name=_n("lister"),
        kind="BUILTIN",
        config={"builtin": "directory_read"},
        inputSchema=None,
    )
    agent = await _agent(gql, team, provider, "Reader", toolIds=[lister["id"], reader["id"]])
    flow = {
        "name": _n("workspace"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {
                "id": "save",
                "kind": "TOOL",
                "config": {
                    "toolId": writer["id"],
                    "input": {"path": "notes/a.txt", "content": "the secret is 7"},
                },
            },
            {
                "id": "read",
                "kind": "AGENT",
                "config": {
                    "agentId": agent,
                    "task": f'First use tool {lister["name"]} with {{"path": "."}}, '
                    f"then use tool {reader['name']}"
                    ' with {"path": "notes/a.txt"}',
                },
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "save"},
            {"source": "save", "target": "read"},
            {"source": "read", "target": "out"},
        ],
    }
    created = await create_flow(gql, team.token, flow)
    run = await execute(gql, team.token, created["id"], {})
    done = await wait_status(gql, team.token, run["id"], timeout=FIRST_RUN_TIMEOUT)
    assert done["status"] == "COMPLETED", done
    answer = done["outputs"]["out"]
    assert "- notes/a.txt" in answer and "the secret is 7" in answer, answer
    # The workspace existed during the run and is removed once the run has ended.
    workspace = container.settings.data_dir.resolve() / "scratch" / team.tenant_id / run["id"]
    deadline = time.monotonic() + 10
    while workspace.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not workspace.exists(), workspace


async def test_tools_needing_an_outside_service_are_refused_at_write_time(
    gql: GQL, team: Team
) -> None:
    body = await gql.op(
        "CreateTool",
        {
            "input": {
                "name": _n("search"),
                "description": "search the web",
                "kind": "BUILTIN",
                "config": {"builtin": "web_search"},
            }
        },
        token=team.token,
    )
    assert error_code(body) == "BAD_USER_INPUT"
    problem = body["errors"][0]["extensions"]["fields"]["input.config.builtin"]
    assert "SERPER_API_KEY" in problem and "not configured" in problem


async def test_agent_without_provider_fails_the_node_cleanly(gql: GQL, team: Team) -> None:
    agent = await b.agent(gql, team.token, role="Lost")
    flow = await create_flow(gql, team.token, _agent_flow(agent["id"], "anything"))
    run = await execute(gql, team.token, flow["id"], {})
    done = await wait_status(gql, team.token, run["id"], timeout=30)
    assert done["status"] == "FAILED"
    node = {r["nodeId"]: r for r in done["nodeRuns"]}["writer"]
    assert node["status"] == "FAILED" and "has no LLM provider" in node["error"]


async def test_crew_bad_input_is_refused_at_write_time(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    inside = await _agent(gql, team, provider, "Inside")
    outside = await _agent(gql, team, provider, "Outside")
    body = await gql.op(
        "CreateCrew",
        {
            "input": {
                "name": _n("crew"),
                "agentIds": [inside],
                "tasks": [{"description": "x", "expectedOutput": "y", "agentId": outside}],
            }
        },
        token=team.token,
    )
    assert error_code(body) == "BAD_USER_INPUT"
    missing = str(uuid.uuid4())
    body = await gql.op("CreateFlow", {"input": _agent_flow(missing, "task")}, token=team.token)
    assert error_code(body) in ("BAD_USER_INPUT", "NOT_FOUND"), body
    body = await gql.op("TestCrew", {"id": missing, "inputs": {}}, token=team.token)
    assert error_code(body) == "NOT_FOUND"


async def test_agent_crew_and_llm_nodes_in_one_flow(gql: GQL, team: Team) -> None:
    """INPUT → AGENT → CREW → LLM → OUTPUT on the scripted model, usage everywhere."""
    provider = await _provider(gql, team)
    analyst = await _agent(gql, team, provider, "Analyst")
    editor = await _agent(gql, team, provider, "Editor")
    crew = await _crew(gql, team, [(editor, "Edit this: {draft}. SAY: edited draft")])
    flow = {
        "name": _n("ai-flow"),
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {
                "id": "analyse",
                "kind": "AGENT",
                "config": {"agentId": analyst, "task": "SAY: draft about {{ inputs.topic }}"},
            },
            {
                "id": "team",
                "kind": "CREW",
                "config": {"crewId": crew, "inputs": {"draft": "{{ nodes.analyse.output }}"}},
            },
            {
                "id": "polish",
                "kind": "LLM",
                "config": {
                    "providerId": provider,
                    "prompt": "SAY: final {{ nodes.team.output }}",
                },
            },
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [
            {"source": "in", "target": "analyse"},
            {"source": "analyse", "target": "team"},
            {"source": "team", "target": "polish"},
            {"source": "polish", "target": "out"},
        ],
    }
    created = await create_flow(gql, team.token, flow)
    run = await execute(gql, team.token, created["id"], {"topic": "tea"})
    done = await wait_status(gql, team.token, run["id"], timeout=FIRST_RUN_TIMEOUT)
    assert done["status"] == "COMPLETED", done
    outputs = {r["nodeId"]: r["output"] for r in done["nodeRuns"]}
    assert outputs["analyse"] == "draft about tea"
    assert outputs["team"] == "edited draft"
    assert done["outputs"] == {"out": "final edited draft"}

    events = await collect_events(gql, team.token, run["id"])
    streamed: dict[str, str] = {}
    for e in _by_type(events, "TOKEN"):
        streamed[e["nodeId"]] = streamed.get(e["nodeId"], "") + e["data"]["delta"]
    assert {k: v.strip() for k, v in streamed.items()} == {
        "analyse": "draft about tea",
        "team": "edited draft",
        "polish": "final edited draft",
    }
    execution = await _usage(gql, team, run["id"])
    per_node = {r["nodeId"]: r["usage"] for r in execution["nodeRuns"]}
    assert [per_node[n]["llmCalls"] for n in ("analyse", "team", "polish")] == [1, 1, 1]
    assert execution["usage"]["llmCalls"] == 3
    days = (await gql.ok("Usage", {"days": 1}, token=team.token))["usage"]
    assert days[0]["usage"]["llmCalls"] >= 3


async def test_hierarchical_crews_run_under_a_manager_provider_or_agent(
    gql: GQL, team: Team
) -> None:
    provider = await _provider(gql, team)
    worker = await _agent(gql, team, provider, "Worker")
    boss = await _agent(gql, team, provider, "Boss")
    by_provider = await _crew(
        gql,
        team,
        [(worker, "Plan the day. SAY: planned by the manager")],
        process="hierarchical",
        managerLlmProviderId=provider,
    )
    by_agent = await _crew(
        gql,
        team,
        [(worker, "Plan the week. SAY: planned by the boss")],
        process="hierarchical",
        managerAgentId=boss,
    )
    for crew, answer, manager in (
        (by_provider, "planned by the manager", None),
        (by_agent, "planned by the boss", "Boss"),
    ):
        run_id = await _test_crew(gql, team, crew, {})
        done = await wait_status(gql, team.token, run_id, timeout=FIRST_RUN_TIMEOUT)
        assert done["status"] == "COMPLETED", done
        assert done["outputs"] == {"output": answer}
        events = await collect_events(gql, team.token, run_id)
        roles = {
            e["data"].get("agent")
            for e in _by_type(events, "LOG")
            if e["data"].get("event") == "agent_execution_started"
        }
        if manager:
            assert manager in roles, roles
        assert (await _usage(gql, team, run_id))["usage"]["llmCalls"] >= 1
