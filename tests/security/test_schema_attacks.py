"""User JSON Schemas (tool `inputSchema`, INPUT node `schema`) must neither make the API
fetch URLs (SSRF through `$ref`) nor stall it (ReDoS through `pattern`, exponential
`$ref` fan-out, quadratic `uniqueItems`, huge or deeply nested schemas)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from domain import json_schema
from domain.json_schema import SchemaUnusable, instance_errors, schema_problems
from tests.conftest import Team, member_token
from tests.support import builders as b
from tests.support.client import GQL, error_code

pytestmark = pytest.mark.timeout(60)

EVIL = "^(a+)+$"  # catastrophic backtracking on "aaaa...!" for a backtracking engine
ATTACK = "a" * 5000 + "!"


class _Counter(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b'{"type": "string", "description": "SECRET-FROM-INTERNAL-HOST"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def internal_host() -> Iterator[tuple[str, type[_Counter]]]:
    """An "internal" HTTP service on a free port that counts the requests it gets."""
    handler = type("Handler", (_Counter,), {"hits": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/schema.json", handler
    finally:
        server.shutdown()
        server.server_close()


def _fields(body: dict[str, Any]) -> dict[str, str]:
    assert error_code(body) == "BAD_USER_INPUT", body
    fields: dict[str, str] = body["errors"][0]["extensions"]["fields"]
    return fields


def _input_flow(schema: Any) -> dict[str, Any]:
    return {
        "name": "schema-attack",
        "description": "d",
        "nodes": [
            {"id": "in", "kind": "INPUT", "config": {"schema": schema}},
            {"id": "out", "kind": "OUTPUT"},
        ],
        "edges": [{"source": "in", "target": "out"}],
    }


# -- SSRF through $ref -------------------------------------------------------------------------


async def test_tool_with_remote_ref_is_refused_without_a_fetch(
    gql: GQL, team: Team, internal_host: tuple[str, type[_Counter]]
) -> None:
    url, counter = internal_host
    token = await member_token(gql, team, "MEMBER")
    tool = {"name": "ssrf", "description": "d", "kind": "CUSTOM_PYTHON"}
    tool |= {"config": {"code": b.PY_CODE}}
    for schema in (
        {"$ref": url},
        {"type": "object", "properties": {"q": {"$ref": url}}},
        {"$defs": {"x": {"$dynamicRef": url}}},
    ):
        body = await gql.op("CreateTool", {"input": {**tool, "inputSchema": schema}}, token=token)
        fields = _fields(body)
        assert any(k.endswith("inputSchema") for k in fields), fields
        assert "remote reference" in str(fields), fields
    # an unsaved draft in validateTool, the path the attack used
    existing = await b.tool(gql, token)
    result = (
        await gql.ok(
            "ValidateTool",
            {
                "id": existing["id"],
                "sampleInput": {"q": "x"},
                "input": {**tool, "inputSchema": {"$ref": url}},
            },
            token=token,
        )
    )["validateTool"]
    assert result["valid"] is False
    assert "SECRET-FROM-INTERNAL-HOST" not in str(result)
    assert counter.hits == 0


async def test_flow_with_remote_ref_is_refused_without_a_fetch(
    gql: GQL, team: Team, internal_host: tuple[str, type[_Counter]]
) -> None:
    url, counter = internal_host
    token = await member_token(gql, team, "MEMBER")
    schema = {"type": "object", "properties": {"topic": {"$ref": url}}}
    body = await gql.op("CreateFlow", {"input": _input_flow(schema)}, token=token)
    fields = _fields(body)
    assert any("schema" in k for k in fields), fields
    assert "remote reference" in str(fields), fields
    assert counter.hits == 0


def test_stored_schema_with_remote_ref_cannot_fetch(
    internal_host: tuple[str, type[_Counter]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema stored before the write-time check: the registry refuses to retrieve."""
    url, counter = internal_host
    monkeypatch.setattr(json_schema, "schema_problems", lambda schema: [])
    for schema in ({"$ref": url}, {"$id": url, "properties": {"a": {"$ref": "other.json"}}}):
        with pytest.raises(SchemaUnusable) as caught:
            instance_errors(schema, {"a": 1})
        assert "SECRET" not in caught.value.message
    assert counter.hits == 0


def test_local_refs_still_work() -> None:
    schema = {
        "$id": "https://example.com/root.json",
        "$defs": {"word": {"type": "string", "pattern": "^[a-z]+$"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/word"}},
    }
    assert schema_problems(schema) == []
    assert instance_errors(schema, {"a": "abc"}) == []
    assert instance_errors(schema, {"a": "ABC"})[0][0] == ("a",)


# -- ReDoS and other blow-ups ----------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL}}},
        {"type": "object", "patternProperties": {EVIL: {"type": "integer"}}},
        {"type": "object", "patternProperties": {EVIL: {}}, "additionalProperties": False},
        {"type": "object", "propertyNames": {"pattern": EVIL}},
    ],
)
def test_catastrophic_patterns_run_in_linear_time(schema: dict[str, Any]) -> None:
    assert schema_problems(schema) == []
    started = time.monotonic()
    errors = instance_errors(schema, {"s": ATTACK, ATTACK: "x", "aaa": "x"})
    assert time.monotonic() - started < 1  # seconds, for a backtracking engine: forever
    assert errors  # each schema rejects this input


