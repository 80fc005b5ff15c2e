"""TOOL nodes run user code in the sandbox, through the whole API path."""

from __future__ import annotations

from typing import Any

from tests.conftest import Team
from tests.support import builders as b
from tests.support.client import GQL
from tests.support.flows import create_flow, execute, input_node, wait_status

DOUBLE = (
    "import os\n"
    "def run(input):\n"
    "    print('doubling', input['n'])\n"
    "    return {'double': input['n'] * 2, 'uid': os.getuid()}\n"
)


def _tool_flow(tool_id: str, node_input: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": b._name("tool-flow"),
        "nodes": [
            input_node(n="integer"),
            {"id": "calc", "kind": "TOOL", "config": {"toolId": tool_id, "input": node_input}},
            {"id": "out", "kind": "OUTPUT", "config": {"value": "{{ nodes.calc.output.double }}"}},
        ],
        "edges": [{"source": "in", "target": "calc"}, {"source": "calc", "target": "out"}],
    }


async def test_custom_python_tool_node_runs_in_the_sandbox(
    gql: GQL, team: Team, container: Any
) -> None:
    tool = await b.tool(
        gql,
        team.token,
        config={"code": DOUBLE},
        inputSchema={"type": "object", "properties": {"n": {"type": "integer"}}},
    )
    flow = await create_flow(gql, team.token, _tool_flow(tool["id"], {"n": "{{ inputs.n }}"}))
    run = await execute(gql, team.token, flow["id"], {"n": 21})
    done = await wait_status(gql, team.token, run["id"], timeout=60)
    assert done["status"] == "COMPLETED", done
    runs = {r["nodeId"]: r for r in done["nodeRuns"]}
    assert runs["calc"]["status"] == "COMPLETED"
    assert runs["calc"]["output"]["double"] == 42  # "{{ inputs.n }}" keeps the integer
    assert runs["calc"]["output"]["uid"] == 65534  # non-root inside the sandbox
    assert done["outputs"] == {"out": 42}
    sandbox = await container.sandbox.get()
    assert sandbox.name in ("docker", "bubblewrap")


async def test_failing_tool_fails_the_node_and_the_run(gql: GQL, team: Team) -> None:
    tool = await b.tool(
        gql,
        team.token,
        config={"code": "def run(input):\n    raise ValueError('bad input value')\n"},
    )
    flow = await create_flow(gql, team.token, _tool_flow(tool["id"], {"n": "{{ inputs.n }}"}))
    run = await execute(gql, team.token, flow["id"], {"n": 1})
    done = await wait_status(gql, team.token, run["id"], timeout=60)
    assert done["status"] == "FAILED"
    calc = {r["nodeId"]: r for r in done["nodeRuns"]}["calc"]
    assert (
        calc["status"] == "FAILED"
        and "ValueError" in calc["error"]
        and "bad input value" in calc["error"]
    )
    assert "calc" in done["error"]
