"""Attacks on chat: forged cursors, floods of concurrent sends, revoked credentials on an
open `chatTokens`, and documents of another tenant sharing a session id in MongoDB."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient

from tests.conftest import Team
from tests.support.client import GQL, error_code, op
from tests.support.ws import close_code, init, recv, subscribe

LOCAL = "crewgraph:local"


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


async def _session(gql: GQL, team: Team, **input: Any) -> dict[str, Any]:
    data = {"name": f"llm-{uuid.uuid4().hex[:8]}", "provider": "openai"}
    data |= {"model": "scripted", "baseUrl": LOCAL}
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=team.token)
    input = {"llmProviderId": body["createLlmProvider"]["id"], **input}
    created = await gql.ok("CreateChatSession", {"input": input}, token=team.token)
    session: dict[str, Any] = created["createChatSession"]
    return session


async def test_forged_history_cursors_are_bad_input_never_a_store_error(
    gql: GQL, team: Team
) -> None:
    # Before: a cursor holding a number past MongoDB's 64-bit integers reached the query
    # and came back as SERVICE_UNAVAILABLE ("the message store does not answer").
    session = await _session(gql, team)
    for forged in (
        _cursor(["m", 2**64]),
        _cursor(["m", 10**300]),
        _cursor(["m", -1]),
        _cursor(["m", 1.5]),
        _cursor(["m", {"$gt": 0}]),
        _cursor({"$where": "1"}),
        "A" * 100_000,
        "%%%",
    ):
        body = await gql.op(
            "ChatHistory", {"id": session["id"], "before": forged}, token=team.token
        )
        assert error_code(body) == "BAD_USER_INPUT", (forged[:40], body)
    ok = await gql.ok(
        "ChatHistory", {"id": session["id"], "before": _cursor(["m", 2**63 - 1])}, token=team.token
    )
    assert ok["chatSession"]["messages"]["edges"] == []


async def test_huge_chat_inputs_are_refused(gql: GQL, team: Team) -> None:
    session = await _session(gql, team)
    # Under the request body limit (1 MB, LIMIT_EXCEEDED), so the field checks answer.
    huge = "x" * 900_000
    body = await gql.op(
        "SendChatMessage", {"sessionId": session["id"], "content": huge}, token=team.token
    )
    assert error_code(body) == "BAD_USER_INPUT", str(body)[:300]
    for field in ("title", "systemPrompt"):
        body = await gql.op(
            "CreateChatSession",
            {"input": {"llmProviderId": "x", field: huge}},
            token=team.token,
        )
        assert error_code(body) == "BAD_USER_INPUT", str(body)[:300]
    assert (await gql.ok("ChatHistory", {"id": session["id"]}, token=team.token))["chatSession"][
        "messageCount"
    ] == 0


async def test_a_flood_of_concurrent_sends_never_passes_the_message_limit(
    gql: GQL, team: Team
) -> None:
    session = await _session(gql, team, messageLimit=4)
    sid = session["id"]

    async def send(i: int) -> dict[str, Any]:
        return await gql.op(
            "SendChatMessage", {"sessionId": sid, "content": f"SAY: {i}"}, token=team.token
        )

    bodies = await asyncio.gather(*(send(i) for i in range(60)))
    accepted = [b for b in bodies if not b.get("errors")]
    refused = {error_code(b) for b in bodies if b.get("errors")}
    assert 1 <= len(accepted) <= 2, accepted
    assert refused <= {"CONFLICT", "LIMIT_EXCEEDED"}, refused
    history = (await gql.ok("ChatHistory", {"id": sid, "last": 100}, token=team.token))[
        "chatSession"
    ]
    assert history["messageCount"] == 2 * len(accepted) <= 4
    assert len(history["messages"]["edges"]) == history["messageCount"]


async def test_a_revoked_api_key_ends_its_open_chat_tokens_socket(gql: GQL, team: Team) -> None:
    session = await _session(gql, team)
    key = (await gql.ok("CreateApiKey", {"name": "chat", "role": "MEMBER"}, token=team.token))[
        "createApiKey"
    ]
    async with gql.connect_ws() as ws:
        assert (await init(ws, {"X-API-Key": key["secret"]}))["type"] == "connection_ack"
        await subscribe(ws, "t", op("ChatTokens"), {"sessionId": session["id"]})
        await subscribe(ws, "probe", "{ __typename }")
        msg = await recv(ws)
        assert msg["id"] == "probe" and msg["type"] == "next", msg
        await gql.ok("RevokeApiKey", {"id": key["id"]}, token=team.token)
        assert await close_code(ws, "next", timeout=5) == 4403


async def test_another_tenants_documents_under_the_same_session_id_never_show(
    gql: GQL, team: Team, other_team: Team, settings: Any
) -> None:
    """Documents of two tenants interleaved under one session id (as if ids collided):
    every page of the history, at every cursor, holds only the caller's."""
    session = await _session(gql, team)
    sid = session["id"]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_url)
    now = datetime.now(UTC)
    try:
        collection = client[settings.mongodb_database]["chat_messages"]
        docs = []
        for seq in range(1, 13):
            docs.append(
                {
                    "_id": str(uuid.uuid4()),
                    "tenant_id": other_team.tenant_id,
                    "session_id": sid,
                    "seq": seq,
                    "role": "USER",
                    "content": f"theirs {seq}",
                    "status": "COMPLETED",
                    "created_at": now,
                    "updated_at": now,
                }
            )
        await collection.insert_many(docs)
        # The caller's own messages, stored through the API, share the seq numbers.
        await gql.ok("SendChatMessage", {"sessionId": sid, "content": "mine"}, token=team.token)
        seen: list[str] = []
        before = None
        for _ in range(20):
            page = (
                await gql.ok(
                    "ChatHistory", {"id": sid, "last": 1, "before": before}, token=team.token
                )
            )["chatSession"]["messages"]
            seen += [e["node"]["content"] for e in page["edges"]]
            if not page["pageInfo"]["hasPreviousPage"]:
                break
            before = page["pageInfo"]["startCursor"]
        assert seen and not any(s.startswith("theirs") for s in seen), seen
        assert "mine" in seen
    finally:
        await client.close()


