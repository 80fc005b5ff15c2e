"""The access log of a real `crewgraph serve`: one JSON line per HTTP request and per
WebSocket operation, with who and what, never credentials, documents or variables."""

from __future__ import annotations

import json
import secrets
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.support.client import op
from tests.support.serve import serve_env, spawn, stop, wait_until_ready
from tests.support.services import free_port


def _lines(output: Path) -> list[dict[str, Any]]:
    found = []
    for line in output.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


async def test_access_log_lines(settings: Any, tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "serve.log"
    env = serve_env(settings, port, tmp_path / "data", CREWGRAPH_LOG_LEVEL="INFO")
    proc = spawn(env, output)
    password = f"pw-{secrets.token_hex(12)}"  # none of these may reach the log
    marker = f"tenant-{secrets.token_hex(6)}"
    email = f"log-{uuid.uuid4().hex[:8]}@example.com"
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await wait_until_ready(client, proc, output, 60)

            async def call(
                name: str, variables: dict[str, Any] | None = None, **headers: str
            ) -> dict[str, Any]:
                resp = await client.post(
                    "/graphql",
                    json={"query": op(name), "variables": variables or {}},
                    headers={"X-Request-ID": f"req-{name}", **headers},
                )
                body: dict[str, Any] = resp.json()
                return body

            registered = await call(
                "Register",
                {"input": {"tenantName": marker, "email": email, "password": password}},
            )
            session = registered["data"]["register"]
            token, refresh = session["accessToken"], session["refreshToken"]
            tenant_id, user_id = session["user"]["tenant"]["id"], session["user"]["id"]
            bearer = {"Authorization": f"Bearer {token}"}
            wrong = await call(
                "Login", {"input": {"email": email, "password": password + "x", "tenantSlug": "x"}}
            )
            assert wrong["errors"]
            key = (await call("CreateApiKey", {"name": "ci", "role": "VIEWER"}, **bearer))["data"][
                "createApiKey"
            ]
            await call("Me", **{"X-API-Key": key["secret"]})
            await call("RefreshToken", {"refreshToken": refresh})
            bad = await client.post(
                "/graphql",
                json={"query": "query Broken { me { nope } }"},
                headers={"X-Request-ID": "req-Broken", **bearer},
            )
            assert bad.status_code == 200

        async with websockets.connect(
            f"ws://127.0.0.1:{port}/graphql",
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            additional_headers={"X-Request-ID": "req-socket"},
        ) as socket:
            init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            await socket.send(json.dumps(init))
            assert json.loads(await socket.recv())["type"] == "connection_ack"
            for ident, query in (("one", op("Me")), ("two", "query { me { nope } }")):
                subscribe = {"id": ident, "type": "subscribe", "payload": {"query": query}}
                await socket.send(json.dumps(subscribe))
                while True:
                    message = json.loads(await socket.recv())
                    if message.get("id") == ident and message["type"] in ("complete", "error"):
                        break
        assert stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)

    text = output.read_text()
    for secret in (password, token, refresh, key["secret"], marker, email):
        assert secret not in text, secret
    lines = _lines(output)
    http = {line["request_id"]: line for line in lines if line.get("event") == "http.request"}

    reg = http["req-Register"]
    assert reg["operation"] == "Register" and reg["status"] == 200 and reg["errors"] is None
    assert reg["method"] == "POST" and reg["path"] == "/graphql"
    assert isinstance(reg["duration_ms"], float) and reg["duration_ms"] > 0
    assert http["req-Login"]["errors"] == ["UNAUTHENTICATED"]
    created = http["req-CreateApiKey"]
    assert (created["tenant_id"], created["user_id"], created["api_key_id"]) == (
        tenant_id,
        user_id,
        None,
    )
    by_key = http["req-Me"]
    assert (by_key["tenant_id"], by_key["user_id"], by_key["api_key_id"]) == (
        tenant_id,
        None,
        key["id"],
    )
    assert http["req-Broken"]["operation"] == "Broken"
    assert http["req-Broken"]["errors"] == ["BAD_USER_INPUT"]
    assert not any(line.get("path") == "/readyz" for line in http.values())  # probes: quiet

    ws = [line for line in lines if line.get("event", "").startswith("ws.")]
    assert all(line["request_id"] == "req-socket" for line in ws), ws
    assert all(line["tenant_id"] == tenant_id and line["user_id"] == user_id for line in ws)
    one = {line["event"]: line for line in ws if line["operation_id"] == "one"}
    assert one["ws.subscribe"]["operation"] == "Me"
    assert one["ws.complete"]["outcome"] == "completed" and one["ws.complete"]["errors"] is None
    assert one["ws.complete"]["duration_ms"] >= 0
    two = {line["event"]: line for line in ws if line["operation_id"] == "two"}
    assert two["ws.complete"]["outcome"] == "error"
    assert two["ws.complete"]["errors"] == ["BAD_USER_INPUT"]
