"""Flow documents without storage: building, reading and refusing documents."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.agents import Agent, AgentOptions
from domain.crews import Crew, CrewTask
from domain.errors import BadUserInput, LimitExceeded
from domain.flow_documents import (
    FORMAT,
    MAX_DEPTH,
    build_document,
    check_size,
    parse_document,
    renamed,
    shipped_templates,
)
from domain.flows.model import FlowEdge, FlowNode
from domain.flows.service import Flow
from domain.providers import LlmProvider
from domain.tools import Tool, ToolKind
from domain.validation import MAX_NAME

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _id() -> str:
    return str(uuid.uuid4())


def _world() -> tuple[Flow, list[LlmProvider], list[Tool], list[Agent], list[Crew]]:
    provider = LlmProvider(
        _id(), "Team GPT", "openai", "gpt-4o", "https://llm.internal", None, 1, NOW, NOW
    )
    tool = Tool(
        _id(),
        "Echo",
        "echoes",
        ToolKind.CUSTOM_PYTHON,
        {"code": "def run(x):\n    return x\n"},
        None,
        1,
        NOW,
        NOW,
    )
    zed = Agent(_id(), "Zed", "r", "g", "b", provider.id, [tool.id], AgentOptions(), 1, NOW, NOW)
    amy = Agent(_id(), "Amy", "r", "g", "b", None, [], AgentOptions(max_iterations=3), 1, NOW, NOW)
    crew = Crew(
        _id(),
        "Crew",
        "sequential",
        [zed.id, amy.id],
        [CrewTask("d", "e", zed.id), CrewTask("d2", "e2", amy.id)],
        None,
        None,
        1,
        NOW,
        NOW,
    )
    flow = Flow(
        _id(),
        "Flow",
        "demo",
        3,
        (
            FlowNode("in", "INPUT"),
            FlowNode("a", "AGENT", "Ask", {"agentId": zed.id, "task": "do {{ inputs.x }}"}),
            FlowNode("c", "CREW", None, {"crewId": crew.id}),
            FlowNode(
                "t", "TOOL", None, {"toolId": tool.id, "input": {"v": "{{ nodes.a.output }}"}}
            ),
            FlowNode("l", "LLM", None, {"providerId": provider.id, "prompt": "hi"}),
            FlowNode("out", "OUTPUT"),
        ),
        (
            FlowEdge("in", "a"),
            FlowEdge("a", "c"),
            FlowEdge("c", "t"),
            FlowEdge("t", "l"),
            FlowEdge("l", "out"),
        ),
        NOW,
        NOW,
    )
    return flow, [provider], [tool], [zed, amy], [crew]


def _doc() -> dict[str, Any]:
    return build_document(*_world()).to_json()


def _fields(exc: pytest.ExceptionInfo[BadUserInput]) -> dict[str, str]:
    return exc.value.fields


def test_export_uses_document_ids_sorted_by_name_and_no_database_ids() -> None:
    flow, providers, tools, agents, crews = _world()
    doc = build_document(flow, providers, tools, agents, crews).to_json()
    assert doc["format"] == FORMAT
    assert [(a["id"], a["name"]) for a in doc["agents"]] == [("agent-1", "Amy"), ("agent-2", "Zed")]
    assert doc["agents"][1]["toolIds"] == ["tool-1"]
    assert doc["agents"][1]["llmProviderId"] == "provider-1"
    assert doc["crews"][0]["agentIds"] == ["agent-2", "agent-1"]
    assert doc["providers"] == [{"id": "provider-1", "name": "Team GPT", "model": "gpt-4o"}]
    nodes = {n["id"]: n["config"] for n in doc["flow"]["nodes"]}
    assert nodes["a"]["agentId"] == "agent-2" and nodes["c"]["crewId"] == "crew-1"
    text = repr(doc)
    for entity in [flow, *providers, *tools, *agents, *crews]:
        assert entity.id not in text
    assert "llm.internal" not in text and "openai" not in text


def test_export_is_deterministic_whatever_the_input_order() -> None:
    flow, providers, tools, agents, crews = _world()
    one = build_document(flow, providers, tools, agents, crews).to_json()
    two = build_document(flow, providers, tools, list(reversed(agents)), crews).to_json()
    assert one == two


def test_a_document_reads_back_to_the_same_document() -> None:
    doc = _doc()
    assert parse_document(copy.deepcopy(doc)).to_json() == doc


def test_templates_are_canonical_documents_on_the_local_provider() -> None:
    templates = shipped_templates()
    assert len(templates) >= 3
    assert len({t.id for t in templates}) == len(templates)
    for t in templates:
        assert t.document["format"] == FORMAT
        assert [p["name"] for p in t.document["providers"]] == ["Local (scripted)"]
        assert parse_document(copy.deepcopy(t.document)).to_json() == t.document
    kinds = {n["kind"] for t in templates for n in t.document["flow"]["nodes"]}
    assert {"CREW", "CONDITION", "LLM", "AGENT", "TOOL"} <= kinds


@pytest.mark.parametrize("fmt", [None, "crewgraph.flow/v2", 1, "x" * 1000])
def test_unknown_format_is_refused(fmt: object) -> None:
    doc = _doc()
    doc["format"] = fmt
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "document.format" in _fields(exc)
    assert "x" * 200 not in exc.value.message


def test_not_an_object_is_refused() -> None:
    for raw in (None, [], "doc", 3):
        with pytest.raises(BadUserInput):
            parse_document(raw)


def test_too_large_is_refused_before_reading() -> None:
    doc = _doc()
    doc["flow"]["description"] = "x" * 2_000_000
    with pytest.raises(LimitExceeded):
        parse_document(doc)
    # The walk stops at the limit: a huge list costs no more than the limit.
    with pytest.raises(LimitExceeded):
        check_size({"flow": {"nodes": [{"id": "n"}] * 10_000_000}}, 100_000)


def test_deep_nesting_is_refused() -> None:
    deep: Any = {}
    for _ in range(MAX_DEPTH + 5):
        deep = {"a": deep}
    doc = _doc()
    doc["flow"]["nodes"][1]["config"]["extra"] = deep
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "nested deeper" in exc.value.message


def test_too_many_nodes_is_limit_exceeded() -> None:
    doc = _doc()
    doc["flow"]["nodes"] += [{"id": f"o{i}", "kind": "OUTPUT"} for i in range(20)]
    with pytest.raises(LimitExceeded) as exc:
        parse_document(doc, max_nodes=10)
    assert exc.value.extensions["limit"] == "maxNodesPerFlow"


def test_a_cycle_is_refused() -> None:
    doc = _doc()
    doc["flow"]["edges"].append({"source": "t", "target": "a", "branch": None})
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "cycle" in exc.value.message


def test_repeated_names_and_ids_are_refused() -> None:
    doc = _doc()
    doc["agents"][1]["name"] = "Amy"
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "document.agents[1].name" in _fields(exc)

    doc = _doc()
    doc["agents"][1]["id"] = "agent-1"
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "document.agents[1].id" in _fields(exc)


def test_wrong_types_name_their_paths() -> None:
    doc = _doc()
    doc["agents"][0]["maxIterations"] = "lots"
    doc["agents"][1]["verbose"] = 1
    doc["tools"][0]["kind"] = "SHELL"
    doc["crews"][0]["tasks"] = "all"
    doc["flow"]["name"] = 5
    doc["flow"]["nodes"][0]["config"] = []
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    fields = _fields(exc)
    for path in (
        "document.agents[0].maxIterations",
        "document.agents[1].verbose",
        "document.tools[0].kind",
        "document.crews[0].tasks",
        "document.flow.name",
        "document.flow.nodes[0].config",
    ):
        assert path in fields, (path, fields)


def test_unknown_fields_are_refused() -> None:
    doc = _doc()
    doc["agents"][0]["apiKey"] = "sk-..."
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "document.agents[0].apiKey" in _fields(exc)


def test_bad_tool_code_is_refused_and_never_run() -> None:
    doc = _doc()
    doc["tools"][0]["config"] = {"code": "import os\nos.system('rm -rf /')\ndef run(:"}
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "syntax error" in _fields(exc)["document.tools[0].config.code"]


def test_docker_images_follow_the_allow_list() -> None:
    doc = _doc()
    doc["tools"][0]["kind"] = "DOCKER"
    doc["tools"][0]["config"] = {"image": "evil/miner:latest", "command": ["run"]}
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc, allowed_images={"python:3.12-slim"})
    assert "document.tools[0].config.image" in _fields(exc)


def test_database_ids_are_not_references() -> None:
    """A node, agent or crew naming anything but an entry of the document is refused:
    document ids never reach the database (another tenant's rows included)."""
    foreign = str(uuid.uuid4())
    for mutate, path in (
        (
            lambda d: d["flow"]["nodes"][1]["config"].__setitem__("agentId", foreign),
            "document.flow.nodes[1].config.agentId",
        ),
        (
            lambda d: d["flow"]["nodes"][5]["config"].__setitem__("crewId", foreign),
            "document.flow.nodes[5].config.crewId",
        ),
        (
            lambda d: d["agents"][1].__setitem__("toolIds", [foreign]),
            "document.agents[1].toolIds[0]",
        ),
        (
            lambda d: d["agents"][1].__setitem__("llmProviderId", foreign),
            "document.agents[1].llmProviderId",
        ),
        (
            lambda d: d["crews"][0]["tasks"][0].__setitem__("agentId", foreign),
            "document.crews[0].tasks[0].agentId",
        ),
    ):
        doc = _doc()
        mutate(doc)
        with pytest.raises(BadUserInput) as exc:
            parse_document(doc)
        assert path in _fields(exc), (path, _fields(exc))


def test_entries_the_flow_does_not_use_are_refused() -> None:
    doc = _doc()
    doc["tools"].append(
        {
            "id": "tool-9",
            "name": "Spare",
            "description": "spare",
            "kind": "BUILTIN",
            "config": {"builtin": "file_read"},
        }
    )
    with pytest.raises(BadUserInput) as exc:
        parse_document(doc)
    assert "not used by the flow" in _fields(exc)["document.tools[1]"]


def test_renamed_names_fit_the_name_limit() -> None:
    assert renamed("Writer", 2) == "Writer (2)"
    long = renamed("x" * MAX_NAME, 12)
    assert len(long) == MAX_NAME and long.endswith(" (12)")


def test_a_crew_manager_and_its_provider_travel_with_the_crew() -> None:
    flow, providers, tools, agents, crews = _world()
    boss = Agent(_id(), "Boss", "r", "g", "b", None, [], AgentOptions(), 1, NOW, NOW)
    crew = crews[0]
    crew.process, crew.manager_agent_id = "hierarchical", boss.id
    crew.manager_llm_provider_id = providers[0].id
    doc = build_document(flow, providers, tools, [*agents, boss], crews).to_json()
    assert doc["crews"][0]["managerAgentId"] == "agent-2"  # Amy, Boss, Zed
    assert doc["crews"][0]["managerLlmProviderId"] == "provider-1"
    assert parse_document(copy.deepcopy(doc)).to_json() == doc
    # Without its manager among the entries, the crew names nothing of the document.
    broken = copy.deepcopy(doc)
    broken["agents"] = [a for a in broken["agents"] if a["name"] != "Boss"]
    with pytest.raises(BadUserInput) as exc:
        parse_document(broken)
    assert "document.crews[0].managerAgentId" in _fields(exc)
