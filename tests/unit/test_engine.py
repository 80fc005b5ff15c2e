"""The flow execution engine, against the in-memory store and slow test executors."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from domain.errors import BadUserInput
from domain.executions.engine import FlowEngine
from domain.executions.events import TERMINAL_EVENTS, EventType, ExecutionEvent
from domain.executions.memory import InMemoryExecutionStore
from domain.executions.ports import CancelSignal, NodeContext, NodeResult, RunOutcome
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.flows.model import FlowEdge, FlowGraph, FlowNode

pytestmark = pytest.mark.timeout(30)

ET = EventType


# ------------------------------------------------------------------------------ helpers


def graph(
    nodes: Iterable[tuple[str, str] | tuple[str, str, dict[str, Any]]], edges: str
) -> FlowGraph:
    """nodes: (id, kind[, config]); edges: "a>b b>c c-true>d c-false>e"."""
    flow_nodes = tuple(FlowNode(n[0], n[1], n[0], dict(n[2]) if len(n) > 2 else {}) for n in nodes)
    flow_edges = []
    for spec in edges.split():
        source, target = spec.split(">")
        branch = None
        if "-" in source:
            source, branch = source.split("-")
        flow_edges.append(FlowEdge(source, target, branch))
    return FlowGraph(flow_nodes, tuple(flow_edges))


class Slow:
    """Test executor (registered for TOOL/AGENT/...): sleeps `config.sleep`, fails the first
    `config.fail` attempts, returns `config.result` or "<id>(<completed predecessors>)"."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}

    async def __call__(self, node: FlowNode, ctx: NodeContext) -> Any:
        self.calls[node.id] += 1
        self.started[node.id] = time.monotonic()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for token in node.config.get("tokens", []):
                await ctx.emit_token(token)
            await asyncio.sleep(node.config.get("sleep", 0))
            if self.calls[node.id] <= node.config.get("fail", 0):
                raise RuntimeError(f"flaky {node.id} #{self.calls[node.id]}")
            if "result" in node.config:
                return node.config["result"]
            return f"{node.id}({','.join(ctx.predecessors)})"
        finally:
            self.active -= 1
            self.finished[node.id] = time.monotonic()


def new_id() -> str:
    return uuid.uuid4().hex


async def run(
    g: FlowGraph,
    inputs: dict[str, Any] | None = None,
    *,
    store: InMemoryExecutionStore | None = None,
    executor: Any = None,
    cancel: CancelSignal | None = None,
    execution_id: str | None = None,
    **engine_kwargs: Any,
) -> tuple[RunOutcome, InMemoryExecutionStore, str]:
    store = store or InMemoryExecutionStore()
    execution_id = execution_id or new_id()
    if (
        execution_id not in store.executions
        or store.get(execution_id).status == ExecutionStatus.PENDING
    ):
        store.start(execution_id)
    executors = {} if executor is None else {k: executor for k in ("TOOL", "AGENT", "LLM", "CREW")}
    engine = FlowEngine(store, executors, **engine_kwargs)
    outcome = await engine.run(execution_id, "tenant-1", g, inputs or {}, cancel)
    check_event_log(store.events(execution_id))
    assert store.events(execution_id)[0].sequence == 1
    assert store.get(execution_id).status == outcome.status
    return outcome, store, execution_id


def check_event_log(events: list[ExecutionEvent]) -> None:
    """Gap-free sequences, one run's events in a legal order, terminal event last."""
    start = events[0].sequence
    assert [e.sequence for e in events] == list(range(start, start + len(events)))
    assert events[0].type == ET.EXECUTION_STARTED
    assert events[-1].type in TERMINAL_EVENTS
    assert sum(e.type in TERMINAL_EVENTS for e in events) == 1
    open_nodes: set[str] = set()
    for event in events:
        if event.type == ET.NODE_STARTED:
            assert event.node_id not in open_nodes
            open_nodes.add(event.node_id or "")
        elif event.type in (ET.TOKEN, ET.LOG):
            assert event.node_id in open_nodes, f"{event.type} outside its node: {event}"
        elif event.type in (ET.NODE_COMPLETED, ET.NODE_FAILED):
            open_nodes.remove(event.node_id or "")
    assert [e.at for e in events] == sorted(e.at for e in events)


def types(
    store: InMemoryExecutionStore, execution_id: str, node_id: str | None = None
) -> list[EventType]:
    return [e.type for e in store.events(execution_id) if node_id is None or e.node_id == node_id]


def node_status(store: InMemoryExecutionStore, execution_id: str) -> dict[str, NodeStatus]:
    return {nid: r.status for nid, r in store.get(execution_id).nodes.items()}


def first(
    store: InMemoryExecutionStore, execution_id: str, type_: EventType, node_id: str | None = None
) -> ExecutionEvent:
    return next(
        e
        for e in store.events(execution_id)
        if e.type == type_ and (node_id is None or e.node_id == node_id)
    )


# ------------------------------------------------------------------------ shapes, outputs


