"""Flow graph validation (domain/flows/graph.py): every rule fails and passes."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from domain.errors import BadUserInput
from domain.flows.graph import (
    MAX_NODE_ID_LENGTH,
    MAX_REPORTED_ERRORS,
    FlowValidation,
    ReferenceIndex,
    ancestors,
    descendants,
    predecessors,
    successors,
    validate_flow,
)
from domain.flows.model import FlowEdge, FlowGraph, FlowNode, NodeKind

REFS = ReferenceIndex(
    agent_ids=frozenset({"agent-1"}),
    crew_ids=frozenset({"crew-1"}),
    tool_ids=frozenset({"tool-1"}),
    llm_provider_ids=frozenset({"prov-1"}),
)

DEFAULT_CONFIG: dict[str, dict[str, Any]] = {
    "INPUT": {},
    "OUTPUT": {},
    "CONDITION": {"expression": "inputs.score > 5"},
    "LLM": {"providerId": "prov-1", "prompt": "Hello {{ inputs.name }}"},
    "AGENT": {"agentId": "agent-1", "task": "Do it"},
    "CREW": {"crewId": "crew-1"},
    "TOOL": {"toolId": "tool-1"},
}


def node(node_id: Any, kind: Any = "LLM", **config: Any) -> FlowNode:
    base = dict(DEFAULT_CONFIG.get(kind, {})) if isinstance(kind, str) else {}
    base.update(config)
    return FlowNode(node_id, kind, name=None, config=base)


def edge(source: Any, target: Any, branch: str | None = None) -> FlowEdge:
    return FlowEdge(source, target, branch)


def graph(nodes: list[FlowNode], edges: list[FlowEdge]) -> FlowGraph:
    return FlowGraph(tuple(nodes), tuple(edges))


def pipeline(*middle: FlowNode) -> FlowGraph:
    """in -> middle[0] -> middle[1] ... -> out."""
    nodes = [node("in", "INPUT"), *middle, node("out", "OUTPUT")]
    ids = [n.id for n in nodes]
    return graph(nodes, [edge(a, b) for a, b in itertools.pairwise(ids)])


def check(g: FlowGraph, refs: ReferenceIndex | None = REFS, **kwargs: Any) -> FlowValidation:
    return validate_flow(g, refs, **kwargs)


def assert_valid(g: FlowGraph, refs: ReferenceIndex | None = REFS) -> FlowValidation:
    result = check(g, refs)
    assert result.errors == ()
    assert result.valid
    assert result.field_errors == {}
    return result


def assert_error(result: FlowValidation, path: str, fragment: str) -> None:
    assert not result.valid
    assert result.execution_order == ()
    assert path in result.field_errors, (path, result.field_errors)
    assert fragment in result.field_errors[path], (fragment, result.field_errors[path])
    assert any(fragment in error for error in result.errors), result.errors


def assert_forward(g: FlowGraph, order: tuple[str, ...]) -> None:
    position = {node_id: i for i, node_id in enumerate(order)}
    assert sorted(order) == sorted(n.id for n in g.nodes)
    for e in g.edges:
        assert position[e.source] < position[e.target], e


# ------------------------------------------------------------------------------- basics


def test_valid_flow_with_every_kind() -> None:
    g = graph(
        [
            node(
                "in",
                "INPUT",
                schema={"type": "object", "properties": {"score": {"type": "number"}}},
            ),
            node("check", "CONDITION"),
            node(
                "llm",
                "LLM",
                prompt="Score {{ inputs.score }}",
                system="Be brief",
                temperature=0.2,
                maxTokens=200,
            ),
            node(
                "agent", "AGENT", task="Review {{ nodes.llm.output }}", expectedOutput="A verdict"
            ),
            node("crew", "CREW", inputs={"text": "{{ nodes.agent.output }}"}),
            node("tool", "TOOL", input={"q": "{{ nodes['llm'].output }} {{ inputs.score }}"}),
            node("out", "OUTPUT", value="{{ nodes.crew.output }} / {{ nodes.tool.output }}"),
            node("low", "OUTPUT"),
        ],
        [
            edge("in", "check"),
            edge("check", "llm", "true"),
            edge("check", "low", "false"),
            edge("llm", "agent"),
            edge("agent", "crew"),
            edge("llm", "tool"),
            edge("crew", "out"),
            edge("tool", "out"),
        ],
    )
    result = assert_valid(g)
    assert result.execution_order == ("in", "check", "llm", "agent", "crew", "tool", "out", "low")
    assert_forward(g, result.execution_order)


def test_kinds_accept_enum_members() -> None:
    g = graph(
        [FlowNode("in", NodeKind.INPUT), FlowNode("out", NodeKind.OUTPUT)],
        [edge("in", "out")],
    )
    assert assert_valid(g).execution_order == ("in", "out")


def test_empty_graph() -> None:
    result = check(graph([], []))
    assert_error(result, "nodes", "at least one node")


def test_max_nodes() -> None:
    g = pipeline(node("a"), node("b"))
    assert check(g, max_nodes=4).valid
    result = check(g, max_nodes=3)
    assert_error(result, "nodes", "at most 3 nodes")


def test_errors_are_collected_not_first_only() -> None:
    g = graph(
        [
            node("in", "INPUT"),
            node("a", "LLM", temperature=5),
            node("b", "WHAT"),
            node("out", "OUTPUT"),
        ],
        [edge("in", "a"), edge("a", "out"), edge("in", "zzz")],
    )
    result = check(g)
    assert len(result.errors) >= 3
    assert "nodes[1].config.temperature" in result.field_errors
    assert "nodes[2].kind" in result.field_errors
    assert "edges[2].target" in result.field_errors


def test_error_count_is_capped() -> None:
    nodes = [node("in", "INPUT"), node("out", "OUTPUT")]
    nodes += [node(f"n{i}", "LLM", temperature=9) for i in range(MAX_REPORTED_ERRORS * 2)]
    result = check(graph(nodes, [edge("in", "out")]))
    assert len(result.errors) == MAX_REPORTED_ERRORS + 1
    assert result.errors[-1].startswith("... and ")
    assert len(result.field_errors) <= MAX_REPORTED_ERRORS


def test_raise_if_invalid() -> None:
    assert_valid(pipeline()).raise_if_invalid()
    result = check(pipeline(node("a", "LLM", temperature=7)))
    with pytest.raises(BadUserInput) as info:
        result.raise_if_invalid()
    assert "temperature" in info.value.message
    assert info.value.fields == result.field_errors
    assert info.value.extensions["fields"] == result.field_errors


# ------------------------------------------------------------------------------- node ids / kinds


@pytest.mark.parametrize(
    ("node_id", "fragment"),
    [
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        (None, "non-empty string"),
        (7, "non-empty string"),
        ("x" * (MAX_NODE_ID_LENGTH + 1), "longer than"),
        (" padded", "whitespace"),
        ("bad\nid", "control characters"),
    ],
)
def test_bad_node_ids(node_id: Any, fragment: str) -> None:
    result = check(
        graph([node("in", "INPUT"), node(node_id), node("out", "OUTPUT")], [edge("in", "out")])
    )
    assert_error(result, "nodes[1].id", fragment)


def test_node_id_of_max_length_is_fine() -> None:
    long_id = "x" * MAX_NODE_ID_LENGTH
    assert_valid(pipeline(node(long_id)))


def test_duplicate_node_ids() -> None:
    g = graph(
        [node("in", "INPUT"), node("a"), node("a"), node("out", "OUTPUT")],
        [edge("in", "a"), edge("a", "out")],
    )
    result = check(g)
    assert_error(result, "nodes[2].id", "duplicate node id 'a' (also used by nodes[1])")
    assert len(result.errors) == 1  # the duplicate is left out of the structural checks


@pytest.mark.parametrize("kind", ["WHAT", "llm", "", None, 3])
def test_unknown_kinds(kind: Any) -> None:
    result = check(pipeline(node("a", kind)))
    assert_error(result, "nodes[1].kind", "unknown kind")


def test_node_name_must_be_short_string() -> None:
    g = graph(
        [
            node("in", "INPUT"),
            FlowNode("a", "LLM", "x" * 500, dict(DEFAULT_CONFIG["LLM"])),
            node("out", "OUTPUT"),
        ],
        [edge("in", "a"), edge("a", "out")],
    )
    assert_error(check(g), "nodes[1].name", "name must be a string")
    g = graph(
        [
            node("in", "INPUT"),
            FlowNode("a", "LLM", "Nice name", dict(DEFAULT_CONFIG["LLM"])),
            node("out", "OUTPUT"),
        ],
        [edge("in", "a"), edge("a", "out")],
    )
    assert_valid(g)


# ------------------------------------------------------------------------------- edges


def test_edges_to_unknown_nodes() -> None:
    g = graph(
        [node("in", "INPUT"), node("out", "OUTPUT")],
        [edge("in", "out"), edge("ghost", "out"), edge("in", "nowhere"), edge(None, "out")],
    )
    result = check(g)
    assert_error(result, "edges[1].source", "unknown source node 'ghost'")
    assert_error(result, "edges[2].target", "unknown target node 'nowhere'")
    assert_error(result, "edges[3].source", "unknown source node None")


def test_duplicate_edges() -> None:
    g = pipeline(node("a"))
    g = graph(list(g.nodes), [*g.edges, edge("in", "a")])
    assert_error(check(g), "edges[2]", "duplicate edge 'in' -> 'a' (same as edges[0])")


def test_self_loop() -> None:
    g = pipeline(node("a"))
    g = graph(list(g.nodes), [*g.edges, edge("a", "a")])
    assert_error(check(g), "edges[2]", "self-loop")


def test_input_nodes_have_no_in_edges() -> None:
    g = graph(
        [node("in", "INPUT"), node("in2", "INPUT"), node("out", "OUTPUT")],
        [edge("in", "in2"), edge("in2", "out")],
    )
    assert_error(check(g), "edges[0].target", "INPUT node 'in2' cannot have incoming edges")
    g = graph(
        [node("in", "INPUT"), node("in2", "INPUT"), node("out", "OUTPUT")],
        [edge("in", "out"), edge("in2", "out")],
    )
    assert assert_valid(g).execution_order == ("in", "in2", "out")


def test_output_nodes_have_no_out_edges() -> None:
    g = graph(
        [node("in", "INPUT"), node("out", "OUTPUT"), node("out2", "OUTPUT")],
        [edge("in", "out"), edge("out", "out2")],
    )
    result = check(g)
    assert_error(result, "edges[1].source", "OUTPUT node 'out' cannot have outgoing edges")


def test_branch_only_on_condition_edges() -> None:
    g = graph([node("in", "INPUT"), node("out", "OUTPUT")], [edge("in", "out", "true")])
    assert_error(check(g), "edges[0].branch", "only edges leaving a CONDITION node")
    # an empty branch is the same as none
    assert_valid(graph([node("in", "INPUT"), node("out", "OUTPUT")], [edge("in", "out", "")]))


def condition_graph(*branches: tuple[str, str | None]) -> FlowGraph:
    nodes = [
        node("in", "INPUT"),
        node("c", "CONDITION"),
        node("yes", "OUTPUT"),
        node("no", "OUTPUT"),
    ]
    edges = [edge("in", "c"), *(edge("c", target, branch) for target, branch in branches)]
    return graph(nodes, edges)


def test_condition_with_both_branches_is_valid() -> None:
    result = assert_valid(condition_graph(("yes", "true"), ("no", "false")))
    assert result.execution_order == ("in", "c", "yes", "no")


@pytest.mark.parametrize(
    ("branches", "path", "fragment"),
    [
        ((("yes", "true"),), "nodes[1]", "exactly one 'false' out-edge (has 0)"),
        ((("no", "false"),), "nodes[1]", "exactly one 'true' out-edge (has 0)"),
        ((("yes", "true"), ("no", "true")), "nodes[1]", "exactly one 'true' out-edge (has 2)"),
        ((("yes", "true"), ("no", None)), "edges[2].branch", "branch must be 'true' or 'false'"),
        ((("yes", "true"), ("no", "maybe")), "edges[2].branch", "not 'maybe'"),
        ((("yes", "TRUE"), ("no", "false")), "edges[1].branch", "branch must be"),
        ((("yes", "true"), ("ghost", "false")), "edges[2].target", "unknown target"),
    ],
)
def test_condition_branch_rules(
    branches: tuple[tuple[str, str | None], ...], path: str, fragment: str
) -> None:
    assert_error(check(condition_graph(*branches)), path, fragment)


def test_condition_branch_with_unknown_target_still_counts() -> None:
    result = check(condition_graph(("yes", "true"), ("ghost", "false")))
    assert not any("exactly one" in error for error in result.errors)


# ------------------------------------------------------------------------------- structure


def test_cycle_is_reported_readably() -> None:
    g = graph(
        [node("in", "INPUT"), node("a"), node("b"), node("c"), node("out", "OUTPUT")],
        [edge("in", "a"), edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "out")],
    )
    result = check(g)
    assert not result.valid
    assert result.execution_order == ()
    message = "cycle: a -> b -> c -> a (and 1 more node on or downstream of a cycle)"
    assert message in result.errors
    assert result.field_errors["edges[3]"] == message


def test_cycle_reported_once_with_downstream_nodes() -> None:
    g = graph(
        [
            node("in", "INPUT"),
            node("x"),
            node("p"),
            node("q"),
            node("after"),
            node("out", "OUTPUT"),
        ],
        [
            edge("in", "x"),
            edge("x", "q"),
            edge("q", "p"),
            edge("p", "q"),
            edge("q", "after"),
            edge("after", "out"),
        ],
    )
    result = check(g)
    cycles = [error for error in result.errors if error.startswith("cycle:")]
    assert len(cycles) == 1
    # starts at the earliest node of the cycle; 'after' and 'out' are stuck behind it
    assert cycles[0] == "cycle: p -> q -> p (and 2 more nodes on or downstream of a cycle)"


def test_two_node_cycle_without_inputs() -> None:
    g = graph([node("a"), node("b")], [edge("a", "b"), edge("b", "a")])
    result = check(g)
    assert "cycle: a -> b -> a" in result.errors  # nothing else is stuck behind it
    assert "a flow needs at least one INPUT node" in result.errors
    assert "a flow needs at least one OUTPUT node" in result.errors


def test_needs_input_and_output() -> None:
    assert_error(check(graph([node("out", "OUTPUT")], [])), "nodes", "at least one INPUT node")
    assert_error(check(graph([node("in", "INPUT")], [])), "nodes", "at least one OUTPUT node")
    assert_valid(graph([node("in", "INPUT"), node("out", "OUTPUT")], [edge("in", "out")]))


@pytest.mark.parametrize(
    ("stray", "stray_edge", "problem"),
    [
        ("orphan", edge("orphan", "out"), "not reachable from an INPUT node"),
        ("dead", edge("a", "dead"), "not connected to any OUTPUT node"),
    ],
)
def test_every_node_lies_on_a_path_from_an_input_to_an_output(
    stray: str, stray_edge: FlowEdge, problem: str
) -> None:
    g = graph(
        [node("in", "INPUT"), node("a"), node(stray), node("out", "OUTPUT")],
        [edge("in", "a"), edge("a", "out"), stray_edge],
    )
    result = check(g)
    assert_error(result, "nodes", f"nodes {problem}: {stray!r}")
    assert problem in result.field_errors["nodes[2]"]


def test_unconnected_output_and_input() -> None:
    g = graph(
        [node("in", "INPUT"), node("in2", "INPUT"), node("out", "OUTPUT"), node("out2", "OUTPUT")],
        [edge("in", "out")],
    )
    result = check(g)
    assert any("not reachable from an INPUT node: 'out2'" in e for e in result.errors)
    assert any("not connected to any OUTPUT node: 'in2'" in e for e in result.errors)


def test_long_id_lists_are_truncated() -> None:
    nodes = [node("in", "INPUT"), node("out", "OUTPUT")] + [node(f"o{i}") for i in range(30)]
    edges = [edge("in", "out")] + [edge(f"o{i}", "out") for i in range(30)]
    result = check(graph(nodes, edges))
    message = next(e for e in result.errors if "not reachable" in e)
    assert "(and 20 more)" in message


# ------------------------------------------------------------------------------- execution order


def test_execution_order_is_stable_by_input_order() -> None:
    # Input order is not topological: ties are broken by position in the input.
    g = graph(
        [node("out", "OUTPUT"), node("b"), node("a"), node("in", "INPUT"), node("c")],
        [edge("in", "a"), edge("in", "b"), edge("a", "c"), edge("b", "c"), edge("c", "out")],
    )
    result = assert_valid(g)
    assert result.execution_order == ("in", "b", "a", "c", "out")
    assert_forward(g, result.execution_order)
    assert validate_flow(g, REFS).execution_order == result.execution_order


def test_execution_order_keeps_topological_input_order() -> None:
    g = graph(
        [node("in", "INPUT"), node("z"), node("y"), node("x"), node("out", "OUTPUT")],
        [
            edge("in", "x"),
            edge("in", "y"),
            edge("in", "z"),
            edge("x", "out"),
            edge("y", "out"),
            edge("z", "out"),
        ],
    )
    assert assert_valid(g).execution_order == ("in", "z", "y", "x", "out")


def random_dag(rng: random.Random, size: int) -> FlowGraph:
    """A random valid DAG, with nodes listed in a shuffled order."""
    ids = [f"n{i}" for i in range(size)]
    edges = {(ids[0], ids[1])} if size == 2 else set()
    for i in range(1, size - 1):
        source = ids[rng.randrange(0, i)]
        edges.add((source, ids[i]))
        for _ in range(rng.randint(0, 2)):
            extra = rng.randrange(0, i)
            edges.add((ids[extra], ids[i]))
        edges.add((ids[i], ids[size - 1]))
    edges = {(s, t) for s, t in edges if not (s == ids[0] and t == ids[size - 1] and size > 2)}
    nodes = [node(ids[0], "INPUT"), node(ids[-1], "OUTPUT")]
    for i in range(1, size - 1):
        preds = sorted(s for s, t in edges if t == ids[i])
        nodes.append(node(ids[i], "LLM", prompt=f"use {{{{ nodes.{rng.choice(preds)}.output }}}}"))
    rng.shuffle(nodes)
    edge_list = [edge(s, t) for s, t in edges]
    rng.shuffle(edge_list)
    return graph(nodes, edge_list)


def test_random_dags_get_a_forward_order() -> None:
    rng = random.Random(20240607)
    for _ in range(200):
        g = random_dag(rng, rng.randint(2, 40))
        result = assert_valid(g)
        assert_forward(g, result.execution_order)
        # deterministic
        assert validate_flow(g, REFS).execution_order == result.execution_order


def test_random_cycles_are_found() -> None:
    rng = random.Random(7)
    for _ in range(100):
        g = random_dag(rng, rng.randint(4, 30))
        middle = sorted(n.id for n in g.nodes if n.kind == "LLM")
        early = rng.choice(middle)
        later = sorted(descendants(g, early) & set(middle))
        if not later:
            continue
        bad = graph(list(g.nodes), [*g.edges, edge(rng.choice(later), early)])
        result = check(bad)
        cycle = next(e for e in result.errors if e.startswith("cycle: "))
        hops = cycle.removeprefix("cycle: ").split(" (")[0].split(" -> ")
        assert hops[0] == hops[-1]
        known = {(e.source, e.target) for e in bad.edges}
        assert all((a, b) in known for a, b in itertools.pairwise(hops))


# ------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("kind", "missing"),
    [
        ("CONDITION", "expression"),
        ("LLM", "providerId"),
        ("LLM", "prompt"),
        ("AGENT", "agentId"),
        ("AGENT", "task"),
        ("CREW", "crewId"),
        ("TOOL", "toolId"),
    ],
)
def test_required_config_fields(kind: str, missing: str) -> None:
    config = dict(DEFAULT_CONFIG[kind])
    del config[missing]
    if kind != "CONDITION":
        g = pipeline(FlowNode("a", kind, None, config))
    else:
        g = graph(
            [
                node("in", "INPUT"),
                FlowNode("c", kind, None, config),
                node("yes", "OUTPUT"),
                node("no", "OUTPUT"),
            ],
            [edge("in", "c"), edge("c", "yes", "true"), edge("c", "no", "false")],
        )
    assert_error(check(g), f"nodes[1].config.{missing}", "is required")


def test_optional_fields_may_be_absent_or_null_and_extra_keys_are_allowed() -> None:
    g = pipeline(
        node("l", "LLM", system=None, temperature=None, futureOption={"x": 1}),
        node("t", "TOOL", input=None),
        node("c", "CREW", inputs={}),
    )
    g = graph(
        [*g.nodes[:-1], FlowNode("out", "OUTPUT", None, {"value": None})],
        list(g.edges),
    )
    assert_valid(g)


def test_config_must_be_an_object() -> None:
    g = pipeline(FlowNode("a", "LLM", None, ["not", "a", "dict"]))  # type: ignore[arg-type]
    assert_error(check(g), "nodes[1].config", "config must be an object")


@pytest.mark.parametrize(
    ("config", "path", "fragment"),
    [
        ({"temperature": 3}, "temperature", "between 0 and 2"),
        ({"temperature": -0.1}, "temperature", "between 0 and 2"),
        ({"temperature": "hot"}, "temperature", "must be a number"),
        ({"temperature": True}, "temperature", "must be a number"),
        ({"temperature": float("nan")}, "temperature", "must be a number"),
        ({"maxTokens": 0}, "maxTokens", "integer of at least 1"),
        ({"maxTokens": 1.5}, "maxTokens", "must be an integer"),
        ({"maxTokens": "100"}, "maxTokens", "must be an integer"),
        ({"prompt": 42}, "prompt", "must be a template string"),
        ({"prompt": "{{ unclosed"}, "prompt", "syntax error"),
        ({"system": ["x"]}, "system", "must be a string"),
        ({"providerId": ""}, "providerId", "non-empty LLM provider id"),
        ({"providerId": 12}, "providerId", "non-empty LLM provider id"),
        ({"timeoutSeconds": 0}, "timeoutSeconds", "greater than 0 and at most 86400"),
        ({"timeoutSeconds": 86401}, "timeoutSeconds", "at most 86400"),
        ({"timeoutSeconds": float("inf")}, "timeoutSeconds", "must be a number"),
        ({"retries": 11}, "retries", "between 0 and 10"),
        ({"retries": -1}, "retries", "between 0 and 10"),
        ({"retries": 2.0}, "retries", "must be an integer"),
        ({"retries": False}, "retries", "must be an integer"),
        ({"retryBackoffSeconds": -1}, "retryBackoffSeconds", "at least 0"),
        ({"retryBackoffSeconds": "1s"}, "retryBackoffSeconds", "must be a number"),
    ],
)
def test_llm_config_types(config: dict[str, Any], path: str, fragment: str) -> None:
    result = check(pipeline(node("a", "LLM", **config)))
    assert_error(result, f"nodes[1].config.{path}", fragment)


@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"temperature": 1.25},
        {"maxTokens": 1},
        {"timeoutSeconds": 0.5},
        {"timeoutSeconds": 86400},
        {"retries": 0},
        {"retries": 10},
        {"retryBackoffSeconds": 0},
        {"retryBackoffSeconds": 2.5},
        {"system": "You are terse."},
    ],
)
def test_llm_config_types_valid(config: dict[str, Any]) -> None:
    assert_valid(pipeline(node("a", "LLM", **config)))


def test_engine_options_apply_to_every_kind() -> None:
    for kind in ("AGENT", "TOOL", "CREW"):
        result = check(pipeline(node("a", kind, retries=99)))
        assert_error(result, "nodes[1].config.retries", "between 0 and 10")
    result = check(
        graph([node("in", "INPUT", timeoutSeconds=-5), node("out", "OUTPUT")], [edge("in", "out")])
    )
    assert_error(result, "nodes[0].config.timeoutSeconds", "greater than 0")


@pytest.mark.parametrize(
    ("kind", "key", "value", "path", "fragment"),
    [
        ("CREW", "inputs", "text", "inputs", "object mapping names to templates"),
        ("CREW", "inputs", {"text": 5}, "inputs.text", "must be a template string"),
        ("CREW", "inputs", {"text": "{% if %}"}, "inputs.text", "syntax error"),
        ("TOOL", "input", ["q"], "input", "object mapping names to templates"),
        ("TOOL", "input", {"q": "{{ secret }}"}, "input.q", "unknown name 'secret'"),
        ("AGENT", "expectedOutput", 3, "expectedOutput", "must be a string"),
        ("AGENT", "task", None, "task", "is required"),
    ],
)
def test_other_config_types(kind: str, key: str, value: Any, path: str, fragment: str) -> None:
    result = check(pipeline(node("a", kind, **{key: value})))
    assert_error(result, f"nodes[1].config.{path}", fragment)


def test_template_maps_valid() -> None:
    assert_valid(
        pipeline(
            node("t", "TOOL", input={"q": "{{ inputs.q }}", "limit": "10"}),
            node("c", "CREW", inputs={"text": "{{ nodes.t.output }}"}),
        )
    )


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "nope"}, "not a valid JSON Schema at $.type"),
        ({"properties": {"a": {"type": 5}}}, "not a valid JSON Schema at $.properties.a.type"),
        ({"$schema": "https://example.com/mine"}, "unknown $schema"),
        ("object", "must be a JSON Schema"),
    ],
)
def test_input_schema_invalid(schema: Any, fragment: str) -> None:
    g = graph([node("in", "INPUT", schema=schema), node("out", "OUTPUT")], [edge("in", "out")])
    assert_error(check(g), "nodes[0].config.schema", fragment)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        True,
        {},
    ],
)
def test_input_schema_valid(schema: Any) -> None:
    assert_valid(
        graph([node("in", "INPUT", schema=schema), node("out", "OUTPUT")], [edge("in", "out")])
    )


def test_output_value_template() -> None:
    g = graph(
        [node("in", "INPUT"), node("out", "OUTPUT", value="{{ inputs.x }}")], [edge("in", "out")]
    )
    assert_valid(g)
    g = graph(
        [node("in", "INPUT"), node("out", "OUTPUT", value={"not": "a template"})],
        [edge("in", "out")],
    )
    assert_error(check(g), "nodes[1].config.value", "must be a template string")


def test_condition_expression_checked() -> None:
    def with_expression(expression: Any) -> FlowGraph:
        return graph(
            [
                node("in", "INPUT"),
                node("c", "CONDITION", expression=expression),
                node("yes", "OUTPUT"),
                node("no", "OUTPUT"),
            ],
            [edge("in", "c"), edge("c", "yes", "true"), edge("c", "no", "false")],
        )

    assert_valid(with_expression("inputs.score > 5 and len(inputs.tags) > 0"))
    assert_error(
        check(with_expression("inputs.score >")), "nodes[1].config.expression", "syntax error"
    )
    assert_error(check(with_expression("  ")), "nodes[1].config.expression", "must not be empty")
    assert_error(
        check(with_expression(5)), "nodes[1].config.expression", "must be a expression string"
    )
    assert_error(
        check(with_expression("__import__('os')")), "nodes[1].config.expression", "not allowed"
    )
    assert_error(
        check(with_expression("secret > 1")), "nodes[1].config.expression", "unknown name 'secret'"
    )


# ------------------------------------------------------------------------------- references


def test_references_must_exist() -> None:
    g = pipeline(
        node("l", "LLM", providerId="prov-x"),
        node("a", "AGENT", agentId="agent-x"),
        node("c", "CREW", crewId="crew-x"),
        node("t", "TOOL", toolId="tool-x"),
    )
    result = check(g)
    assert_error(result, "nodes[1].config.providerId", "LLM provider 'prov-x' does not exist")
    assert_error(result, "nodes[2].config.agentId", "agent 'agent-x' does not exist")
    assert_error(result, "nodes[3].config.crewId", "crew 'crew-x' does not exist")
    assert_error(result, "nodes[4].config.toolId", "tool 'tool-x' does not exist")
    # without an index the existence checks are skipped
    assert_valid(g, refs=None)


def test_references_present() -> None:
    assert_valid(
        pipeline(node("l", "LLM"), node("a", "AGENT"), node("c", "CREW"), node("t", "TOOL"))
    )


def test_reference_index_accepts_plain_sets() -> None:
    refs = ReferenceIndex(agent_ids={"agent-1"}, llm_provider_ids={"prov-1"})
    assert_valid(pipeline(node("l", "LLM"), node("a", "AGENT")), refs)


# ------------------------------------------------------------------------------- names in templates


def test_upstream_references_transitively() -> None:
    g = pipeline(
        node("first", "LLM", prompt="Start {{ inputs.topic }}"),
        node("second", "AGENT", task="Use {{ nodes.first.output }}"),
        node(
            "third", "LLM", prompt="Use {{ nodes['first'].output }} and {{ nodes.second.output }}"
        ),
    )
    assert_valid(g)


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("{{ secrets.key }}", "unknown name 'secrets'"),
        ("{{ nodes }}", "must follow 'nodes' with a node id"),
        ("{{ nodes[inputs.which].output }}", "must follow 'nodes' with a node id"),
        ("{{ nodes.ghost.output }}", "unknown node 'ghost'"),
        ("{{ nodes.a.output }}", "cannot use its own node's output"),
        ("{{ nodes.later.output }}", "not upstream of 'a'"),
        ("{{ nodes.side.output }}", "not upstream of 'a'"),
        ("{{ nodes.first.status }}", "only nodes.first.output is available"),
    ],
)
def test_bad_template_names(prompt: str, fragment: str) -> None:
    g = graph(
        [
            node("in", "INPUT"),
            node("first", "LLM"),
            node("a", "LLM", prompt=prompt),
            node("later", "LLM"),
            node("side", "LLM"),
            node("out", "OUTPUT"),
        ],
        [
            edge("in", "first"),
            edge("first", "a"),
            edge("a", "later"),
            edge("later", "out"),
            edge("in", "side"),
            edge("side", "out"),
        ],
    )
    assert_error(check(g), "nodes[2].config.prompt", fragment)


def test_expression_names_must_be_upstream() -> None:
    def flow(expression: str) -> FlowGraph:
        return graph(
            [
                node("in", "INPUT"),
                node("llm", "LLM"),
                node("c", "CONDITION", expression=expression),
                node("yes", "OUTPUT"),
                node("no", "OUTPUT"),
                node("side", "LLM"),
            ],
            [
                edge("in", "llm"),
                edge("llm", "c"),
                edge("c", "yes", "true"),
                edge("c", "no", "false"),
                edge("in", "side"),
                edge("side", "yes"),
            ],
        )

    assert_valid(flow("'yes' in nodes.llm.output"))
    assert_error(
        check(flow("nodes.side.output")), "nodes[2].config.expression", "not upstream of 'c'"
    )
    assert_error(check(flow("[x for x in y]")), "nodes[2].config.expression", "unknown name 'y'")


def test_upstream_check_skipped_with_cycle_but_unknown_node_reported() -> None:
    g = graph(
        [
            node("in", "INPUT"),
            node("a", prompt="{{ nodes.b.output }} {{ nodes.zz.output }}"),
            node("b"),
            node("out", "OUTPUT"),
        ],
        [edge("in", "a"), edge("a", "b"), edge("b", "a"), edge("b", "out")],
    )
    result = check(g)
    assert "cycle: a -> b -> a (and 1 more node on or downstream of a cycle)" in result.errors
    assert "unknown node 'zz'" in result.field_errors["nodes[1].config.prompt"]
    assert "not upstream" not in result.field_errors["nodes[1].config.prompt"]


def test_many_indirect_references() -> None:
    size = 300
    nodes = [node("in", "INPUT")]
    edges = []
    for i in range(size):
        refs = " ".join(f"{{{{ nodes.n{j}.output }}}}" for j in range(max(0, i - 5), i))
        nodes.append(node(f"n{i}", "LLM", prompt=refs or "start"))
        edges.append(edge("in" if i == 0 else f"n{i - 1}", f"n{i}"))
    nodes.append(node("out", "OUTPUT", value="{{ nodes.n0.output }}"))
    edges.append(edge(f"n{size - 1}", "out"))
    assert_valid(graph(nodes, edges))


# ------------------------------------------------------------------------------- helpers


def helper_graph() -> FlowGraph:
    return graph(
        [
            node("in", "INPUT"),
            node("c", "CONDITION"),
            node("a"),
            node("b"),
            node("out", "OUTPUT"),
            node("alt", "OUTPUT"),
        ],
        [
            edge("in", "c"),
            edge("c", "a", "true"),
            edge("c", "alt", "false"),
            edge("a", "b"),
            edge("in", "b"),
            edge("b", "out"),
            edge("in", "b"),  # duplicate: ignored
            edge("ghost", "b"),  # unknown: ignored
        ],
    )


def test_predecessors() -> None:
    assert predecessors(helper_graph()) == {
        "in": [],
        "c": ["in"],
        "a": ["c"],
        "b": ["a", "in"],
        "out": ["b"],
        "alt": ["c"],
    }


def test_successors_keep_branches() -> None:
    result = successors(helper_graph())
    assert [(e.target, e.branch) for e in result["c"]] == [("a", "true"), ("alt", "false")]
    assert [e.target for e in result["in"]] == ["c", "b"]
    assert result["out"] == []


def test_ancestors_and_descendants() -> None:
    g = helper_graph()
    assert ancestors(g, "b") == {"in", "c", "a"}
    assert ancestors(g, "in") == frozenset()
    assert descendants(g, "c") == {"a", "b", "out", "alt"}
    assert descendants(g, "out") == frozenset()