async def test_a_reply_whose_worker_died_ends_for_its_subscribers_unasked(
    gql: GQL, team: Team, container: Any
) -> None:
    # Before: the abandoned reply stayed STREAMING (and its subscribers waiting) until
    # someone sent, cancelled or read the history of that session.
    data = {"name": f"llm-{uuid.uuid4().hex[:8]}", "provider": "openai"}
    data |= {"model": "scripted-slow", "baseUrl": LOCAL}
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=team.token)
    input = {"llmProviderId": body["createLlmProvider"]["id"]}
    sid = (await gql.ok("CreateChatSession", {"input": input}, token=team.token))[
        "createChatSession"
    ]["id"]
    runner = container.chat_runner
    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {team.token}"})
        await subscribe(ws, "t", op("ChatTokens"), {"sessionId": sid})
        await gql.ok(
            "SendChatMessage", {"sessionId": sid, "content": "Talk slowly"}, token=team.token
        )
        first = await recv(ws, 150)
        assert first["type"] == "next" and not first["payload"]["data"]["chatTokens"]["done"]
        # The worker stops without a word, as a killed process would.
        reply_id = first["payload"]["data"]["chatTokens"]["messageId"]
        (task,) = [t for t in runner._tasks if t.get_name() == f"chat-reply-{reply_id[:8]}"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        lease = container.settings.chat_reply_lease_seconds
        while True:
            msg = await recv(ws, lease * 4)
            assert msg["type"] == "next", msg
            token = msg["payload"]["data"]["chatTokens"]
            if token["done"]:
                break
        assert token["error"] and "interrupted" in token["error"]
    stored = (await gql.ok("ChatHistory", {"id": sid}, token=team.token))["chatSession"]
    assert stored["messages"]["edges"][-1]["node"]["status"] == "FAILED"