async def test_linear_flow_passes_outputs_along_edges() -> None:
    g = graph([("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL"), ("out", "OUTPUT")], "in>a a>b b>out")
    slow = Slow()
    outcome, store, eid = await run(g, {"q": 1}, executor=slow)

    assert outcome == RunOutcome(ExecutionStatus.COMPLETED, {"out": "b(a)"}, None, None)
    assert store.get(eid).outputs == {"out": "b(a)"}
    assert store.get(eid).error is None
    assert node_status(store, eid) == dict.fromkeys(["in", "a", "b", "out"], NodeStatus.COMPLETED)
    assert store.get(eid).nodes["in"].output == {"q": 1}
    assert types(store, eid) == [
        ET.EXECUTION_STARTED,
        *[ET.NODE_STARTED, ET.NODE_COMPLETED] * 4,
        ET.EXECUTION_COMPLETED,
    ]
    assert [e.node_id for e in store.events(eid) if e.type == ET.NODE_COMPLETED] == [
        "in",
        "a",
        "b",
        "out",
    ]
    assert first(store, eid, ET.EXECUTION_STARTED).data == {
        "resumed": False,
        "checkpointedNodes": 0,
    }
    assert first(store, eid, ET.NODE_STARTED, "a").data == {"kind": "TOOL", "name": "a"}
    assert first(store, eid, ET.NODE_COMPLETED, "b").data == {"output": "b(a)", "attempts": 1}
    assert store.events(eid)[-1].data == {"outputs": {"out": "b(a)"}}
    result = store.get(eid).nodes["a"]
    assert result.attempts == 1 and result.started_at and result.finished_at
    assert result.started_at <= result.finished_at


async def test_diamond_joins_after_both_branches() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL", {"sleep": 0.05}),
            ("b", "TOOL", {"sleep": 0.15}),
            ("c", "TOOL"),
            ("out", "OUTPUT"),
        ],
        "in>a in>b a>c b>c c>out",
    )
    slow = Slow()
    outcome, store, eid = await run(g, executor=slow)

    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {"out": "c(a,b)"}
    assert node_status(store, eid)["c"] == NodeStatus.COMPLETED
    assert slow.started["c"] >= slow.finished["b"]
    assert dict(slow.calls) == {"a": 1, "b": 1, "c": 1}


async def test_output_node_with_several_predecessors_collects_a_dict() -> None:
    g = graph(
        [("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL"), ("out", "OUTPUT")],
        "in>a in>b a>out b>out",
    )
    outcome, _, _ = await run(g, executor=Slow())
    assert outcome.outputs == {"out": {"a": "a(in)", "b": "b(in)"}}


async def test_output_template_sees_inputs_and_node_outputs() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("research", "TOOL", {"result": {"title": "Bees", "words": 3}}),
            ("out", "OUTPUT", {"value": "{{ inputs.topic }}: {{ nodes.research.output.title }}"}),
            ("many", "OUTPUT", {"value": {"n": "{{ nodes.research.output.words * 2 }}", "k": 7}}),
        ],
        "in>research research>out research>many",
    )
    outcome, _, _ = await run(g, {"topic": "insects"}, executor=Slow())
    # A template that is one whole expression keeps its JSON type; mixed text renders.
    assert outcome.outputs == {"out": "insects: Bees", "many": {"n": 6, "k": 7}}


async def test_whole_expression_templates_pass_native_values() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("research", "TOOL", {"result": {"title": "Bees", "tags": ["a", "b"]}}),
            ("obj", "OUTPUT", {"value": "{{ nodes.research.output }}"}),
            ("num", "OUTPUT", {"value": " {{ inputs.n }} "}),
            ("text", "OUTPUT", {"value": "{{ inputs.n }}!"}),
            ("filtered", "OUTPUT", {"value": "{{ nodes.research.output.tags | join(',') }}"}),
        ],
        "in>research research>obj research>num research>text research>filtered",
    )
    outcome, _, _ = await run(g, {"n": 21}, executor=Slow())
    assert outcome.outputs == {
        "obj": {"title": "Bees", "tags": ["a", "b"]},
        "num": 21,
        "text": "21!",
        "filtered": "a,b",
    }


async def test_executor_context_scope_and_upstream() -> None:
    seen: dict[str, Any] = {}

    async def tool(node: FlowNode, ctx: NodeContext) -> Any:
        seen[node.id] = (
            ctx.scope,
            dict(ctx.upstream),
            ctx.predecessors,
            ctx.tenant_id,
            ctx.attempt,
        )
        return node.id.upper()

    g = graph([("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL")], "in>a a>b")
    await run(g, {"x": 1}, executor=tool)
    scope, upstream, preds, tenant, attempt = seen["b"]
    assert scope == {
        "inputs": {"x": 1},
        "nodes": {"in": {"output": {"x": 1}}, "a": {"output": "A"}},
    }
    assert upstream == {"in": {"x": 1}, "a": "A"}
    assert preds == ("a",) and tenant == "tenant-1" and attempt == 1


