"""APPROVAL nodes in the engine, against the in-memory store (no services)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from domain.executions.engine import FlowEngine
from domain.executions.events import EventType
from domain.executions.memory import InMemoryExecutionStore
from domain.executions.ports import CancelSignal, NodeContext, RunOutcome
from domain.executions.state import ExecutionStatus, NodeStatus
from domain.flows.graph import validate_flow
from domain.flows.model import FlowEdge, FlowGraph, FlowNode

pytestmark = pytest.mark.timeout(30)
ET = EventType


def approval_graph(config: dict[str, Any] | None = None, *, side: float | None = None) -> FlowGraph:
    """in -> ask (APPROVAL) -true-> yes / -false-> no; optionally in -> side (slow TOOL)."""
    nodes = [
        FlowNode("in", "INPUT"),
        FlowNode("ask", "APPROVAL", "ask", {"prompt": "Ship {{ inputs.what }}?", **(config or {})}),
        FlowNode("yes", "OUTPUT", "yes", {"value": "shipped {{ nodes.ask.output.input.n }}"}),
        FlowNode("no", "OUTPUT", "no", {"value": "held"}),
    ]
    edges = [
        FlowEdge("in", "ask"),
        FlowEdge("ask", "yes", "true"),
        FlowEdge("ask", "no", "false"),
    ]
    if side is not None:
        nodes.append(FlowNode("side", "TOOL", "side", {"sleep": side}))
        nodes.append(FlowNode("sideout", "OUTPUT", "sideout"))
        edges += [FlowEdge("in", "side"), FlowEdge("side", "sideout")]
    return FlowGraph(tuple(nodes), tuple(edges))


async def sleeper(node: FlowNode, ctx: NodeContext) -> Any:
    await asyncio.sleep(node.config.get("sleep", 0))
    return node.id


async def run(
    store: InMemoryExecutionStore,
    eid: str,
    g: FlowGraph,
    *,
    wake: bool = False,
    cancel: CancelSignal | None = None,
    poll: float = 0.02,
) -> RunOutcome:
    store.start(eid)
    engine = FlowEngine(store, {"TOOL": sleeper}, approval_poll=poll)
    return await engine.run(eid, "tenant", g, {"what": "v2"}, cancel, wake=wake)


def types(store: InMemoryExecutionStore, eid: str) -> list[tuple[EventType, str | None]]:
    return [(e.type, e.node_id) for e in store.events(eid)]


def statuses(store: InMemoryExecutionStore, eid: str) -> dict[str, NodeStatus]:
    return {k: v.status for k, v in store.get(eid).nodes.items()}


def test_approval_config_is_validated_at_write_time() -> None:
    good = approval_graph({"inputSchema": {"type": "object"}, "timeoutSeconds": 60})
    assert validate_flow(good).valid
    bad = approval_graph(
        {
            "prompt": "{{ nope }}",
            "inputSchema": {"$ref": "https://example.com/s.json"},
            "timeoutSeconds": -1,
            "onTimeout": "explode",
        }
    )
    result = validate_flow(bad)
    assert not result.valid
    fields = result.field_errors
    for key in ("prompt", "inputSchema", "timeoutSeconds", "onTimeout"):
        assert f"nodes[1].config.{key}" in fields, fields
    # No prompt at all; a branch other than true/false.
    nodes = (FlowNode("in", "INPUT"), FlowNode("ask", "APPROVAL"), FlowNode("out", "OUTPUT"))
    edges = (FlowEdge("in", "ask"), FlowEdge("ask", "out", "maybe"))
    result = validate_flow(FlowGraph(nodes, edges))
    assert "nodes[1].config.prompt" in result.field_errors
    assert "edges[1].branch" in result.field_errors
    # Unbranched out-edges are fine (followed whatever the answer).
    ok = FlowGraph(
        (FlowNode("in", "INPUT"), FlowNode("ask", "APPROVAL", None, {"prompt": "ok?"}),
         FlowNode("out", "OUTPUT")),
        (FlowEdge("in", "ask"), FlowEdge("ask", "out")),
    )  # fmt: skip
    assert validate_flow(ok).valid


async def test_a_run_waits_then_resumes_on_the_true_branch_without_a_second_start() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph({"inputSchema": {"type": "object"}})
    outcome = await run(store, eid, g)
    assert outcome.status == ExecutionStatus.WAITING
    assert store.get(eid).status == ExecutionStatus.WAITING
    assert statuses(store, eid)["ask"] == NodeStatus.WAITING
    assert types(store, eid)[-3:] == [
        (ET.NODE_STARTED, "ask"),
        (ET.NODE_WAITING, "ask"),
        (ET.EXECUTION_WAITING, None),
    ]
    waiting = store.events(eid)[-2].data
    assert waiting is not None and waiting["prompt"] == "Ship v2?"
    assert waiting["inputSchema"] == {"type": "object"} and waiting["expiresAt"] is None

    store.answer(eid, "ask", True, {"n": 7}, "go", by="ann@example.com")
    assert store.get(eid).status == ExecutionStatus.PENDING
    outcome = await run(store, eid, g, wake=True)
    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {"yes": "shipped 7"}
    assert statuses(store, eid) == {
        "in": NodeStatus.COMPLETED,
        "ask": NodeStatus.COMPLETED,
        "yes": NodeStatus.COMPLETED,
        "no": NodeStatus.SKIPPED,
    }
    output = store.get(eid).nodes["ask"].output
    assert output["approved"] is True and output["input"] == {"n": 7}
    assert output["comment"] == "go" and output["by"] == "ann@example.com" and output["at"]
    seen = types(store, eid)
    assert seen.count((ET.EXECUTION_STARTED, None)) == 1
    assert seen.count((ET.NODE_STARTED, "ask")) == 1 and seen.count((ET.NODE_WAITING, "ask")) == 1
    assert seen[-1] == (ET.EXECUTION_COMPLETED, None)


async def test_a_rejection_takes_the_false_branch() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph()
    assert (await run(store, eid, g)).status == ExecutionStatus.WAITING
    store.answer(eid, "ask", False)
    outcome = await run(store, eid, g, wake=True)
    assert outcome.outputs == {"no": "held"}
    assert statuses(store, eid)["yes"] == NodeStatus.SKIPPED


async def test_parallel_branches_keep_running_and_an_answer_meanwhile_needs_no_wait() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph(side=0.5)

    async def answer_soon() -> None:
        while ("ask" not in store.get(eid).nodes) or (
            store.get(eid).nodes["ask"].status != NodeStatus.WAITING
        ):
            await asyncio.sleep(0.01)
        assert statuses(store, eid).get("side") == NodeStatus.RUNNING  # still running
        store.answer(eid, "ask", True, {"n": 1})

    answering = asyncio.create_task(answer_soon())
    outcome = await run(store, eid, g)
    await answering
    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs == {"yes": "shipped 1", "sideout": "side"}
    seen = types(store, eid)
    assert (ET.EXECUTION_WAITING, None) not in seen  # the run never stopped
    # The answer was picked up while the side branch still ran.
    assert seen.index((ET.NODE_COMPLETED, "ask")) < seen.index((ET.NODE_COMPLETED, "side"))


async def test_the_run_waits_only_once_nothing_else_can_progress() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    outcome = await run(store, eid, approval_graph(side=0.2))
    assert outcome.status == ExecutionStatus.WAITING
    seen = types(store, eid)
    assert seen.index((ET.NODE_COMPLETED, "side")) < seen.index((ET.EXECUTION_WAITING, None))
    assert outcome.outputs == {"sideout": "side"}


async def test_a_timeout_rejects_by_default_as_the_system() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    # A slow side branch keeps the run going until the approval expired.
    outcome = await run(store, eid, approval_graph({"timeoutSeconds": 0.05}, side=0.3))
    assert outcome.status == ExecutionStatus.COMPLETED
    assert outcome.outputs["no"] == "held"
    output = store.get(eid).nodes["ask"].output
    assert output["approved"] is False and output["by"] == "system"


async def test_a_timeout_with_on_timeout_fail_fails_the_run() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph({"timeoutSeconds": 0.05, "onTimeout": "fail"}, side=0.3)
    outcome = await run(store, eid, g)
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.failed_node_id == "ask" and "timed out" in (outcome.error or "")
    failed = [e for e in store.events(eid) if e.type == ET.NODE_FAILED]
    assert failed[0].node_id == "ask" and failed[0].data and failed[0].data["code"] == "TIMEOUT"
    assert statuses(store, eid)["ask"] == NodeStatus.FAILED


async def test_an_expired_approval_of_a_waiting_run_is_answered_on_resume() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph({"timeoutSeconds": 0.05, "onTimeout": "fail"})
    assert (await run(store, eid, g)).status == ExecutionStatus.WAITING
    await asyncio.sleep(0.1)
    await store.expire_approval(eid, "ask")  # what the sweeper does for a WAITING run
    store.get(eid).status = ExecutionStatus.PENDING
    outcome = await run(store, eid, g, wake=True)
    assert outcome.status == ExecutionStatus.FAILED and outcome.failed_node_id == "ask"


async def test_cancel_while_an_approval_waits_beside_a_running_branch() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    cancel = CancelSignal()

    async def cancel_when_waiting() -> None:
        while store.get(eid).nodes.get("ask") is None or (
            store.get(eid).nodes["ask"].status != NodeStatus.WAITING
        ):
            await asyncio.sleep(0.01)
        cancel.set()

    task = asyncio.create_task(cancel_when_waiting())
    outcome = await run(store, eid, approval_graph(side=5.0), cancel=cancel)
    await task
    assert outcome.status == ExecutionStatus.CANCELLED
    last = store.events(eid)[-1]
    assert last.type == ET.EXECUTION_CANCELLED and last.data
    assert set(last.data["cancelledNodes"]) == {"side", "ask"}
    assert statuses(store, eid)["ask"] == NodeStatus.CANCELLED


async def test_an_answer_before_the_suspend_is_not_lost() -> None:
    """The store reports answers that arrived after the last look: the run goes on."""
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = approval_graph()
    original = store.request_approval

    async def request_then_answer(execution_id: str, request: Any) -> Any:
        stored = await original(execution_id, request)
        store.answer(execution_id, request.node_id, True, {"n": 3})
        return stored  # the engine sees it unanswered and parks the node

    store.request_approval = request_then_answer  # type: ignore[method-assign]
    outcome = await run(store, eid, g)
    assert outcome.status == ExecutionStatus.COMPLETED and outcome.outputs == {"yes": "shipped 3"}
    assert (ET.EXECUTION_WAITING, None) not in types(store, eid)


async def test_two_approvals_wait_and_resume_one_at_a_time() -> None:
    store, eid = InMemoryExecutionStore(), uuid.uuid4().hex
    g = FlowGraph(
        (
            FlowNode("in", "INPUT"),
            FlowNode("legal", "APPROVAL", None, {"prompt": "legal?"}),
            FlowNode("money", "APPROVAL", None, {"prompt": "budget?"}),
            FlowNode("out", "OUTPUT"),
        ),
        (
            FlowEdge("in", "legal"),
            FlowEdge("in", "money"),
            FlowEdge("legal", "out", "true"),
            FlowEdge("money", "out", "true"),
        ),
    )
    assert (await run(store, eid, g)).status == ExecutionStatus.WAITING
    waiting = [e for e in store.events(eid) if e.type == ET.EXECUTION_WAITING]
    assert waiting[-1].data == {"waitingNodes": ["legal", "money"]}
    store.answer(eid, "legal", True)
    assert (await run(store, eid, g, wake=True)).status == ExecutionStatus.WAITING
    assert statuses(store, eid)["legal"] == NodeStatus.COMPLETED
    assert statuses(store, eid)["money"] == NodeStatus.WAITING
    store.answer(eid, "money", True)
    outcome = await run(store, eid, g, wake=True)
    assert outcome.status == ExecutionStatus.COMPLETED and set(outcome.outputs["out"]) == {
        "legal",
        "money",
    }
    seen = types(store, eid)
    assert seen.count((ET.NODE_WAITING, "money")) == 1  # asked once, across three runs
    assert seen.count((ET.EXECUTION_WAITING, None)) == 2
    assert seen.count((ET.EXECUTION_STARTED, None)) == 1
