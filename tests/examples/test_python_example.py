"""examples/python/crewgraph_client.py (gql) run as a user would, against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.conftest import Team
from tests.support import builders as b
from tests.support import flows as f
from tests.support.client import GQL

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "crewgraph_client.py"


async def _run(server_url: str, token: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "CREWGRAPH_URL": server_url, "CREWGRAPH_TOKEN": token}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_queries_mutation_and_a_resumed_subscription(
    gql: GQL, team: Team, server_url: str
) -> None:
    tool = await b.tool(gql, team.token)
    flow = await f.create_flow(gql, team.token, f.slow_chain(tool["id"], [0.3, 0.3, 0.3]))
    code, out, err = await _run(server_url, team.token, flow["id"], "{}", "--stop-after", "3")
    assert code == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out)
    assert result["me"]["email"] == team.email
    assert flow["name"] in result["flows"]
    assert result["status"] == "COMPLETED"
    # Hung up after three events, resumed after the third: every event once, in order.
    assert result["first"] == [1, 2, 3]
    sequences = result["first"] + result["resumed"]
    assert sequences == list(range(1, len(sequences) + 1)), sequences
    assert result["types"][-1] == "EXECUTION_COMPLETED"
    data = await gql.ok(
        "ExecutionEventLog",
        {"id": result["execution"], "afterSequence": 0, "first": 1000},
        token=team.token,
    )
    assert [e["sequence"] for e in data["execution"]["events"]] == sequences


async def test_a_bad_token_fails_with_the_servers_error(
    gql: GQL, team: Team, server_url: str
) -> None:
    flow = await f.create_flow(gql, team.token, f.branching())
    code, _, err = await _run(server_url, team.token + "x", flow["id"], '{"score": 1}')
    assert code != 0
    assert "UNAUTHENTICATED" in err or "invalid" in err.lower(), err[-2000:]