async def test_empty_flow_completes_with_no_outputs() -> None:
    outcome, store, eid = await run(FlowGraph((), ()))
    assert outcome == RunOutcome(ExecutionStatus.COMPLETED, {})
    assert types(store, eid) == [ET.EXECUTION_STARTED, ET.EXECUTION_COMPLETED]


# -------------------------------------------------------------------------- concurrency


async def test_independent_branches_run_concurrently() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL", {"sleep": 0.3}),
            ("b", "TOOL", {"sleep": 0.3}),
            ("out", "OUTPUT"),
        ],
        "in>a in>b a>out b>out",
    )
    slow = Slow()
    started = time.monotonic()
    outcome, _, _ = await run(g, executor=slow)
    elapsed = time.monotonic() - started
    assert outcome.status == ExecutionStatus.COMPLETED
    assert 0.3 <= elapsed < 0.5, elapsed
    assert slow.max_active == 2


async def test_readiness_is_per_node_not_per_level() -> None:
    # in -> a (0.05) -> a2 (0.05)  and  in -> b (0.3): a2 must start long before b ends.
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL", {"sleep": 0.05}),
            ("a2", "TOOL", {"sleep": 0.05}),
            ("b", "TOOL", {"sleep": 0.3}),
        ],
        "in>a a>a2 in>b",
    )
    slow = Slow()
    await run(g, executor=slow)
    assert slow.finished["a2"] < slow.finished["b"] - 0.1


async def test_max_concurrency_caps_running_nodes() -> None:
    nodes: list[Any] = [("in", "INPUT")] + [(f"n{i}", "TOOL", {"sleep": 0.02}) for i in range(8)]
    g = graph(nodes, " ".join(f"in>n{i}" for i in range(8)))
    slow = Slow()
    outcome, _, _ = await run(g, executor=slow, max_concurrency=3)
    assert outcome.status == ExecutionStatus.COMPLETED
    assert slow.max_active == 3


async def test_thousand_node_chain_and_fan_out() -> None:
    n = 1000
    chain = graph(
        [("in", "INPUT"), *((f"n{i}", "TOOL") for i in range(n))],
        "in>n0 " + " ".join(f"n{i}>n{i + 1}" for i in range(n - 1)),
    )
    outcome, store, eid = await run(chain, executor=Slow())
    assert outcome.status == ExecutionStatus.COMPLETED
    assert len(store.events(eid)) == 2 + 2 * (n + 1)
    wide = graph(
        [("in", "INPUT"), *((f"n{i}", "TOOL") for i in range(n)), ("out", "OUTPUT")],
        " ".join(f"in>n{i} n{i}>out" for i in range(n)),
    )
    outcome, _, _ = await run(wide, executor=Slow())
    assert len(outcome.outputs["out"]) == n


# ---------------------------------------------------------------------------- conditions


def branching(expression: str) -> FlowGraph:
    return graph(
        [
            ("in", "INPUT"),
            ("check", "CONDITION", {"expression": expression}),
            ("yes", "TOOL"),
            ("yes2", "TOOL"),
            ("no", "TOOL"),
            ("no2", "TOOL"),
            ("out_yes", "OUTPUT"),
            ("out_no", "OUTPUT"),
        ],
        "in>check check-true>yes yes>yes2 yes2>out_yes check-false>no no>no2 no2>out_no",
    )


@pytest.mark.parametrize(("score", "taken", "pruned"), [(9, "yes", "no"), (2, "no", "yes")])
async def test_condition_prunes_the_untaken_branch(score: int, taken: str, pruned: str) -> None:
    slow = Slow()
    outcome, store, eid = await run(branching("inputs.score > 5"), {"score": score}, executor=slow)

    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {f"out_{taken}": f"{taken}2({taken})"}
    assert store.get(eid).nodes["check"].output is (score > 5)
    statuses = node_status(store, eid)
    for nid in (pruned, f"{pruned}2", f"out_{pruned}"):
        assert statuses[nid] == NodeStatus.SKIPPED
        assert types(store, eid, nid) == [ET.NODE_SKIPPED]
        assert first(store, eid, ET.NODE_SKIPPED, nid).data == {
            "reason": "branch not taken",
            "condition": "check",
        }
    for nid in (taken, f"{taken}2", f"out_{taken}"):
        assert statuses[nid] == NodeStatus.COMPLETED
    assert dict(slow.calls) == {taken: 1, f"{taken}2": 1}
    # the skip is reported right after the condition completes
    kinds = types(store, eid)
    assert kinds.index(ET.NODE_SKIPPED) == kinds.index(ET.NODE_COMPLETED, 4) + 1


async def test_node_with_one_live_in_edge_still_runs_after_its_live_predecessors() -> None:
    # in -> check; check-true -> a; check-false -> b; a -> join; b -> join; in -> slow -> join
    g = graph(
        [
            ("in", "INPUT"),
            ("check", "CONDITION", {"expression": "inputs.go"}),
            ("a", "TOOL"),
            ("b", "TOOL"),
            ("slow", "TOOL", {"sleep": 0.1}),
            ("join", "TOOL"),
            ("out", "OUTPUT"),
        ],
        "in>check check-true>a check-false>b a>join b>join in>slow slow>join join>out",
    )
    slow = Slow()
    outcome, store, eid = await run(g, {"go": False}, executor=slow)
    assert outcome.status == ExecutionStatus.COMPLETED
    assert node_status(store, eid)["a"] == NodeStatus.SKIPPED
    assert outcome.outputs == {"out": "join(b,slow)"}  # only completed predecessors
    assert slow.started["join"] >= slow.finished["slow"]


