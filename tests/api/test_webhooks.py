"""Outgoing webhooks: a real HTTP receiver (uvicorn) verifies every delivery's Standard
Webhooks signature; retries after the receiver was down; giving up; the outbox shares
the transaction of the event it announces; RBAC, isolation and the egress policy."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from domain.egress import EgressPolicy, EgressRefused
from domain.errors import BadUserInput
from domain.executions.events import EventType
from domain.identity import Principal
from domain.rbac import Role
from domain.webhooks import SendRefused, WebhookInput, WebhookService
from runtime.webhook_sender import EgressResolver, HttpWebhookTransport
from tests.conftest import Team, member_token
from tests.support import flows as f
from tests.support.client import GQL, error_code
from tests.support.services import free_port, wait_for_port

WEBHOOK = "fragment WebhookFields on Webhook { id url events enabled createdAt }"
CREATE = (
    "mutation($input: WebhookInput!) { createWebhook(input: $input) "
    "{ secret webhook { ...WebhookFields } } }" + WEBHOOK
)
ROTATE = (
    "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret webhook { ...WebhookFields } } }"
    + WEBHOOK
)
UPDATE = (
    "mutation($id: ID!, $input: WebhookInput!) { updateWebhook(id: $id, input: $input) "
    "{ ...WebhookFields } }" + WEBHOOK
)
DELETE = "mutation($id: ID!) { deleteWebhook(id: $id) }"
LIST = "query { webhooks { edges { node { ...WebhookFields } } } }" + WEBHOOK
DELIVERIES = """
query($id: ID!) { webhook(id: $id) { id deliveries(first: 50) { edges { node {
  id event status attempts responseStatus error createdAt deliveredAt execution { id }
} } } } }
"""


@dataclass
class Receiver:
    """Records what arrives; answers `status`."""

    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.received.append((dict(request.headers), await request.body()))
            return Response(status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Every delivery whose signature `secret` verifies, decoded."""
        out = []
        for headers, body in self.received:
            try:
                out.append(Verifier(secret).verify(body, headers))
            except WebhookVerificationError:
                continue
        return out


