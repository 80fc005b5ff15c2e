"""OpenTelemetry spans of a real run, exported in memory: the HTTP request (continuing
the caller's `traceparent`) -> dispatch -> the worker's run -> each node -> the LLM call
and the sandbox run, all in one trace, with tenant and execution ids; and the trace
context carried through the arq queue in Redis. No network: no OTLP endpoint is used."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.conftest import register, serving
from tests.integration.test_metrics import local_provider, tool_llm_flow
from tests.support import builders as b
from tests.support.client import GQL, op
from tests.support.flows import create_flow, execute, wait_status

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
FIRST_CALL_TIMEOUT = 150.0


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def eventually_spans(
    exporter: InMemorySpanExporter, execution_id: str, names: set[str]
) -> Sequence[ReadableSpan]:
    """The spans of the trace once `names` have all ended (the run's own span ends just
    after the status the test waited for is visible)."""
    for _ in range(200):
        spans = exporter.get_finished_spans()
        if names <= {s.name for s in spans}:
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"missing spans of {execution_id}: {[s.name for s in spans]}")


async def test_one_trace_from_the_request_to_the_llm_call_and_the_sandbox_run(
    settings: Any,
) -> None:
    from server.app import create_app
    from server.bootstrap import build_container

    exporter = InMemorySpanExporter()
    s = settings.model_copy()
    container = build_container(s, rate_limits={}, span_exporter=exporter)
    assert container.tracing.enabled
    async with serving(create_app(container)) as url, aclosing(GQL(url)) as gql:
        s.self_url = url
        team = await register(gql)
        tool = await b.tool(gql, team.token)
        provider = await local_provider(gql, team)
        flow = await create_flow(gql, team.token, tool_llm_flow(tool["id"], provider))
        exporter.clear()
        resp = await gql.http.post(
            "/graphql",
            json={"query": op("ExecuteFlow"), "variables": {"id": flow["id"], "inputs": {}}},
            headers={
                "Authorization": f"Bearer {team.token}",
                "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
            },
        )
        body = resp.json()
        assert not body.get("errors"), body
        execution_id = body["data"]["executeFlow"]["id"]
        done = await wait_status(gql, team.token, execution_id, timeout=FIRST_CALL_TIMEOUT)
        names = {
            "graphql ExecuteFlow",
            "execution.dispatch",
            "execution.run",
            "node LLM",
            "llm.call",
            "node TOOL",
            "sandbox.run",
        }
        spans = await eventually_spans(exporter, execution_id, names)
    traced = [s for s in spans if s.context is not None and s.context.trace_id == int(TRACE_ID, 16)]

    request = one(traced, "graphql ExecuteFlow")
    assert request.kind == SpanKind.SERVER
    assert parent_of(request) == int(CALLER_SPAN, 16)  # the caller's trace continues
    assert attrs(request)["crewgraph.tenant_id"] == team.tenant_id
    assert attrs(request)["http.response.status_code"] == 200

    dispatch = one(traced, "execution.dispatch")
    run = one(traced, "execution.run")
    llm_node, tool_node = one(traced, "node LLM"), one(traced, "node TOOL")
    llm_call, sandbox_run = one(traced, "llm.call"), one(traced, "sandbox.run")
    chain = [
        (dispatch, request),
        (run, dispatch),
        (llm_node, run),
        (tool_node, run),
        (llm_call, llm_node),
        (sandbox_run, tool_node),
    ]
    for child, parent in chain:
        assert parent_of(child) == span_id(parent), (child.name, parent.name)
    for span in (dispatch, run, llm_node, tool_node, llm_call):
        assert attrs(span)["crewgraph.tenant_id"] == team.tenant_id, span.name
        assert attrs(span)["crewgraph.execution_id"] == execution_id, span.name
    assert attrs(sandbox_run)["crewgraph.tenant_id"] == team.tenant_id
    assert attrs(llm_node)["crewgraph.node_id"] == "ask"
    assert attrs(tool_node)["crewgraph.node_id"] == "tool"
    assert attrs(llm_call)["gen_ai.request.model"] == "scripted"
    assert llm_call.status.is_ok
    # The sandbox span shows the run's outcome; without a backend here it is an error.
    assert sandbox_run.status.is_ok == (done["status"] == "COMPLETED"), json.dumps(done)[:2000]
    # Nothing of the run leaked into another trace.
    assert all(s in traced for s in spans if s.name in names)


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's own
async def test_a_run_on_an_arq_worker_continues_the_request_trace(settings: Any) -> None:
    """API in arq mode and a worker (its `run_execution` job, consuming the real queue in
    Redis): the worker's spans are children of the API's dispatch span."""
    from arq import Worker
    from arq.connections import RedisSettings
    from arq.worker import func

    from server.app import create_app
    from server.bootstrap import build_container
    from server.workers import JOB_NAME, execution_job

    exporter = InMemorySpanExporter()
    queue = f"{settings.redis_prefix}:traced-{uuid.uuid4().hex[:8]}"
    # No sweeper re-dispatch while the first LLM call is slow: the run under test is the
    # one the request dispatched.
    s = settings.model_copy(
        update={"worker_mode": "arq", "worker_queue": queue, "redispatch_after_seconds": 600.0}
    )
    api = build_container(s, rate_limits={}, span_exporter=exporter)
    worker = build_container(s, rate_limits={}, with_runner=True, span_exporter=exporter)
    async with serving(create_app(api)) as url, aclosing(GQL(url)) as gql:
        s.self_url = url
        await worker.start()
        try:
            team = await register(gql)
            provider = await local_provider(gql, team)
            flow = await create_flow(gql, team.token, llm_flow(provider))
            exporter.clear()
            run = await execute(gql, team.token, flow["id"])
            arq = Worker(
                functions=[func(execution_job(worker), name=JOB_NAME, keep_result=0)],
                queue_name=queue,
                redis_settings=RedisSettings.from_dsn(s.redis_url),
                burst=True,
                poll_delay=0.05,
                handle_signals=False,
                keep_result=0,
            )
            await asyncio.wait_for(arq.async_run(), FIRST_CALL_TIMEOUT)
            await arq.close()
            done = await wait_status(gql, team.token, run["id"], timeout=FIRST_CALL_TIMEOUT)
            assert done["status"] == "COMPLETED", json.dumps(done)[:2000]
            names = {"graphql ExecuteFlow", "execution.dispatch", "execution.run", "llm.call"}
            spans = await eventually_spans(exporter, run["id"], names)
        finally:
            await worker.aclose()
    request, dispatch = one(spans, "graphql ExecuteFlow"), one(spans, "execution.dispatch")
    node, call = one(spans, "node LLM"), one(spans, "llm.call")
    # A job that finds its run claimed or done (a duplicate delivery) runs nothing and
    # leaves an `execution.run` span without nodes: the one that ran is the node's parent.
    run_span = next(s for s in spans if s.name == "execution.run" and span_id(s) == parent_of(node))
    assert parent_of(dispatch) == span_id(request)
    assert attrs(dispatch)["messaging.destination.name"] == queue
    assert parent_of(run_span) == span_id(dispatch)  # across the queue
    assert parent_of(node) == span_id(run_span) and parent_of(call) == span_id(node)
    assert attrs(run_span)["crewgraph.execution_id"] == run["id"]
    assert attrs(call)["crewgraph.tenant_id"] == team.tenant_id
    trace_ids = {x.context.trace_id for x in (request, dispatch, run_span, node, call) if x.context}
    assert len(trace_ids) == 1


def llm_flow(provider_id: str) -> dict[str, Any]:
    return {
        "name": f"traced-{uuid.uuid4().hex[:8]}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "ask", "kind": "LLM", "config": {"providerId": provider_id, "prompt": "hi"}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "ask"}, {"source": "ask", "target": "out"}],
    }


async def test_the_trace_context_travels_with_the_arq_job(settings: Any) -> None:
    from domain.executions.records import ExecutionRef
    from server.tracing import build_tracing
    from server.workers import ArqDispatcher

    exporter = InMemorySpanExporter()
    tracing = build_tracing(exporter)
    queue = f"{settings.redis_prefix}:trace-{uuid.uuid4().hex[:8]}"
    dispatcher = ArqDispatcher(settings.redis_url, queue, tracing)
    ref = ExecutionRef(str(uuid.uuid4()), "tenant_x", str(uuid.uuid4()))
    try:
        with tracing.span("request", {}):
            await dispatcher.dispatch(ref)
        pool = await dispatcher._arq()
        jobs = await pool.queued_jobs(queue_name=queue)
        assert len(jobs) == 1
        job = jobs[0]
        assert job.args == (ref.tenant_id, ref.tenant_schema, ref.execution_id)
        carrier = job.kwargs["trace"]
        # What `crewgraph worker` does with it (server/workers.py, run_execution).
        with tracing.attached(carrier), tracing.span("execution.run", {}):
            pass
        with tracing.attached({"traceparent": "garbage"}), tracing.span("stray", {}):
            pass
        with tracing.attached("not a map"), tracing.span("stray2", {}):
            pass
    finally:
        pool = await dispatcher._arq()
        await pool.delete(queue)
        await dispatcher.aclose()
    spans = exporter.get_finished_spans()
    dispatch, run = one(spans, "execution.dispatch"), one(spans, "execution.run")
    assert parent_of(dispatch) == span_id(one(spans, "request"))
    assert parent_of(run) == span_id(dispatch)
    assert attrs(dispatch)["crewgraph.execution_id"] == ref.execution_id
    assert attrs(dispatch)["messaging.destination.name"] == queue
    assert parent_of(one(spans, "stray")) is None  # a malformed carrier starts a new trace
    assert parent_of(one(spans, "stray2")) is None


async def test_tracing_is_off_without_an_endpoint(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domain.executions.records import ExecutionRef
    from server.tracing import build_tracing
    from server.workers import ArqDispatcher

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing = build_tracing()
    assert not tracing.enabled and tracing.inject() == {}
    queue = f"{settings.redis_prefix}:trace-{uuid.uuid4().hex[:8]}"
    dispatcher = ArqDispatcher(settings.redis_url, queue, tracing)
    try:
        await dispatcher.dispatch(ExecutionRef(str(uuid.uuid4()), "tenant_x", str(uuid.uuid4())))
        pool = await dispatcher._arq()
        jobs = await pool.queued_jobs(queue_name=queue)
        assert [j.kwargs for j in jobs] == [{}]  # the job is what it always was
    finally:
        pool = await dispatcher._arq()
        await pool.delete(queue)
        await dispatcher.aclose()

    # With an endpoint set it is on (nothing is sent: no span was made).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    on = build_tracing()
    assert on.enabled
    on.shutdown()