async def test_condition_edge_without_branch_is_always_followed() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("c", "CONDITION", {"expression": "False"}),
            ("x", "TOOL"),
            ("o", "OUTPUT"),
        ],
        "in>c c>x x>o",
    )
    outcome, _, _ = await run(g, executor=Slow())
    assert outcome.outputs == {"o": "x(c)"}


async def test_bad_condition_expression_fails_the_run() -> None:
    outcome, store, eid = await run(
        branching("nodes.nowhere.output > 1"), {"score": 1}, executor=Slow()
    )
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.failed_node_id == "check"
    assert node_status(store, eid)["check"] == NodeStatus.FAILED


# ---------------------------------------------------------------------- failures, retries


async def test_agent_without_executor_fails_with_not_configured() -> None:
    g = graph(
        [("in", "INPUT"), ("agent", "AGENT", {"retries": 3}), ("out", "OUTPUT")],
        "in>agent agent>out",
    )
    outcome, store, eid = await run(g)

    message = "AGENT nodes need an agent runtime (CrewAI), which is not configured"
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == f"node 'agent' failed: {message}"
    assert outcome.failed_node_id == "agent"
    assert store.get(eid).error == outcome.error
    failed = first(store, eid, ET.NODE_FAILED, "agent")
    assert failed.data == {"error": message, "code": "NOT_CONFIGURED", "attempts": 1}
    terminal = store.events(eid)[-1]
    assert terminal.type == ET.EXECUTION_FAILED and terminal.node_id == "agent"
    assert terminal.data == {"error": outcome.error, "nodeId": "agent"}
    assert node_status(store, eid)["out"] == NodeStatus.CANCELLED


@pytest.mark.parametrize(
    ("kind", "needs"),
    [("LLM", "an LLM runtime"), ("CREW", "a crew runtime (CrewAI)"), ("TOOL", "a tool sandbox")],
)
async def test_missing_runtimes_are_named(kind: str, needs: str) -> None:
    outcome, _, _ = await run(graph([("x", kind)], ""))
    assert outcome.error == f"node 'x' failed: {kind} nodes need {needs}, which is not configured"


async def test_unknown_kind_fails() -> None:
    outcome, _, _ = await run(graph([("x", "WIZARD")], ""))
    assert outcome.error == "node 'x' failed: unknown node kind 'WIZARD'"


async def test_node_timeout_fails_the_node() -> None:
    g = graph([("in", "INPUT"), ("a", "TOOL", {"sleep": 5, "timeoutSeconds": 0.1})], "in>a")
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=Slow())
    assert time.monotonic() - started < 1
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "node 'a' failed: node timed out after 0.1 s"
    assert first(store, eid, ET.NODE_FAILED, "a").data["code"] == "TIMEOUT"  # type: ignore[index]


async def test_default_node_timeout_applies() -> None:
    g = graph([("a", "TOOL", {"sleep": 5})], "")
    outcome, _, _ = await run(g, executor=Slow(), default_node_timeout=0.1)
    assert outcome.error == "node 'a' failed: node timed out after 0.1 s"


async def test_executor_raising_timeout_error_itself_is_not_mistaken_for_a_node_timeout() -> None:
    async def tool(node: FlowNode, ctx: NodeContext) -> Any:
        raise TimeoutError("upstream API timed out")

    outcome, _, _ = await run(graph([("a", "TOOL", {"timeoutSeconds": 5})], ""), executor=tool)
    assert outcome.error == "node 'a' failed: TimeoutError: upstream API timed out"


async def test_executor_leaking_cancelled_error_fails_the_node_instead_of_hanging() -> None:
    async def leaky(node: FlowNode, ctx: NodeContext) -> Any:
        raise asyncio.CancelledError  # e.g. an inner wait_for gone wrong; nobody cancelled us

    outcome, _, _ = await run(graph([("a", "TOOL")], ""), executor=leaky)
    assert outcome.error == "node 'a' failed: RuntimeError: the executor raised CancelledError"


async def test_sync_executors_are_accepted() -> None:
    def sync_tool(node: FlowNode, ctx: NodeContext) -> Any:
        return 42

    outcome, _, _ = await run(graph([("a", "TOOL"), ("o", "OUTPUT")], "a>o"), executor=sync_tool)
    assert outcome.outputs == {"o": 42}


