"""examples/typescript (Apollo Client, graphql-ws, GraphQL Code Generator) against a real
server: types generated from graphql/schema.graphql and checked by `tsc`, a query through
a Relay connection cached by Apollo, subscriptions over WebSockets and over plain HTTP
(Apollo's HttpLink, multipart protocol).

Needs Node.js and the examples' packages (`make install` runs scripts/install-examples.sh).
Without them these tests skip and say why; under CI=true they fail instead."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Team
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "typescript"
BIN = EXAMPLES / "node_modules" / ".bin"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the TypeScript examples must run)")
    warnings.warn(f"TypeScript example tests skipped: {reason}", stacklevel=2)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def built() -> Path:
    """Types generated from the schema, then the examples type-checked and compiled."""
    node = shutil.which("node")
    if node is None:
        _unavailable("Node.js not found (install Node.js >= 20, then `make install`)")
    if not (BIN / "tsc").exists() or not (BIN / "graphql-codegen").exists():
        _unavailable("examples/typescript/node_modules missing: run `make install` with npm")
    generated = EXAMPLES / "src" / "generated"
    shutil.rmtree(generated, ignore_errors=True)
    shutil.rmtree(EXAMPLES / "dist", ignore_errors=True)
    for command in (
        [str(BIN / "graphql-codegen"), "--config", "codegen.ts"],
        [str(BIN / "tsc"), "-p", "tsconfig.json"],  # type errors fail the build (noEmitOnError)
    ):
        done = subprocess.run(
            command, cwd=EXAMPLES, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{command[0]}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (generated / "graphql.ts").exists()
    return EXAMPLES / "dist"


async def _node(
    dist: Path, server_url: str, token: str, script: str, *args: str
) -> tuple[int, list[dict[str, Any]], str]:
    env = {**os.environ, "CREWGRAPH_URL": server_url, "CREWGRAPH_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        "node",
        str(dist / script),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return process.returncode, lines, err.decode()


async def _log(gql: GQL, token: str, execution_id: str) -> list[dict[str, Any]]:
    data = await gql.ok(
        "ExecutionEventLog", {"id": execution_id, "afterSequence": 0, "first": 1000}, token=token
    )
    return [
        {k: e[k] for k in ("executionId", "sequence", "type", "nodeId")}
        for e in data["execution"]["events"]
    ]


def _events(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in line["event"].items() if k != "__typename"}
        for line in lines
        if "event" in line
    ]


def test_types_generated_from_the_schema_pass_tsc(built: Path) -> None:
    generated = (EXAMPLES / "src" / "generated" / "graphql.ts").read_text()
    # The operations' result types come from the exported schema.
    assert "export type ExampleExecutionEventsSubscription" in generated
    assert (built / "events.js").exists() and (built / "flows.js").exists()


async def test_apollo_http_link_streams_a_subscription_over_http(
    built: Path, gql: GQL, team: Team, server_url: str
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.3, 0.3]))
    run = await f.execute(gql, team.token, flow["id"])
    # Resumed after the second event while the run is still going: replay, then live.
    code, lines, err = await _node(
        built, server_url, team.token, "events.js", "http", run["id"], "2"
    )
    assert code == 0, err[-3000:]
    log = await _log(gql, team.token, run["id"])
    assert _events(lines) == log[2:]
    assert lines[-1]["execution"]["status"] == "COMPLETED"


async def test_apollo_http_link_gets_the_servers_error_codes(
    built: Path, gql: GQL, team: Team, other_team: Team, server_url: str
) -> None:
    flow = await f.create_flow(gql, other_team.token, f.branching())
    theirs = await f.execute(gql, other_team.token, flow["id"], {"score": 3})
    code, lines, err = await _node(built, server_url, team.token, "events.js", "http", theirs["id"])
    assert code == 2, err[-3000:]
    assert lines == [{"errors": ["NOT_FOUND"]}]
    code, lines, err = await _node(
        built, server_url, team.token + "x", "events.js", "http", theirs["id"]
    )
    assert code == 2, err[-3000:]
    assert lines == [{"errors": ["UNAUTHENTICATED"]}]


async def test_mutation_then_subscription_over_graphql_ws(
    built: Path, gql: GQL, team: Team, server_url: str
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    code, lines, err = await _node(
        built, server_url, team.token, "events.js", "ws", "--run", flow["id"], '{"score": 8}'
    )
    assert code == 0, err[-3000:]
    execution_id = lines[0]["started"]
    assert _events(lines) == await _log(gql, team.token, execution_id)
    assert lines[-1]["execution"]["status"] == "COMPLETED"
    assert lines[-1]["execution"]["outputs"] == {"high": "high: 8"}


async def test_relay_connection_pages_merge_in_apollos_cache(
    built: Path, gql: GQL, team: Team, server_url: str
) -> None:
    for _ in range(5):
        await f.create_flow(gql, team.token, f.branching())
    data = await gql.ok("Flows", {"first": 100}, token=team.token)
    names = [edge["node"]["name"] for edge in data["flows"]["edges"]]
    code, lines, err = await _node(built, server_url, team.token, "flows.js")
    assert code == 0, err[-3000:]
    assert lines == [{"pages": 3, "cached": names}]