async def test_redos_through_the_api_is_fast(gql: GQL, team: Team) -> None:
    token = await member_token(gql, team, "MEMBER")
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": EVIL}}}
    tool = await b.tool(gql, token, inputSchema=schema)
    started = time.monotonic()
    result = (
        await gql.ok("ValidateTool", {"id": tool["id"], "sampleInput": {"s": ATTACK}}, token=token)
    )["validateTool"]
    assert result["valid"] is False and "does not match" in str(result["errors"])
    flow = (await gql.ok("CreateFlow", {"input": _input_flow(schema)}, token=token))["createFlow"]
    body = await gql.op("ExecuteFlow", {"id": flow["id"], "inputs": {"s": ATTACK}}, token=token)
    assert "inputs.s" in _fields(body)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"pattern": "(a)\\1"}, "not supported"),  # backreference
        ({"pattern": "(?=a)a"}, "not supported"),  # lookahead
        ({"patternProperties": {"(?<!x)y": {}}}, "not supported"),  # lookbehind
        ({"pattern": "a" * 2000}, "longer than"),
        (
            {"patternProperties": {"^a": {}}, "unevaluatedProperties": False},
            "unevaluatedProperties",
        ),
    ],
)
async def test_patterns_re2_cannot_run_are_refused(
    gql: GQL, team: Team, schema: dict[str, Any], fragment: str
) -> None:
    assert any(fragment in p for p in schema_problems(schema))
    tool = {"name": "re", "description": "d", "kind": "CUSTOM_PYTHON"}
    tool |= {"config": {"code": b.PY_CODE}, "inputSchema": schema}
    body = await gql.op("CreateTool", {"input": tool}, token=team.token)
    fields = _fields(body)
    assert any(k.endswith("inputSchema") and fragment in v for k, v in fields.items()), fields


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


async def test_huge_and_deep_schemas_are_refused(gql: GQL, team: Team) -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
    for schema, fragment in ((_nested(40), "nested"), (big, "larger than")):
        body = await gql.op("CreateFlow", {"input": _input_flow(schema)}, token=team.token)
        assert fragment in str(_fields(body))
        tool = {"name": "big", "description": "d", "kind": "CUSTOM_PYTHON"}
        tool |= {"config": {"code": b.PY_CODE}, "inputSchema": schema}
        body = await gql.op("CreateTool", {"input": tool}, token=team.token)
        assert fragment in str(_fields(body))


def test_exponential_ref_fan_out_stops_at_the_step_budget() -> None:
    # each level tries four references to the next: 4**12 evaluations if unbounded
    defs: dict[str, Any] = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}] * 4} for i in range(12)
    }
    defs["d12"] = {"type": "string"}
    schema = {"$defs": defs, "$ref": "#/$defs/d0"}
    assert schema_problems(schema) == []
    started = time.monotonic()
    with pytest.raises(SchemaUnusable, match=r"steps|took more than"):
        instance_errors(schema, 1)
    assert time.monotonic() - started < 3


def test_unique_items_is_linear() -> None:
    items = [{"id": i, "tags": [i, str(i)]} for i in range(20_000)]
    started = time.monotonic()
    assert instance_errors({"type": "array", "uniqueItems": True}, items) == []
    assert time.monotonic() - started < 3  # a pairwise comparison takes minutes
    dup = [{"a": 1, "b": [1.0]}, {"b": [1], "a": 1.0}]
    assert instance_errors({"uniqueItems": True}, dup)
    assert instance_errors({"uniqueItems": True}, [1, True, 0, False, None]) == []


def test_agent_tool_model_never_resolves_a_stored_remote_ref(
    internal_host: tuple[str, type[_Counter]], tmp_path: Path
) -> None:
    """CrewAI builds an agent tool's argument model with jsonref, which fetches remote
    refs: a schema stored before the write-time checks must not reach it."""
    from datetime import UTC, datetime

    from runtime import crewai_env

    crewai_env.configure(tmp_path)  # ignored when CrewAI is already loaded
    crewai_env.load()
    from domain.crew_runs import AgentTool
    from domain.tools import Tool, ToolKind
    from runtime.crewai_tools import _args_model

    url, counter = internal_host
    now = datetime.now(UTC)
    schema = {"type": "object", "properties": {"q": {"$ref": url}}}
    tool = Tool("t1", "lookup", "d", ToolKind.CUSTOM_PYTHON, {}, schema, 1, now, now)
    _args_model(AgentTool(tool))
    assert counter.hits == 0