async def test_retries_with_exponential_backoff_then_success() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL", {"fail": 2, "retries": 3, "retryBackoffSeconds": 0.05}),
            ("out", "OUTPUT"),
        ],
        "in>a a>out",
    )
    slow = Slow()
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=slow)
    elapsed = time.monotonic() - started

    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {"out": "a(in)"}
    assert slow.calls["a"] == 3
    assert elapsed >= 0.05 + 0.1  # 0.05 then 0.1
    assert types(store, eid, "a") == [ET.NODE_STARTED, ET.LOG, ET.LOG, ET.NODE_COMPLETED]
    logs = [e.data for e in store.events(eid) if e.type == ET.LOG]
    assert logs[0] == {
        "message": "attempt 1/4 failed: RuntimeError: flaky a #1; retrying in 0.05 s",
        "level": "warning",
        "attempt": 1,
        "error": "RuntimeError: flaky a #1",
    }
    assert logs[1] is not None and "retrying in 0.1 s" in logs[1]["message"]
    assert store.get(eid).nodes["a"].attempts == 3
    assert first(store, eid, ET.NODE_COMPLETED, "a").data == {"output": "a(in)", "attempts": 3}


async def test_retries_exhausted_fail_the_execution() -> None:
    g = graph([("a", "TOOL", {"fail": 10, "retries": 2, "retryBackoffSeconds": 0.01})], "")
    slow = Slow()
    outcome, store, eid = await run(g, executor=slow)
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "node 'a' failed: RuntimeError: flaky a #3"
    assert slow.calls["a"] == 3
    assert types(store, eid, "a") == [
        ET.NODE_STARTED,
        ET.LOG,
        ET.LOG,
        ET.LOG,
        ET.NODE_FAILED,
        ET.EXECUTION_FAILED,
    ]
    assert "retrying" not in str(store.events(eid)[-3].data)
    assert store.get(eid).nodes["a"].attempts == 3
    assert node_status(store, eid) == {"a": NodeStatus.FAILED}


async def test_timeouts_are_retried() -> None:
    g = graph(
        [
            (
                "a",
                "TOOL",
                {"sleep": 5, "timeoutSeconds": 0.05, "retries": 1, "retryBackoffSeconds": 0},
            )
        ],
        "",
    )
    slow = Slow()
    outcome, _, _ = await run(g, executor=slow)
    assert slow.calls["a"] == 2
    assert outcome.error == "node 'a' failed: node timed out after 0.05 s"


async def test_failure_cancels_running_siblings() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("bad", "TOOL", {"fail": 1, "sleep": 0.05}),
            ("long", "TOOL", {"sleep": 10}),
            ("after", "TOOL"),
        ],
        "in>bad in>long long>after",
    )
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=Slow())
    assert time.monotonic() - started < 1
    assert outcome.status == ExecutionStatus.FAILED and outcome.failed_node_id == "bad"
    statuses = node_status(store, eid)
    assert statuses["bad"] == NodeStatus.FAILED
    assert statuses["long"] == NodeStatus.CANCELLED
    assert statuses["after"] == NodeStatus.CANCELLED  # never started
    assert store.get(eid).nodes["after"].started_at is None


async def test_input_schema_is_enforced() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    g = graph([("in", "INPUT", {"schema": schema}), ("out", "OUTPUT")], "in>out")
    outcome, _, _ = await run(g, {"n": 3})
    assert outcome.outputs == {"out": {"n": 3}}
    outcome, store, eid = await run(g, {"n": "three"})
    assert outcome.status == ExecutionStatus.FAILED
    assert "do not match the flow's input schema" in (outcome.error or "")
    assert first(store, eid, ET.NODE_FAILED, "in").data["code"] == "BAD_USER_INPUT"  # type: ignore[index]


async def test_invalid_graphs_fail_instead_of_hanging() -> None:
    outcome, _, _ = await run(graph([("a", "TOOL")], "a>ghost"), executor=Slow())
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "invalid flow graph: edge a->ghost names unknown node 'ghost'"
    cyclic = graph([("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL")], "in>a a>b b>a")
    outcome, _, _ = await run(cyclic, executor=Slow())
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "flow graph cannot complete: nodes on a cycle or behind one: a, b"


# --------------------------------------------------------------------- timeouts, cancel


async def test_flow_timeout_fails_the_execution() -> None:
    g = graph([("in", "INPUT"), ("a", "TOOL", {"sleep": 10}), ("b", "TOOL")], "in>a a>b")
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=Slow(), flow_timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1
    assert outcome == RunOutcome(ExecutionStatus.FAILED, {}, "flow timed out after 0.2 s", None)
    terminal = store.events(eid)[-1]
    assert terminal.type == ET.EXECUTION_FAILED and terminal.node_id is None
    assert node_status(store, eid) == {
        "in": NodeStatus.COMPLETED,
        "a": NodeStatus.CANCELLED,
        "b": NodeStatus.CANCELLED,
    }


async def test_run_budget_overrides_flow_timeout() -> None:
    store = InMemoryExecutionStore()
    store.start("e")
    engine = FlowEngine(store, {"TOOL": Slow()}, flow_timeout=100)
    outcome = await engine.run("e", "t", graph([("a", "TOOL", {"sleep": 5})], ""), {}, budget=0.1)
    assert outcome.error == "flow timed out after 0.1 s"