@asynccontextmanager
async def receiving(receiver: Receiver, port: int | None = None) -> AsyncIterator[str]:
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(receiver.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_for_port(port)
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await task


async def _create(gql: GQL, token: str, url: str, events: list[str]) -> tuple[str, str]:
    data = (await gql.ok(CREATE, {"input": {"url": url, "events": events}}, token=token))[
        "createWebhook"
    ]
    assert data["secret"].startswith("whsec_")
    return data["webhook"]["id"], data["secret"]


async def _deliveries(gql: GQL, token: str, ident: str) -> list[dict[str, Any]]:
    data = await gql.ok(DELIVERIES, {"id": ident}, token=token)
    return [e["node"] for e in data["webhook"]["deliveries"]["edges"]]


async def _wait(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def _run(gql: GQL, token: str) -> str:
    flow = await f.create_flow(gql, token, f.branching())
    run = await f.execute(gql, token, flow["id"], {"score": 9})
    done = await f.wait_status(gql, token, run["id"])
    assert done["status"] == "COMPLETED"
    return str(run["id"])


async def test_signed_deliveries_of_a_run(gql: GQL, team: Team) -> None:
    receiver = Receiver()
    async with receiving(receiver) as url:
        ident, secret = await _create(
            gql, team.token, url, ["EXECUTION_STARTED", "EXECUTION_COMPLETED", "EXECUTION_FAILED"]
        )
        run_id = await _run(gql, team.token)

        async def both() -> list[dict[str, Any]] | None:
            found = receiver.verified(secret)
            return found if len(found) >= 2 else None

        payloads = await _wait(both)
    assert sorted(p["type"] for p in payloads) == ["EXECUTION_COMPLETED", "EXECUTION_STARTED"]
    assert len(receiver.received) == 2  # nothing unsigned, nothing else
    by_type = {p["type"]: p for p in payloads}
    assert by_type["EXECUTION_STARTED"]["data"]["executionId"] == run_id
    assert by_type["EXECUTION_STARTED"]["data"]["status"] == "RUNNING"
    completed = by_type["EXECUTION_COMPLETED"]["data"]
    assert completed["status"] == "COMPLETED"
    assert completed["event"] == {"outputs": {"high": "high: 9"}}
    # A wrong secret does not verify.
    assert receiver.verified("whsec_" + "A" * 44) == []

    deliveries = await _wait(lambda: _all_delivered(gql, team.token, ident, 2))
    headers = {h["webhook-id"] for h, _ in receiver.received}
    assert headers == {d["id"] for d in deliveries}
    for d in deliveries:
        assert (d["status"], d["attempts"], d["responseStatus"], d["error"]) == (
            "DELIVERED",
            1,
            200,
            None,
        )
        assert d["execution"]["id"] == run_id and d["deliveredAt"]


async def _all_delivered(gql: GQL, token: str, ident: str, n: int) -> list[dict[str, Any]] | None:
    found = await _deliveries(gql, token, ident)
    done = [d for d in found if d["status"] == "DELIVERED"]
    return found if len(found) == n and len(done) == n else None


async def test_a_receiver_that_was_down_gets_the_retried_delivery(gql: GQL, team: Team) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    ident, secret = await _create(gql, team.token, url, ["EXECUTION_COMPLETED"])
    run_id = await _run(gql, team.token)

    async def failed_twice() -> bool:
        found = await _deliveries(gql, team.token, ident)
        return bool(found) and found[0]["attempts"] >= 2

    await _wait(failed_twice)
    pending = (await _deliveries(gql, team.token, ident))[0]
    assert pending["status"] == "PENDING" and pending["error"]
    assert pending["responseStatus"] is None

    receiver = Receiver()
    async with receiving(receiver, port):
        delivered = await _wait(lambda: _all_delivered(gql, team.token, ident, 1))
    assert delivered[0]["attempts"] >= 3 and delivered[0]["responseStatus"] == 200
    payloads = receiver.verified(secret)
    assert len(payloads) == 1 and len(receiver.received) == 1
    assert payloads[0]["data"]["executionId"] == run_id
    assert receiver.received[0][0]["webhook-id"] == delivered[0]["id"]


async def test_failing_receiver_gives_up_after_the_retry_window(gql: GQL, team: Team) -> None:
    receiver = Receiver(status=500)
    async with receiving(receiver) as url:
        ident, _ = await _create(gql, team.token, url, ["EXECUTION_COMPLETED"])
        await _run(gql, team.token)

        async def gave_up() -> dict[str, Any] | None:
            found = await _deliveries(gql, team.token, ident)
            return found[0] if found and found[0]["status"] == "FAILED" else None

        failed = await _wait(gave_up, timeout=20)
    assert failed["responseStatus"] == 500 and failed["error"] == "HTTP 500"
    assert failed["attempts"] >= 3 and failed["attempts"] == len(receiver.received)
    assert failed["deliveredAt"] is None


async def test_rotating_the_secret_signs_with_the_new_one_only(gql: GQL, team: Team) -> None:
    receiver = Receiver()
    async with receiving(receiver) as url:
        ident, old = await _create(gql, team.token, url, ["EXECUTION_COMPLETED"])
        rotated = (await gql.ok(ROTATE, {"id": ident}, token=team.token))["rotateWebhookSecret"]
        new = rotated["secret"]
        assert new.startswith("whsec_") and new != old and rotated["webhook"]["id"] == ident
        await _run(gql, team.token)
        await _wait(lambda: _all_delivered(gql, team.token, ident, 1))
    assert len(receiver.verified(new)) == 1
    assert receiver.verified(old) == []


async def test_the_outbox_shares_the_transaction_of_the_event(
    gql: GQL, team: Team, container: Any
) -> None:
    """A delivery row exists exactly when its event was committed; EXECUTION_STARTED is
    delivered once per run even when a resumed run stores it again."""
    receiver = Receiver()
    async with receiving(receiver) as url:
        ident, secret = await _create(
            gql, team.token, url, ["EXECUTION_STARTED", "EXECUTION_CANCELLED"]
        )
        run_id = await _run(gql, team.token)
        await _wait(lambda: _all_delivered(gql, team.token, ident, 1))
        pool = await container.db.raw()
        schema = await pool.fetchval(
            "SELECT schema_name FROM public.tenants WHERE id = $1::uuid", team.tenant_id
        )
        async with container.uow(schema) as uow:  # rolled back: no commit
            await uow.executions.append_event(run_id, EventType.EXECUTION_CANCELLED, None, {})
        async with container.uow(schema) as uow:
            await uow.executions.append_event(
                run_id, EventType.EXECUTION_STARTED, None, {"resumed": True}
            )
            await uow.commit()
        await asyncio.sleep(0.5)  # several delivery ticks
        assert [d["event"] for d in await _deliveries(gql, team.token, ident)] == [
            "EXECUTION_STARTED"
        ]
        async with container.uow(schema) as uow:
            await uow.executions.append_event(run_id, EventType.EXECUTION_CANCELLED, None, {})
            await uow.commit()
        await _wait(lambda: _all_delivered(gql, team.token, ident, 2))
    types = sorted(p["type"] for p in receiver.verified(secret))
    assert types == ["EXECUTION_CANCELLED", "EXECUTION_STARTED"]


async def test_admins_only_other_teams_see_nothing(gql: GQL, team: Team, other_team: Team) -> None:
    member = await member_token(gql, team, "MEMBER")
    body = await gql.raw(
        CREATE,
        {"input": {"url": "http://127.0.0.1:9/hook", "events": ["EXECUTION_FAILED"]}},
        token=member,
    )
    assert error_code(body) == "FORBIDDEN"
    assert error_code(await gql.raw(LIST, token=member)) == "FORBIDDEN"
    ident, _ = await _create(gql, team.token, "http://127.0.0.1:9/hook", ["EXECUTION_FAILED"])
    for query, variables in (
        (DELIVERIES, {"id": ident}),
        (ROTATE, {"id": ident}),
        (DELETE, {"id": ident}),
        (UPDATE, {"id": ident, "input": {"url": "http://127.0.0.1:9/x", "events": []}}),
    ):
        body = await gql.raw(query, variables, token=member)
        assert error_code(body) == "FORBIDDEN", body
        body = await gql.raw(query, variables, token=other_team.token)
        assert error_code(body) in ("NOT_FOUND", "BAD_USER_INPUT"), body
        if query is not UPDATE:
            assert error_code(body) == "NOT_FOUND"
    assert (await gql.ok(LIST, token=other_team.token))["webhooks"]["edges"] == []

    updated = (
        await gql.ok(
            UPDATE,
            {
                "id": ident,
                "input": {"url": "http://127.0.0.1:9/y", "events": ["EXECUTION_WAITING"]},
            },
            token=team.token,
        )
    )["updateWebhook"]
    assert updated["url"].endswith("/y") and updated["events"] == ["EXECUTION_WAITING"]
    assert updated["enabled"] is True  # null keeps the stored value
    assert (await gql.ok(DELETE, {"id": ident}, token=team.token))["deleteWebhook"]
    assert error_code(await gql.raw(DELIVERIES, {"id": ident}, token=team.token)) == "NOT_FOUND"


@pytest.mark.parametrize(
    ("url", "events"),
    [
        ("ftp://example.com/hook", ["EXECUTION_FAILED"]),
        ("http://169.254.169.254/latest/meta-data", ["EXECUTION_FAILED"]),
        ("http://metadata.google.internal/", ["EXECUTION_FAILED"]),
        ("http://user:pw@example.com/", ["EXECUTION_FAILED"]),
        ("http://example.com/" + "a" * 3000, ["EXECUTION_FAILED"]),
        ("http://127.0.0.1:9/hook", []),
    ],
)
async def test_bad_webhooks_are_refused(gql: GQL, team: Team, url: str, events: list[str]) -> None:
    body = await gql.raw(CREATE, {"input": {"url": url, "events": events}}, token=team.token)
    assert error_code(body) == "BAD_USER_INPUT", body
    fields = body["errors"][0]["extensions"]["fields"]
    assert set(fields) <= {"input.url", "input.events"} and fields
    assert (await gql.ok(LIST, token=team.token))["webhooks"]["edges"] == []


class _NoStorage:
    def __call__(self, tenant_schema: str | None = None) -> Any:
        raise AssertionError("a refused URL never reaches storage")


async def test_private_addresses_are_refused_unless_allowed() -> None:
    """The production policy: loopback, private, link-local and metadata addresses are
    refused when written (also after resolving a name) unless allow-listed, and again
    when a delivery is sent."""
    strict = EgressPolicy.build(allow_private=False)
    allow_loopback = EgressPolicy.build(allow_private=False, allowlist=["127.0.0.1"])
    service = WebhookService(_NoStorage(), None, EgressResolver(strict), egress=strict)  # type: ignore[arg-type]
    admin = Principal("t", "tenant_x", Role.ADMIN)
    for url in (
        "http://127.0.0.1:8000/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://[::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://2130706433/",
        "http://localhost/",
        "http://169.254.169.254/",
        "http://localhost.localdomain./",
    ):
        with pytest.raises(BadUserInput) as refused:
            await service.create(admin, WebhookInput(url, ["EXECUTION_FAILED"]))
        assert "input.url" in refused.value.fields, url
    # A name is resolved and its addresses judged: this machine's own name, when it
    # resolves to a non-global address (it does on most hosts and containers).
    host = socket.gethostname()
    try:
        addresses = await EgressResolver(strict).addresses(host, 80)
    except EgressRefused:
        addresses = []
    if addresses and not all(a.is_global for a in addresses):
        with pytest.raises(EgressRefused):
            await EgressResolver(strict).check(f"http://{host}/")
        with pytest.raises(BadUserInput):
            await service.create(admin, WebhookInput(f"http://{host}/", ["EXECUTION_FAILED"]))
    await EgressResolver(allow_loopback).check("http://127.0.0.1:9/")

    # Sending re-checks: a URL stored under another policy is refused now, not called.
    receiver = Receiver()
    async with receiving(receiver) as url:
        transport = HttpWebhookTransport(EgressResolver(strict), timeout_seconds=2)
        with pytest.raises(SendRefused):
            await transport.send(url, "whsec_" + "A" * 44, "msg_1", json.dumps({}).encode())
        allowed = HttpWebhookTransport(EgressResolver(allow_loopback), timeout_seconds=2)
        assert await allowed.send(url, "whsec_" + "A" * 44, "msg_2", b"{}") == 200
        await transport.aclose()
        await allowed.aclose()
    assert len(receiver.received) == 1


async def test_master_key_rotation_re_seals_signing_secrets(
    gql: GQL, team: Team, container: Any, settings: Any
) -> None:
    from domain.webhooks import rotate_webhook_secrets
    from server.crypto import AesGcmBox, key_id, new_key_text, parse_key

    ident, secret = await _create(gql, team.token, "http://127.0.0.1:9/hook", ["EXECUTION_FAILED"])
    pool = await container.db.raw()
    schema = await pool.fetchval(
        "SELECT schema_name FROM public.tenants WHERE id = $1::uuid", team.tenant_id
    )
    old, new = parse_key(settings.secret_key), parse_key(new_key_text())
    tenants = [(team.tenant_id, schema)]
    assert await rotate_webhook_secrets(container.uow, AesGcmBox(new, [old]), tenants) == 1
    async with container.uow(schema) as uow:
        sealed = (await uow.webhooks.get(ident)).secret
    assert sealed.key_id == key_id(new)
    assert AesGcmBox(new).open(sealed, f"webhook:{team.tenant_id}:{ident}") == secret
    # Nothing left under the old key; then back, so the running server reads it again.
    assert await rotate_webhook_secrets(container.uow, AesGcmBox(new, [old]), tenants) == 0
    assert await rotate_webhook_secrets(container.uow, AesGcmBox(old, [new]), tenants) == 1


async def test_a_run_waiting_at_an_approval_is_announced(gql: GQL, team: Team) -> None:
    receiver = Receiver()
    flow = await f.create_flow(
        gql,
        team.token,
        {
            "name": f"approve-{free_port()}",
            "nodes": [
                {"id": "in", "kind": "INPUT"},
                {"id": "ok", "kind": "APPROVAL", "config": {"prompt": "Go?"}},
                {"id": "out", "kind": "OUTPUT"},
            ],
            "edges": [{"source": "in", "target": "ok"}, {"source": "ok", "target": "out"}],
        },
    )
    async with receiving(receiver) as url:
        ident, secret = await _create(
            gql, team.token, url, ["EXECUTION_WAITING", "EXECUTION_CANCELLED"]
        )
        run = await f.execute(gql, team.token, flow["id"], {})

        async def waiting() -> list[dict[str, Any]] | None:
            found = receiver.verified(secret)
            return found if found else None

        [payload] = await _wait(waiting)
        assert payload["type"] == "EXECUTION_WAITING"
        assert payload["data"]["executionId"] == run["id"]
        assert payload["data"]["status"] == "WAITING"
        await gql.ok("CancelExecution", {"id": run["id"]}, token=team.token)
        await _wait(lambda: _all_delivered(gql, team.token, ident, 2))
    assert sorted(p["type"] for p in receiver.verified(secret)) == [
        "EXECUTION_CANCELLED",
        "EXECUTION_WAITING",
    ]
