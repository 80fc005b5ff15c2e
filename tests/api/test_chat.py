"""Chat through the whole API path: GraphQL → ChatService → PostgreSQL + MongoDB (the
fixtures' nx-27017, or MONGODB_URL) → the reply worker → LlmService / CrewAI → LiteLLM →
real HTTP → the server's scripted model; tokens over graphql-transport-ws via Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from pymongo import AsyncMongoClient

from tests.conftest import Team, add_member
from tests.support import builders as b
from tests.support.client import GQL, error_code, op
from tests.support.ws import init, recv, subscribe

LOCAL = "crewgraph:local"
# The first model call of a test session imports LiteLLM; the first agent CrewAI.
FIRST_CALL_TIMEOUT = 150.0


def _n(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _provider(gql: GQL, team: Team, model: str = "scripted", **over: Any) -> str:
    data = {"name": _n("llm"), "provider": "openai", "model": model, "baseUrl": LOCAL, **over}
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=team.token)
    return str(body["createLlmProvider"]["id"])


async def _session(gql: GQL, team: Team, **input: Any) -> dict[str, Any]:
    body = await gql.ok("CreateChatSession", {"input": input}, token=team.token)
    session: dict[str, Any] = body["createChatSession"]
    return session


async def _send(gql: GQL, token: str, session_id: str, content: str) -> dict[str, Any]:
    body = await gql.ok(
        "SendChatMessage", {"sessionId": session_id, "content": content}, token=token
    )
    message: dict[str, Any] = body["sendChatMessage"]
    return message


async def _history(gql: GQL, team: Team, session_id: str, **args: Any) -> dict[str, Any]:
    body = await gql.ok("ChatHistory", {"id": session_id, **args}, token=team.token)
    found: dict[str, Any] = body["chatSession"]
    return found


class Tokens:
    """A `chatTokens` subscription on its own WebSocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        msg = await recv(self.ws, timeout)
        assert msg["type"] == "next", msg
        assert not msg["payload"].get("errors"), msg
        token: dict[str, Any] = msg["payload"]["data"]["chatTokens"]
        self.seen.append(token)
        return token

    async def reply(self, timeout: float = FIRST_CALL_TIMEOUT) -> list[dict[str, Any]]:
        """Tokens up to and including the next `done` one."""
        out: list[dict[str, Any]] = []
        while True:
            token = await self.next(timeout)
            out.append(token)
            if token["done"]:
                return out


@asynccontextmanager
async def tokens(gql: GQL, token: str, session_id: str) -> AsyncIterator[Tokens]:
    async with gql.connect_ws() as ws:
        ack = await init(ws, {"authorization": f"Bearer {token}"})
        assert ack["type"] == "connection_ack", ack
        await subscribe(ws, "t", op("ChatTokens"), {"sessionId": session_id})
        yield Tokens(ws)


def _check_reply(reply: list[dict[str, Any]]) -> str:
    """One reply's tokens are numbered 0.. and end with one empty done token."""
    assert [t["index"] for t in reply] == list(range(len(reply))), reply
    assert len({t["messageId"] for t in reply}) == 1
    assert reply[-1]["done"] and reply[-1]["delta"] == ""
    assert not any(t["done"] for t in reply[:-1])
    return "".join(t["delta"] for t in reply)