async def test_cancel_mid_run_stops_within_a_second() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL", {"sleep": 10}),
            ("b", "TOOL", {"sleep": 10}),
            ("c", "TOOL"),
        ],
        "in>a in>b a>c b>c",
    )
    cancel = CancelSignal()
    asyncio.get_running_loop().call_later(0.2, cancel.set)
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=Slow(), cancel=cancel)
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 1, elapsed
    assert outcome.status == ExecutionStatus.CANCELLED and outcome.error is None
    assert node_status(store, eid) == {
        "in": NodeStatus.COMPLETED,
        "a": NodeStatus.CANCELLED,
        "b": NodeStatus.CANCELLED,
        "c": NodeStatus.CANCELLED,
    }
    terminal = store.events(eid)[-1]
    assert terminal.type == ET.EXECUTION_CANCELLED
    assert terminal.data == {"cancelledNodes": ["a", "b"]}


async def test_cancel_interrupts_a_long_start_batch_on_a_slow_store() -> None:
    class SlowStore(InMemoryExecutionStore):
        async def append_event(
            self, execution_id: str, type: EventType, node_id: str | None, data: Any
        ) -> ExecutionEvent:
            await asyncio.sleep(0.005)  # a database round trip
            return await super().append_event(execution_id, type, node_id, data)

    n = 400  # starting them all would take > 2 s
    g = graph(
        [("in", "INPUT"), *((f"n{i}", "TOOL", {"sleep": 10}) for i in range(n))],
        " ".join(f"in>n{i}" for i in range(n)),
    )
    cancel = CancelSignal()
    asyncio.get_running_loop().call_later(0.2, cancel.set)
    started = time.monotonic()
    outcome, store, eid = await run(g, store=SlowStore(), executor=Slow(), cancel=cancel)
    assert time.monotonic() - started < 0.2 + 1
    assert outcome.status == ExecutionStatus.CANCELLED
    statuses = node_status(store, eid)
    assert statuses.pop("in") == NodeStatus.COMPLETED
    assert set(statuses.values()) == {NodeStatus.CANCELLED} and len(statuses) == n


async def test_cancel_ignores_late_results_of_stubborn_executors() -> None:
    finished = asyncio.Event()

    async def stubborn(node: FlowNode, ctx: NodeContext) -> Any:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.8)  # swallows the cancel and keeps working
            try:
                await ctx.emit_token("late token")
            finally:
                finished.set()
            return "late result"
        return "never"

    g = graph([("in", "INPUT"), ("a", "TOOL"), ("out", "OUTPUT")], "in>a a>out")
    cancel = CancelSignal()
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=stubborn, cancel=cancel)
    assert time.monotonic() - started < 0.1 + 1
    assert outcome.status == ExecutionStatus.CANCELLED
    events_at_end = len(store.events(eid))
    await asyncio.wait_for(finished.wait(), 5)
    await asyncio.sleep(0.05)
    assert len(store.events(eid)) == events_at_end  # the late token was dropped
    assert node_status(store, eid)["a"] == NodeStatus.CANCELLED
    assert store.get(eid).status == ExecutionStatus.CANCELLED


# A node that is the only one able to progress runs in the run's own task (no node task);
# these pin down that it still behaves as if it had a task of its own.

_CHAIN_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("chain_var", default="unset")


async def test_chained_nodes_do_not_see_each_others_context_variables() -> None:
    seen: dict[str, str] = {}

    async def setter(node: FlowNode, ctx: NodeContext) -> Any:
        seen[node.id] = _CHAIN_VAR.get()
        _CHAIN_VAR.set(node.id)
        await asyncio.sleep(0)
        return node.id

    g = graph([("a", "TOOL"), ("b", "TOOL"), ("c", "TOOL")], "a>b b>c")
    outcome, _, _ = await run(g, executor=setter)
    assert outcome.status == ExecutionStatus.COMPLETED
    assert seen == {"a": "unset", "b": "unset", "c": "unset"}
    assert _CHAIN_VAR.get() == "unset"


async def test_cancel_interrupts_a_chained_node_and_names_it() -> None:
    g = graph([("in", "INPUT"), ("a", "TOOL", {"sleep": 10}), ("b", "TOOL")], "in>a a>b")
    cancel = CancelSignal()
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    started = time.monotonic()
    outcome, store, eid = await run(g, executor=Slow(), cancel=cancel)
    assert time.monotonic() - started < 0.1 + 1
    assert outcome.status == ExecutionStatus.CANCELLED
    assert store.events(eid)[-1].data == {"cancelledNodes": ["a"]}
    assert node_status(store, eid) == {
        "in": NodeStatus.COMPLETED,
        "a": NodeStatus.CANCELLED,
        "b": NodeStatus.CANCELLED,
    }
    # the run's task is not left with the cancel that stopped the node
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_node_timeout_of_a_chained_node_then_the_next_one_runs() -> None:
    g = graph(
        [("a", "TOOL", {"sleep": 10, "timeoutSeconds": 0.05, "retries": 1}), ("b", "TOOL")],
        "a>b",
    )
    slow = Slow()
    outcome, store, eid = await run(g, executor=slow)
    assert outcome.status == ExecutionStatus.FAILED
    assert slow.calls["a"] == 2 and "b" not in slow.calls
    assert first(store, eid, ET.NODE_FAILED, "a").data == {
        "error": "node timed out after 0.05 s",
        "code": "TIMEOUT",
        "attempts": 2,
    }


