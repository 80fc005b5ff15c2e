"""Chat: many sessions streaming replies at once, and a history page in a long session.

    python bench/bench_chat.py [--short]

1. Streaming: N sessions (100; short: 4), each with its own `chatTokens` WebSocket, send
   one message at once; every reply streams M tokens (50; short: 10) from the scripted
   model in a process of its own (bench/_paced_model.py), one token every 20 ms, so the
   model's own rate is N / 0.02 tokens/s. Reported: tokens/s delivered to the clients (all
   tokens over first send → last `done`) next to that rate, and the latency of each token
   from the model handing it to its socket to the client receiving its frame (p50, p99).
2. History: one session with 10,000 messages (short: 200) in MongoDB; the page of 50
   messages before a random point, through the API (`chatSession.messages(last: 50,
   before)`: HTTP, GraphQL, PostgreSQL for the session, beanie for the page) against the
   same read straight through pymongo (find/sort/limit on the same index).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import ROOT, machine, percentile, server, services
from domain.chat.model import encode_cursor
from tests.support.client import GQL, op
from tests.support.services import free_port

TOKEN_S = 0.02
PAGE = 50


@dataclass(frozen=True)
class Plan:
    sessions: int
    tokens: int
    history: int
    reads: int


def plan(short: bool) -> Plan:
    if short:
        return Plan(sessions=4, tokens=10, history=200, reads=5)
    return Plan(sessions=100, tokens=50, history=10_000, reads=50)


def _phase(name: str) -> None:
    print(f"[chat {time.monotonic() - _T0:6.1f} s] {name}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


@contextlib.asynccontextmanager
async def paced_model(p: Plan) -> AsyncIterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "bench._paced_model", "--port", str(port)]
    args += ["--model", f"chat:{TOKEN_S}:{p.tokens}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(url + "/models")).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise RuntimeError("the paced model process exited")
                await asyncio.sleep(0.1)
            else:
                raise TimeoutError("the paced model did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def tenant(gql: GQL) -> str:
    email = f"chat{uuid.uuid4().hex[:6]}@example.com"
    data = {"tenantName": "bench chat", "email": email, "password": "correct horse battery"}
    reg = await gql.ok("Register", {"input": data})
    return str(reg["register"]["accessToken"])


async def new_session(gql: GQL, token: str, provider_id: str) -> str:
    body = await gql.ok(
        "CreateChatSession",
        {"input": {"llmProviderId": provider_id, "messageLimit": 1000}},
        token=token,
    )
    return str(body["createChatSession"]["id"])


@dataclass
class Stream:
    session_id: str
    received: dict[int, float] = field(default_factory=dict)  # index -> time.time()
    done_at: float | None = None


async def follow(gql: GQL, token: str, stream: Stream, ready: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(gql.ws_url(), subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        payload = {"query": op("ChatTokens"), "variables": {"sessionId": stream.session_id}}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        ready.set()
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg.get("type") != "next":
                continue
            t = msg["payload"]["data"]["chatTokens"]
            now = time.time()
            if t["done"]:
                stream.done_at = now
                return
            stream.received[t["index"]] = now


async def streaming(gql: GQL, token: str, model_url: str, p: Plan) -> dict[str, Any]:
    data = {
        "name": f"paced-{uuid.uuid4().hex[:6]}",
        "provider": "openai",
        "model": "chat",
        "baseUrl": model_url,
        "maxRetries": 0,
        "timeoutSeconds": 120,
    }
    body = await gql.ok("CreateLlmProviderRuntime", {"input": data}, token=token)
    provider_id = str(body["createLlmProvider"]["id"])
    # Warm-up: the server imports LiteLLM on its first model call.
    warm = Stream(await new_session(gql, token, provider_id))
    ready = asyncio.Event()
    task = asyncio.create_task(follow(gql, token, warm, ready))
    await ready.wait()
    await gql.ok("SendChatMessage", {"sessionId": warm.session_id, "content": "hi"}, token=token)
    await asyncio.wait_for(task, 180)

    streams = [Stream(await new_session(gql, token, provider_id)) for _ in range(p.sessions)]
    events = [asyncio.Event() for _ in streams]
    tasks = [
        asyncio.create_task(follow(gql, token, s, e)) for s, e in zip(streams, events, strict=True)
    ]
    await asyncio.gather(*(e.wait() for e in events))
    await asyncio.sleep(0.5)  # every subscription registered on the server
    started = time.time()
    await asyncio.gather(
        *(
            gql.ok("SendChatMessage", {"sessionId": s.session_id, "content": "go"}, token=token)
            for s in streams
        )
    )
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    ended = max(s.done_at or 0.0 for s in streams)
    total = sum(len(s.received) for s in streams)
    first = min(min(s.received.values()) for s in streams if s.received)
    last = max(max(s.received.values()) for s in streams if s.received)
    ttft = [min(s.received.values()) - started for s in streams if s.received]
    latencies: list[float] = []
    asked: list[float] = []  # send → the model receiving the request
    async with httpx.AsyncClient() as http:
        for s in streams:
            resp = await http.get(
                model_url.removesuffix("/v1") + "/_times", params={"run": s.session_id}
            )
            requests = resp.json()["requests"]
            asked += [r["start"] - started for r in requests[:1]]
            sent = [t for r in requests for t in r["chunks"]]
            latencies += [s.received[i] - sent[i] for i in sorted(s.received) if i < len(sent)]
    return {
        "tokens": total,
        "expected": p.sessions * p.tokens,
        "seconds": ended - started,
        "delivered": total / (ended - started),
        "streaming": total / max(last - first, 1e-6),
        "ttft50": percentile(ttft, 50) * 1000,
        "ttft99": percentile(ttft, 99) * 1000,
        "asked50": percentile(asked, 50) * 1000,
        "asked99": percentile(asked, 99) * 1000,
        "model_rate": p.sessions / TOKEN_S,
        "p50": percentile(latencies, 50) * 1000,
        "p99": percentile(latencies, 99) * 1000,
    }


async def history(gql: GQL, token: str, svc: Any, database: str, p: Plan) -> dict[str, Any]:
    from pymongo import AsyncMongoClient

    me = await gql.ok("query { me { tenant { id } } }", token=token)
    tenant_id = me["me"]["tenant"]["id"]
    # A session bound to the team's scripted provider; its messages are written straight
    # into the collection (10,000 sends would measure the model, not the read).
    listed = await gql.ok("LlmProvidersRuntime", {"first": 100}, token=token)
    provider_id = listed["llmProviders"]["edges"][0]["node"]["id"]
    session_id = await new_session(gql, token, provider_id)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(svc.mongo_url, tz_aware=True)
    try:
        coll = client[database]["chat_messages"]
        now = datetime.now(UTC)
        docs = [
            {
                "_id": str(uuid.uuid4()),
                "tenant_id": tenant_id,
                "session_id": session_id,
                "seq": seq,
                "role": "USER" if seq % 2 else "ASSISTANT",
                "content": f"message {seq} " + "lorem ipsum " * 8,
                "status": "COMPLETED",
                "error": None,
                "model": None,
                "usage": None,
                "created_at": now,
                "updated_at": now,
            }
            for seq in range(1, p.history + 1)
        ]
        for i in range(0, len(docs), 1000):
            await coll.insert_many(docs[i : i + 1000])
        points = [random.randint(PAGE + 1, p.history) for _ in range(p.reads)]

        api: list[float] = []
        for point in points:
            t0 = time.perf_counter()
            body = await gql.ok(
                "ChatHistory",
                {"id": session_id, "last": PAGE, "before": encode_cursor(point)},
                token=token,
            )
            api.append(time.perf_counter() - t0)
            assert len(body["chatSession"]["messages"]["edges"]) == PAGE
        raw: list[float] = []
        for point in points:
            t0 = time.perf_counter()
            found = (
                await coll.find(
                    {"tenant_id": tenant_id, "session_id": session_id, "seq": {"$lt": point}}
                )
                .sort("seq", -1)
                .limit(PAGE + 1)
                .to_list()
            )
            raw.append(time.perf_counter() - t0)
            assert len(found) == PAGE + 1
    finally:
        await client.close()
    return {"api": api, "raw": raw}


def report(p: Plan, s: dict[str, Any], h: dict[str, Any]) -> None:
    print(
        f"Chat ({machine()}): {p.sessions} sessions streaming at once, {p.tokens} tokens each "
        f"from the scripted model in its own process at one token per {TOKEN_S * 1000:g} ms; "
        f"MongoDB: the embedded nx-27017 unless MONGODB_URL is set."
    )
    print()
    print(
        "| streaming | tokens | tokens/s delivered (send → last done) | while streaming "
        "(first → last token) | model's own rate | token latency p50 | p99 | model asked "
        "after send p50 | p99 | first token after send p50 | p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {p.sessions} sessions | {s['tokens']}/{s['expected']} | {s['delivered']:.0f} "
        f"| {s['streaming']:.0f} | {s['model_rate']:.0f} | {s['p50']:.1f} ms "
        f"| {s['p99']:.1f} ms | {s['asked50']:.0f} ms | {s['asked99']:.0f} ms "
        f"| {s['ttft50']:.0f} ms | {s['ttft99']:.0f} ms |"
    )
    print()
    print(
        "Token latency: the model handing a token to its socket → the client receiving its "
        'frame (LiteLLM parse, Redis buffer + publish, GraphQL, WebSocket). "Model asked": '
        "the send, the reply job (session claim, history read) and LiteLLM's call set-up, "
        "until the model receives the request; all on the same 2 cores as the clients."
    )
    print()
    api50, raw50 = percentile(h["api"], 50) * 1000, percentile(h["raw"], 50) * 1000
    api99, raw99 = percentile(h["api"], 99) * 1000, percentile(h["raw"], 99) * 1000
    print(f"| history: page of {PAGE} in {p.history:,} messages | p50 | p99 | x pymongo (p50) |")
    print("|---|---|---|---|")
    print(
        f"| through the API (HTTP, GraphQL, beanie) | {api50:.1f} ms | {api99:.1f} ms | {api50 / raw50:.1f}x |"
    )
    print(f"| straight through pymongo | {raw50:.1f} ms | {raw99:.1f} ms | 1.0x |")


async def run(p: Plan) -> int:
    async with services() as svc:
        database = f"cgbench_{secrets.token_hex(4)}"
        env = {"MONGODB_URL": svc.mongo_url, "CREWGRAPH_MONGODB_DATABASE": database}
        try:
            async with paced_model(p) as model_url, server(svc, **env) as srv:
                gql = GQL(srv.url)
                try:
                    token = await tenant(gql)
                    _phase("streaming")
                    s = await streaming(gql, token, model_url, p)
                    _phase("history")
                    h = await history(gql, token, svc, database, p)
                finally:
                    await gql.aclose()
        finally:
            from pymongo import AsyncMongoClient

            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(svc.mongo_url)
            with contextlib.suppress(Exception):
                await client.drop_database(database)
            await client.close()
    report(p, s, h)
    return 0 if s["tokens"] == s["expected"] else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", action="store_true")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(run(plan(args.short))))


if __name__ == "__main__":
    main()