async def _requests(server_url: str, tag: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        resp = await http.get(f"{server_url}/local-llm/v1/_requests", params={"tag": tag})
    resp.raise_for_status()
    found: list[dict[str, Any]] = resp.json()["requests"]
    return found


async def test_a_reply_streams_token_by_token_and_is_stored_once_with_usage(
    gql: GQL, team: Team, server_url: str
) -> None:
    provider = await _provider(gql, team)
    session = await _session(
        gql, team, title="Tea", llmProviderId=provider, systemPrompt="You are terse."
    )
    assert session["messageCount"] == 0 and session["messageLimit"] == 100
    assert session["llmProvider"]["id"] == provider and session["agent"] is None
    assert session["systemPrompt"] == "You are terse."

    async with tokens(gql, team.token, session["id"]) as stream:
        sent = await _send(gql, team.token, session["id"], "SAY: Green tea is best cold")
        assert sent["role"] == "USER" and sent["status"] == "COMPLETED"
        assert sent["content"] == "SAY: Green tea is best cold"
        first = await stream.reply()
        assert _check_reply(first) == "Green tea is best cold"
        assert len(first) == 6  # one token per word, then done
        assert first[-1]["error"] is None and first[0]["sessionId"] == session["id"]

        # The subscription stays open across replies: the history goes to the model.
        await _send(gql, team.token, session["id"], "SAY: And black tea hot")
        second = await stream.reply()
        assert _check_reply(second) == "And black tea hot"
        assert second[0]["messageId"] != first[0]["messageId"]

    history = await _history(gql, team, session["id"])
    assert history["messageCount"] == 4
    nodes = [e["node"] for e in history["messages"]["edges"]]
    assert [(m["role"], m["status"]) for m in nodes] == [
        ("USER", "COMPLETED"),
        ("ASSISTANT", "COMPLETED"),
        ("USER", "COMPLETED"),
        ("ASSISTANT", "COMPLETED"),
    ]
    assert nodes[0]["id"] == sent["id"]
    assert nodes[1]["id"] == first[0]["messageId"]
    assert nodes[1]["content"] == "Green tea is best cold"
    usage = nodes[1]["usage"]
    assert usage["llmCalls"] == 1 and usage["completionTokens"] == 5
    assert usage["promptTokens"] > 0 and nodes[0]["usage"] is None

    logged = await _requests(server_url, session["id"])
    assert [r["messages"] for r in logged] == [2, 4 + 0]  # system + user; then + history
    assert logged[-1]["last_user"].startswith("SAY: And black tea")

    days = (await gql.ok("Usage", {"days": 1}, token=team.token))["usage"]
    assert days[0]["usage"]["llmCalls"] == 2  # counted toward the team's day


async def test_a_client_joining_mid_reply_gets_the_same_sequence_and_cancel_stops_it(
    gql: GQL, team: Team, server_url: str
) -> None:
    provider = await _provider(gql, team, "scripted-slow")  # a token every 200 ms
    session = await _session(gql, team, llmProviderId=provider)
    async with tokens(gql, team.token, session["id"]) as a:
        await _send(gql, team.token, session["id"], "Tell me a long story")
        for _ in range(3):
            await a.next(FIRST_CALL_TIMEOUT)
        async with tokens(gql, team.token, session["id"]) as b_:
            # B starts mid-reply: from the first token (buffered), then live.
            joined = [await b_.next()]
            assert joined[0]["index"] == 0
            while len(a.seen) < 6:
                await a.next()
            # A second send while the reply streams is refused, saying why.
            body = await gql.op(
                "SendChatMessage", {"sessionId": session["id"], "content": "hi"}, token=team.token
            )
            assert error_code(body) == "CONFLICT", body
            assert "still streaming" in body["errors"][0]["message"]

            started = time.monotonic()
            body = await gql.ok("CancelChatReply", {"sessionId": session["id"]}, token=team.token)
            cancelled = body["cancelChatReply"]
            assert time.monotonic() - started < 1.5
            rest_a = await a.reply(10)
            rest_b = await b_.reply(10)
    reply_a = a.seen
    reply_b = joined + rest_b
    assert reply_a == reply_b  # the same full sequence, no gap, no duplicate
    text = _check_reply(reply_a)
    assert rest_a[-1]["error"] is None
    assert cancelled["status"] == "CANCELLED" and cancelled["id"] == reply_a[0]["messageId"]
    assert cancelled["content"] == text and 6 <= len(reply_a) - 1 < 50

    # Nothing more reaches the model, and a new message is accepted right away.
    logged = await _requests(server_url, session["id"])
    assert [r["status"] for r in logged] == ["disconnected"]
    assert (await gql.ok("CancelChatReply", {"sessionId": session["id"]}, token=team.token))[
        "cancelChatReply"
    ] is None
    history = await _history(gql, team, session["id"])
    assert [e["node"]["status"] for e in history["messages"]["edges"]] == [
        "COMPLETED",
        "CANCELLED",
    ]


async def test_the_message_limit_refuses_a_send_that_would_pass_it(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    session = await _session(gql, team, llmProviderId=provider, messageLimit=5)
    async with tokens(gql, team.token, session["id"]) as stream:
        for word in ("one", "two"):
            await _send(gql, team.token, session["id"], f"SAY: {word}")
            await stream.reply()
    body = await gql.op(
        "SendChatMessage", {"sessionId": session["id"], "content": "SAY: three"}, token=team.token
    )
    assert error_code(body) == "LIMIT_EXCEEDED", body
    message = body["errors"][0]["message"]
    assert "start a new session" in message and "5" in message
    history = await _history(gql, team, session["id"])
    assert history["messageCount"] == 4
    assert len(history["messages"]["edges"]) == 4  # nothing half-stored

    for bad in (1, 0, -3, 10**6):
        body = await gql.op(
            "CreateChatSession",
            {"input": {"llmProviderId": provider, "messageLimit": bad}},
            token=team.token,
        )
        assert error_code(body) == "BAD_USER_INPUT", body
        assert "input.messageLimit" in body["errors"][0]["extensions"]["fields"]


async def test_a_provider_error_stores_a_failed_reply_and_ends_the_stream_with_it(
    gql: GQL, team: Team
) -> None:
    provider = await _provider(gql, team, "scripted-error-500", maxRetries=0)
    session = await _session(gql, team, llmProviderId=provider)
    async with tokens(gql, team.token, session["id"]) as stream:
        await _send(gql, team.token, session["id"], "hello?")
        reply = await stream.reply()
    assert len(reply) == 1 and reply[0]["done"] and reply[0]["index"] == 0
    assert reply[0]["error"] and "server" in reply[0]["error"]
    history = await _history(gql, team, session["id"])
    failed = history["messages"]["edges"][-1]["node"]
    assert failed["status"] == "FAILED" and failed["error"] == reply[0]["error"]
    assert failed["content"] == "" and failed["usage"]["llmCalls"] == 1
    # A failed reply still ends the exchange: the next message is accepted.
    await _send(gql, team.token, session["id"], "again")


async def test_history_pages_backwards_with_a_keyset_cursor(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    session = await _session(gql, team, llmProviderId=provider)
    async with tokens(gql, team.token, session["id"]) as stream:
        for i in range(6):
            await _send(gql, team.token, session["id"], f"SAY: reply {i}")
            await stream.reply()
    everything = [
        e["node"]["content"]
        for e in (await _history(gql, team, session["id"], last=100))["messages"]["edges"]
    ]
    assert everything[:2] == ["SAY: reply 0", "reply 0"] and len(everything) == 12

    pages: list[list[str]] = []
    before = None
    while True:
        page = (await _history(gql, team, session["id"], last=5, before=before))["messages"]
        pages.append([e["node"]["content"] for e in page["edges"]])
        assert page["pageInfo"]["startCursor"] == page["edges"][0]["cursor"]
        if not page["pageInfo"]["hasPreviousPage"]:
            break
        before = page["pageInfo"]["startCursor"]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [m for p in reversed(pages) for m in p] == everything  # no gap, no repeat

    for bad in ({"last": 0}, {"last": 101}, {"before": "nonsense"}):
        body = await gql.op("ChatHistory", {"id": session["id"], **bad}, token=team.token)
        assert error_code(body) == "BAD_USER_INPUT", body

    listed = await gql.ok("ChatSessions", {"first": 100}, token=team.token)
    ids = [e["node"]["id"] for e in listed["chatSessions"]["edges"]]
    assert session["id"] in ids
    assert listed["chatSessions"]["pageInfo"]["hasPreviousPage"] is False


async def test_deleting_a_session_removes_its_messages_from_mongodb(
    gql: GQL, team: Team, settings: Any
) -> None:
    provider = await _provider(gql, team)
    keep = await _session(gql, team, llmProviderId=provider)
    gone = await _session(gql, team, llmProviderId=provider)
    for session in (keep, gone):
        async with tokens(gql, team.token, session["id"]) as stream:
            await _send(gql, team.token, session["id"], "SAY: stored")
            await stream.reply()

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_url)
    try:
        collection = client[settings.mongodb_database]["chat_messages"]

        async def stored(session_id: str) -> list[dict[str, Any]]:
            return await collection.find({"session_id": session_id}).to_list()

        found = await stored(gone["id"])
        assert len(found) == 2 and {d["tenant_id"] for d in found} == {team.tenant_id}
        assert (await gql.ok("DeleteChatSession", {"id": gone["id"]}, token=team.token))[
            "deleteChatSession"
        ]
        assert await stored(gone["id"]) == []
        assert len(await stored(keep["id"])) == 2
    finally:
        await client.close()
    body = await gql.op("ChatSession", {"id": gone["id"]}, token=team.token)
    assert error_code(body) == "NOT_FOUND"
    body = await gql.op("DeleteChatSession", {"id": gone["id"]}, token=team.token)
    assert error_code(body) == "NOT_FOUND"


async def test_another_teams_sessions_are_not_found_everywhere(
    gql: GQL, team: Team, other_team: Team
) -> None:
    provider = await _provider(gql, team)
    session = await _session(gql, team, llmProviderId=provider)
    sid = session["id"]
    theirs = other_team.token
    for name, variables in (
        ("ChatSession", {"id": sid}),
        ("ChatHistory", {"id": sid}),
        ("SendChatMessage", {"sessionId": sid, "content": "hi"}),
        ("CancelChatReply", {"sessionId": sid}),
        ("DeleteChatSession", {"id": sid}),
    ):
        body = await gql.op(name, variables, token=theirs)
        assert error_code(body) == "NOT_FOUND", (name, body)
    # Nor can they bind a session to our provider.
    body = await gql.op("CreateChatSession", {"input": {"llmProviderId": provider}}, token=theirs)
    assert error_code(body) == "NOT_FOUND", body
    listed = await gql.ok("ChatSessions", {"first": 100}, token=theirs)
    assert sid not in [e["node"]["id"] for e in listed["chatSessions"]["edges"]]

    async with gql.connect_ws() as ws:
        await init(ws, {"authorization": f"Bearer {theirs}"})
        await subscribe(ws, "t", op("ChatTokens"), {"sessionId": sid})
        msg = await recv(ws)
        errors = msg["payload"] if msg["type"] == "error" else msg["payload"]["errors"]
        assert errors[0]["extensions"]["code"] == "NOT_FOUND", msg
        assert msg["type"] == "error" or msg["payload"]["data"] is None
    # Untouched for its owner.
    assert (await _history(gql, team, sid))["messageCount"] == 0


async def test_viewers_read_chats_and_members_chat(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    session = await _session(gql, team, llmProviderId=provider)
    viewer = await add_member(gql, team, "VIEWER")
    member = await add_member(gql, team, "MEMBER")
    assert (await gql.ok("ChatSession", {"id": session["id"]}, token=viewer.token))["chatSession"][
        "id"
    ] == session["id"]
    for name, variables in (
        ("CreateChatSession", {"input": {"llmProviderId": provider}}),
        ("SendChatMessage", {"sessionId": session["id"], "content": "hi"}),
        ("CancelChatReply", {"sessionId": session["id"]}),
        ("DeleteChatSession", {"id": session["id"]}),
    ):
        body = await gql.op(name, variables, token=viewer.token)
        assert error_code(body) == "FORBIDDEN", (name, body)
    created = await gql.ok(
        "CreateChatSession", {"input": {"llmProviderId": provider}}, token=member.token
    )
    own = created["createChatSession"]["id"]
    async with tokens(gql, viewer.token, own) as stream:  # viewers may watch
        await _send(gql, member.token, own, "SAY: hello from a member")
        assert _check_reply(await stream.reply()) == "hello from a member"


async def test_bad_session_inputs_are_refused(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    agent = await b.agent(gql, team.token, llmProviderId=provider)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "BAD_USER_INPUT"),  # neither a provider nor an agent
        ({"llmProviderId": provider, "agentId": agent["id"]}, "BAD_USER_INPUT"),
        ({"llmProviderId": str(uuid.uuid4())}, "NOT_FOUND"),
        ({"agentId": "not-an-id"}, "NOT_FOUND"),
        ({"llmProviderId": provider, "title": "x" * 201}, "BAD_USER_INPUT"),
        ({"llmProviderId": provider, "systemPrompt": "x" * 20_001}, "BAD_USER_INPUT"),
    ]
    for data, code in cases:
        body = await gql.op("CreateChatSession", {"input": data}, token=team.token)
        assert error_code(body) == code, (data, body)
    session = await _session(gql, team, llmProviderId=provider)
    for content in ("", "   ", "x" * 32_001):
        body = await gql.op(
            "SendChatMessage", {"sessionId": session["id"], "content": content}, token=team.token
        )
        assert error_code(body) == "BAD_USER_INPUT", body
    assert (await _history(gql, team, session["id"]))["messageCount"] == 0


async def test_a_chat_with_an_agent_uses_the_agents_tools(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    tool = await b.tool(
        gql,
        team.token,
        name=_n("sum"),
        kind="BUILTIN",
        config={"builtin": "json_transform"},
        inputSchema=None,
    )
    agent = await b.agent(
        gql, team.token, role="Calculator", llmProviderId=provider, toolIds=[tool["id"]]
    )
    session = await _session(gql, team, agentId=agent["id"], systemPrompt="Be exact.")
    assert session["agent"]["id"] == agent["id"] and session["llmProvider"] is None
    args = json.dumps({"data": {"a": 20, "b": 22}, "expression": "data.a + data.b"})
    async with tokens(gql, team.token, session["id"]) as stream:
        await _send(
            gql, team.token, session["id"], f"Add them: use tool {tool['name']} with {args}"
        )
        text = _check_reply(await stream.reply(FIRST_CALL_TIMEOUT))
    assert "42" in text, text
    history = await _history(gql, team, session["id"])
    reply = history["messages"]["edges"][-1]["node"]
    assert reply["status"] == "COMPLETED" and reply["content"] == text
    assert reply["usage"]["llmCalls"] == 2  # the tool call, then the answer


async def test_a_mongodb_outage_is_a_clear_error_and_nothing_is_lost_or_duplicated(
    gql: GQL, team: Team, mongo_server: Any
) -> None:
    provider = await _provider(gql, team, "scripted-slow")
    fast = await _provider(gql, team)
    slow_session = await _session(gql, team, llmProviderId=provider)
    session = await _session(gql, team, llmProviderId=fast)
    async with tokens(gql, team.token, session["id"]) as stream:
        await _send(gql, team.token, session["id"], "SAY: before")
        await stream.reply()

        mongo_server.stop()
        try:
            body = await gql.op(
                "SendChatMessage",
                {"sessionId": session["id"], "content": "SAY: during"},
                token=team.token,
            )
            assert error_code(body) == "SERVICE_UNAVAILABLE", body
            assert "nothing was stored" in body["errors"][0]["message"]
            body = await gql.op("ChatHistory", {"id": session["id"]}, token=team.token)
            assert error_code(body) == "SERVICE_UNAVAILABLE", body
            # The counter was given back: PostgreSQL still says 2.
            assert (await gql.ok("ChatSession", {"id": session["id"]}, token=team.token))[
                "chatSession"
            ]["messageCount"] == 2
        finally:
            mongo_server.start()

        await _send(gql, team.token, session["id"], "SAY: after")
        assert _check_reply(await stream.reply()) == "after"
    history = await _history(gql, team, session["id"])
    assert [e["node"]["content"] for e in history["messages"]["edges"]] == [
        "SAY: before",
        "before",
        "SAY: after",
        "after",
    ]
    assert history["messageCount"] == 4

    # MongoDB stops while a reply streams: the worker keeps the tokens and stores the
    # reply once it is back.
    async with tokens(gql, team.token, slow_session["id"]) as stream:
        await _send(gql, team.token, slow_session["id"], "Talk slowly")
        await stream.next(FIRST_CALL_TIMEOUT)
        mongo_server.stop()
        try:
            await asyncio.sleep(1.5)
        finally:
            mongo_server.start()
        await stream.reply(30)
        reply = stream.seen
    text = _check_reply(reply)
    history = await _history(gql, team, slow_session["id"])
    stored = [e["node"] for e in history["messages"]["edges"]]
    assert [(m["role"], m["status"]) for m in stored] == [
        ("USER", "COMPLETED"),
        ("ASSISTANT", "COMPLETED"),
    ]
    assert stored[1]["content"] == text and len(reply) == 51


async def test_a_reply_whose_worker_died_does_not_block_the_session(
    gql: GQL, team: Team, container: Any
) -> None:
    provider = await _provider(gql, team, "scripted-slow")
    session = await _session(gql, team, llmProviderId=provider)
    runner = container.chat_runner
    async with tokens(gql, team.token, session["id"]) as stream:
        await _send(gql, team.token, session["id"], "Talk slowly")
        for _ in range(3):
            await stream.next(FIRST_CALL_TIMEOUT)
        # The worker stops without a word (as a killed process would): nothing is stored,
        # its claim is no longer renewed.
        (task,) = [t for t in runner._tasks if not t.done()]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        body = await gql.op(
            "SendChatMessage", {"sessionId": session["id"], "content": "hi"}, token=team.token
        )
        assert error_code(body) == "CONFLICT", body  # the claim has not expired yet
        await asyncio.sleep(container.settings.chat_reply_lease_seconds + 0.5)

        await _send(gql, team.token, session["id"], "SAY: fresh start")
        old = await stream.reply(10)  # the abandoned reply ends, with the reason
        assert old[-1]["error"] and "interrupted" in old[-1]["error"]
        assert (await stream.next(30))["delta"] == "fresh"  # the new one streams
        await gql.ok("CancelChatReply", {"sessionId": session["id"]}, token=team.token)
        await stream.reply(10)
    first = _check_reply(stream.seen[:4])  # 3 tokens before the worker died, then done
    assert old[-1]["index"] == 3
    history = await _history(gql, team, session["id"])
    stored = [e["node"] for e in history["messages"]["edges"]]
    assert [m["status"] for m in stored] == ["COMPLETED", "FAILED", "COMPLETED", "CANCELLED"]
    assert stored[1]["content"] == first and "interrupted" in stored[1]["error"]


async def test_a_session_outlives_its_deleted_provider_read_only(gql: GQL, team: Team) -> None:
    provider = await _provider(gql, team)
    session = await _session(gql, team, llmProviderId=provider)
    async with tokens(gql, team.token, session["id"]) as stream:
        await _send(gql, team.token, session["id"], "SAY: kept")
        await stream.reply()
    assert (await gql.ok("DeleteLlmProvider", {"id": provider}, token=team.token))[
        "deleteLlmProvider"
    ]
    found = (await gql.ok("ChatSession", {"id": session["id"]}, token=team.token))["chatSession"]
    assert found["llmProvider"] is None and found["messageCount"] == 2
    body = await gql.op(
        "SendChatMessage", {"sessionId": session["id"], "content": "more"}, token=team.token
    )
    assert error_code(body) == "CONFLICT", body
    assert "start a new session" in body["errors"][0]["message"]
    history = await _history(gql, team, session["id"])
    assert [e["node"]["content"] for e in history["messages"]["edges"]] == ["SAY: kept", "kept"]