async def _run_then_stop_the_worker(executor: Any) -> tuple[InMemoryExecutionStore, float]:
    store = InMemoryExecutionStore()
    store.start("e")
    g = graph([("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL")], "in>a a>b")
    task = asyncio.create_task(FlowEngine(store, {"TOOL": executor}).run("e", "t", g, {}))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return store, time.monotonic() - started


async def test_worker_shutdown_during_a_chained_node_leaves_the_execution_running() -> None:
    node_cancelled = asyncio.Event()

    async def long(node: FlowNode, ctx: NodeContext) -> Any:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            node_cancelled.set()
            raise

    store, _ = await _run_then_stop_the_worker(long)
    assert node_cancelled.is_set()
    assert store.get("e").status == ExecutionStatus.RUNNING
    assert not any(e.type in TERMINAL_EVENTS for e in store.events("e"))
    assert node_status(store, "e")["a"] == NodeStatus.RUNNING


async def test_worker_shutdown_is_not_held_up_by_a_stubborn_chained_node() -> None:
    async def stubborn(node: FlowNode, ctx: NodeContext) -> Any:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.8)  # swallows the cancel and keeps working
        return "late"

    store, elapsed = await _run_then_stop_the_worker(stubborn)
    assert elapsed < 0.5
    assert store.get("e").status == ExecutionStatus.RUNNING
    assert not any(e.type in TERMINAL_EVENTS for e in store.events("e"))


async def test_a_chain_of_instant_nodes_lets_the_event_loop_run_meanwhile() -> None:
    async def instant(node: FlowNode, ctx: NodeContext) -> Any:
        return None

    n = 400
    nodes = [(f"n{i}", "TOOL") for i in range(n)]
    edges = " ".join(f"n{i}>n{i + 1}" for i in range(n - 1))
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    other = asyncio.create_task(other_work())
    try:
        outcome, _, _ = await run(graph(nodes, edges), executor=instant)
    finally:
        other.cancel()
    assert outcome.status == ExecutionStatus.COMPLETED
    assert turns >= n // 64  # the run gave the loop a turn every few dozen nodes


async def test_cancel_before_start() -> None:
    cancel = CancelSignal()
    cancel.set()
    slow = Slow()
    outcome, store, eid = await run(graph([("a", "TOOL")], ""), executor=slow, cancel=cancel)
    assert outcome.status == ExecutionStatus.CANCELLED
    assert not slow.calls
    assert node_status(store, eid) == {"a": NodeStatus.CANCELLED}


async def test_plain_asyncio_event_works_as_cancel_token() -> None:
    store = InMemoryExecutionStore()
    store.start("e")
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    engine = FlowEngine(store, {"TOOL": Slow()})
    outcome = await engine.run("e", "t", graph([("a", "TOOL", {"sleep": 5})], ""), {}, event)
    assert outcome.status == ExecutionStatus.CANCELLED


# ------------------------------------------------------------------------ tokens and logs


async def test_tokens_and_logs_become_events_of_their_node() -> None:
    async def llm(node: FlowNode, ctx: NodeContext) -> Any:
        await ctx.log("calling model", model="scripted")
        text = ""
        for piece in ("Hel", "lo"):
            await ctx.emit_token(piece)
            text += piece
        return text

    g = graph([("in", "INPUT"), ("llm", "LLM"), ("out", "OUTPUT")], "in>llm llm>out")
    outcome, store, eid = await run(g, executor=llm)
    assert outcome.outputs == {"out": "Hello"}
    assert types(store, eid, "llm") == [
        ET.NODE_STARTED,
        ET.LOG,
        ET.TOKEN,
        ET.TOKEN,
        ET.NODE_COMPLETED,
    ]
    llm_events = [e for e in store.events(eid) if e.node_id == "llm"]
    assert llm_events[1].data == {"model": "scripted", "message": "calling model", "level": "info"}
    assert [e.data for e in llm_events[2:4]] == [
        {"delta": "Hel", "index": 0},
        {"delta": "lo", "index": 1},
    ]


# ----------------------------------------------------------------------------- resume


