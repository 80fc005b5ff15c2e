"""The checks of `make compose-smoke` (scripts/compose-smoke.sh) against the running
stack: readiness, a registration, a flow execution that only a `crewgraph worker` can
finish (the API runs with CREWGRAPH_WORKER_MODE=arq, so it only enqueues), and a tool's
dry run in the sandbox engine.
Standard library only. Usage: compose_smoke_check.py BASE_URL [TIMEOUT_SECONDS]"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any


def http(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=15) as response:
        return json.loads(response.read() or b"null")


def gql(base: str, query: str, variables: dict[str, Any], token: str | None = None) -> Any:
    answer = http(f"{base}/graphql", {"query": query, "variables": variables}, token)
    if answer.get("errors"):
        raise SystemExit(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


def wait_ready(base: str, deadline: float) -> dict[str, Any]:
    last: object = None
    while time.monotonic() < deadline:
        try:
            return dict(http(f"{base}/readyz"))
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            last = exc
        time.sleep(2)
    raise SystemExit(f"{base}/readyz never answered 200: {last}")


def main() -> None:
    base = sys.argv[1].rstrip("/")
    deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 300)
    ready = wait_ready(base, deadline)
    print(f"readyz: {ready}")
    tag = uuid.uuid4().hex[:8]
    token = gql(
        base,
        "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
        {
            "input": {
                "tenantName": f"smoke-{tag}",
                "email": f"smoke-{tag}@example.com",
                "password": "correct horse battery",
            }
        },
    )["register"]["accessToken"]
    flow = {
        "name": f"smoke-{tag}",
        "nodes": [
            {"id": "in", "kind": "INPUT"},
            {"id": "out", "kind": "OUTPUT", "config": {"value": "hello {{ inputs.who }}"}},
        ],
        "edges": [{"source": "in", "target": "out"}],
    }
    flow_id = gql(
        base,
        "mutation($input: FlowInput!) { createFlow(input: $input) { id } }",
        {"input": flow},
        token,
    )["createFlow"]["id"]
    execution = gql(
        base,
        "mutation($id: ID!, $inputs: JSON!) { executeFlow(id: $id, inputs: $inputs) { id } }",
        {"id": flow_id, "inputs": {"who": "compose"}},
        token,
    )["executeFlow"]["id"]
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = gql(
            base,
            "query($id: ID!) { execution(id: $id) { status outputs error } }",
            {"id": execution},
            token,
        )["execution"]
        if status["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        time.sleep(1)
    print(f"execution: {status}")
    if status.get("status") != "COMPLETED" or "hello compose" not in json.dumps(status["outputs"]):
        raise SystemExit("the worker did not complete the execution")
    # The tool sandbox: a CUSTOM_PYTHON dry run in a container of the engine whose socket
    # the API has (docker-compose.yml's default).
    tool_id = gql(
        base,
        "mutation($input: ToolInput!) { createTool(input: $input) { id } }",
        {
            "input": {
                "name": f"smoke-{tag}",
                "description": "echo",
                "kind": "CUSTOM_PYTHON",
                "config": {"code": "def run(input):\n    return {'echo': input}\n"},
                "inputSchema": {"type": "object"},
            }
        },
        token,
    )["createTool"]["id"]
    check = gql(
        base,
        "mutation($id: ID!, $s: JSON) { validateTool(id: $id, sampleInput: $s)"
        " { valid errors output } }",
        {"id": tool_id, "s": {"n": 7}},
        token,
    )["validateTool"]
    print(f"sandbox: {check}")
    if not check["valid"] or check["output"] != {"echo": {"n": 7}}:
        raise SystemExit("the sandboxed tool did not run")
    print("compose smoke: OK")


if __name__ == "__main__":
    main()