async def test_resume_from_checkpoint_does_not_rerun_completed_nodes() -> None:
    g = graph(
        [
            ("in", "INPUT"),
            ("a", "TOOL"),
            ("b", "TOOL", {"sleep": 10}),
            ("c", "TOOL"),
            ("out", "OUTPUT"),
        ],
        "in>a a>b b>c c>out",
    )
    store = InMemoryExecutionStore()
    eid = new_id()
    store.start(eid)
    slow = Slow()
    # Worker 1 runs until b is in flight, then dies (its task is cancelled: no terminal write).
    worker1 = asyncio.create_task(FlowEngine(store, {"TOOL": slow}).run(eid, "t", g, {"k": 1}))
    while slow.calls["b"] == 0:
        await asyncio.sleep(0.01)
    worker1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker1
    record = store.get(eid)
    assert record.status == ExecutionStatus.RUNNING
    assert node_status(store, eid) == {
        "in": NodeStatus.COMPLETED,
        "a": NodeStatus.COMPLETED,
        "b": NodeStatus.RUNNING,
    }
    first_run_events = len(store.events(eid))

    # The lease expires; worker 2 resumes (b is fast this time).
    store.requeue(eid)
    store.start(eid)
    fast = graph(
        [("in", "INPUT"), ("a", "TOOL"), ("b", "TOOL"), ("c", "TOOL"), ("out", "OUTPUT")],
        "in>a a>b b>c c>out",
    )
    outcome = await FlowEngine(store, {"TOOL": slow}).run(eid, "t", fast, {"k": 1})

    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {"out": "c(b)"}
    assert dict(slow.calls) == {"a": 1, "b": 2, "c": 1}
    resumed = store.events(eid)[first_run_events:]
    assert [e.sequence for e in store.events(eid)] == list(range(1, len(store.events(eid)) + 1))
    assert resumed[0].type == ET.EXECUTION_STARTED
    assert resumed[0].data == {"resumed": True, "checkpointedNodes": 2}
    assert [(e.type, e.node_id) for e in resumed if e.node_id in ("in", "a")] == []
    assert resumed[-1].type == ET.EXECUTION_COMPLETED
    check_event_log(resumed)


async def test_resume_keeps_checkpointed_condition_and_skips() -> None:
    g = branching("inputs.score > 5")
    store = InMemoryExecutionStore()
    eid = new_id()
    store.start(eid)
    # A previous worker completed in + check (False) and recorded the skips.
    for result in (
        NodeResult("in", NodeStatus.COMPLETED, output={"score": 1}, attempts=1),
        NodeResult("check", NodeStatus.COMPLETED, output=False, attempts=1),
        NodeResult("yes", NodeStatus.SKIPPED),
        NodeResult("no", NodeStatus.RUNNING),  # not a checkpoint: runs again
    ):
        await store.save_node_result(eid, result)
    slow = Slow()
    outcome = await FlowEngine(store, {"TOOL": slow}).run(eid, "t", g, {"score": 9})
    # the checkpointed condition wins over the (different) inputs of this run
    assert outcome.outputs == {"out_no": "no2(no)"}
    assert dict(slow.calls) == {"no": 1, "no2": 1}
    skipped = [e.node_id for e in store.events(eid) if e.type == ET.NODE_SKIPPED]
    assert skipped == ["yes2", "out_yes"]  # "yes" was already recorded as skipped


async def test_resume_with_everything_checkpointed_just_finishes() -> None:
    g = graph([("in", "INPUT"), ("out", "OUTPUT")], "in>out")
    store = InMemoryExecutionStore()
    eid = new_id()
    store.start(eid)
    await store.save_node_result(eid, NodeResult("in", NodeStatus.COMPLETED, output={}))
    await store.save_node_result(eid, NodeResult("out", NodeStatus.COMPLETED, output="done"))
    outcome = await FlowEngine(store).run(eid, "t", g, {})
    assert outcome.outputs == {"out": "done"}
    assert types(store, eid) == [ET.EXECUTION_STARTED, ET.EXECUTION_COMPLETED]


# ------------------------------------------------------------------------- store errors


async def test_store_failure_propagates_and_leaves_the_execution_running() -> None:
    class Broken(InMemoryExecutionStore):
        async def save_node_result(self, execution_id: str, result: NodeResult) -> None:
            if result.node_id == "b":
                raise ConnectionError("database went away")
            await super().save_node_result(execution_id, result)

    store = Broken()
    store.start("e")
    g = graph([("a", "TOOL", {"sleep": 5}), ("b", "TOOL")], "")
    with pytest.raises(ConnectionError):
        await FlowEngine(store, {"TOOL": Slow()}).run("e", "t", g, {})
    assert store.get("e").status == ExecutionStatus.RUNNING
    assert not any(e.type in TERMINAL_EVENTS for e in store.events("e"))


def test_engine_rejects_nonsense_settings() -> None:
    store = InMemoryExecutionStore()
    with pytest.raises(ValueError):
        FlowEngine(store, flow_timeout=0)
    with pytest.raises(ValueError):
        FlowEngine(store, max_concurrency=0)
    assert FlowEngine(store, flow_timeout=None).flow_timeout is None


def test_bad_user_input_is_what_template_errors_raise() -> None:
    # The engine treats BadUserInput as not retryable; make sure the helpers agree.
    from domain.executions.builtins import render_value

    with pytest.raises(BadUserInput):
        render_value(
            "{{ nodes.x.output.__class__ }}", {"inputs": {}, "nodes": {"x": {"output": 1}}}
        )
